import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import parse_config
from pipeline.data import DataError, ImageStream, load_source, prepare_images, random_flip, to_model_range, to_uint8_array


def test_embedded_dataset_decodes_to_uint8():
    pixels = prepare_images(parse_config([]))
    assert pixels.shape == (6000, 28, 28, 1) and pixels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 255
    # Fashion-MNIST: light garments on a black background
    assert pixels[:, 0, 0, 0].mean() < 5 and pixels[:, 10:18, 10:18].mean() > 60


def test_resize_and_subset_are_configurable_and_seeded():
    config = parse_config(["--resolution", "16", "--max_train_samples", "50", "--seed", "1"])
    first = prepare_images(config)
    assert first.shape == (50, 16, 16, 1)
    np.testing.assert_array_equal(prepare_images(config), first)
    config.seed = 2
    assert not np.array_equal(prepare_images(config), first)


def test_rgb_and_grayscale_conversion():
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, dark left, light right
    rgb = Image.fromarray(np.stack([gradient, gradient // 2, 255 - gradient], axis=-1))
    as_rgb = to_uint8_array(rgb, 16, 3)
    assert as_rgb.shape == (16, 16, 3)
    assert as_rgb[:, -1, 0].mean() > 200 and as_rgb[:, -1, 2].mean() < 50
    as_gray = to_uint8_array(rgb, 16, 1)
    assert as_gray.shape == (16, 16, 1)
    assert to_uint8_array(Image.fromarray(gradient), 16, 3).shape == (16, 16, 3)


def test_non_square_images_are_centre_cropped():
    wide = np.zeros((20, 60), dtype=np.uint8)
    wide[:, 20:40] = 255  # a white square in the middle third
    square = to_uint8_array(Image.fromarray(wide), 10, 1)[..., 0]
    assert square.shape == (10, 10)
    assert square[:, 2:8].min() > 200  # the crop keeps the middle


def test_missing_folder_and_missing_image_column(tmp_path):
    with pytest.raises(DataError, match="train_data_dir"):
        load_source(parse_config(["--train_data_dir", str(tmp_path / "nowhere")]))
    with pytest.raises(DataError, match="image_column"):
        prepare_images(parse_config(["--image_column", "pixels"]))
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(tmp_path / "text_only")
    with pytest.raises(DataError, match="no Image feature"):
        prepare_images(parse_config(["--dataset_name", str(tmp_path / "text_only")]))


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(DataError, match="dataset_name: cannot load"):
        load_source(parse_config(["--dataset_name", "data/no_such_dataset"]))


def test_image_stream_shows_every_image_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1)
    stream = ImageStream(images, batch_size=4, seed=0)
    seen = torch.cat([stream.batch(k).flatten() for k in range(5)])  # 20 images = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert seen[:10].tolist() != seen[10:].tolist()  # a new order each epoch
    # a pure function of the micro-batch index: a resumed stream continues exactly
    fresh = ImageStream(images, batch_size=4, seed=0)
    assert torch.equal(fresh.batch(3), stream.batch(3))
    assert not torch.equal(ImageStream(images, batch_size=4, seed=1).batch(0), stream.batch(0))


def test_image_stream_shards_the_global_batch_between_processes():
    images = torch.arange(12, dtype=torch.uint8).reshape(12, 1, 1, 1)
    single = ImageStream(images, batch_size=6, seed=3)
    ranks = [ImageStream(images, batch_size=3, seed=3, process_index=r, num_processes=2) for r in range(2)]
    for k in range(4):
        assert torch.equal(torch.cat([rank.batch(k) for rank in ranks]), single.batch(k))


def test_random_flip_flips_about_half():
    images = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4).repeat(4000, 1, 1, 1)
    flipped = random_flip(images, generator=torch.Generator().manual_seed(0))
    is_flipped = (flipped == images.flip(-1)).flatten(1).all(1)
    is_same = (flipped == images).flatten(1).all(1)
    assert bool((is_flipped ^ is_same).all())
    assert 0.46 < is_flipped.float().mean().item() < 0.54


def test_model_range():
    values = to_model_range(torch.tensor([0, 255], dtype=torch.uint8))
    assert values.tolist() == [-1.0, 1.0]
