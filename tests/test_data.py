import io
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, SFHQ_TREE_GOOD_JPEGS, SFHQ_TREE_SPECIAL
from pipeline import data
from pipeline.arguments import parse_config
from pipeline.batches import CachedBatches, StreamedBatches
from pipeline.data import (
    DataSource,
    PipelineError,
    Preprocessing,
    decode_image,
    open_source,
    prepare_training_images,
    to_uint8_array,
)
from pipeline.diffusion import random_flip, to_model_range


SETTINGS = Preprocessing(resolution=32, channels=3, min_image_size=16)
KEPT = SFHQ_TREE_GOOD_JPEGS + sum(outcome == "kept" for outcome in SFHQ_TREE_SPECIAL.values())


def tree_config(source, *flags):
    return parse_config(["--train_data_dir", str(source), "--resolution", "32", "--image_channels", "3", *flags])


# ----- the embedded dataset (a datasets source) -----


def test_embedded_dataset_decodes_to_uint8():
    pixels = prepare_training_images(parse_config([])).pixels
    assert pixels.shape == (6000, 28, 28, 1) and pixels.dtype == np.uint8
    assert pixels.min() == 0 and pixels.max() == 255
    # Fashion-MNIST: light garments on a black background
    assert pixels[:, 0, 0, 0].mean() < 5 and pixels[:, 10:18, 10:18].mean() > 60


def test_missing_image_column_and_unknown_dataset(tmp_path):
    with pytest.raises(PipelineError, match="image_column: no column 'pixels'"):
        prepare_training_images(parse_config(["--image_column", "pixels"]))
    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(tmp_path / "text_only")
    with pytest.raises(PipelineError, match="no Image feature"):
        prepare_training_images(parse_config(["--dataset_name", str(tmp_path / "text_only")]))
    with pytest.raises(PipelineError, match="dataset_name: cannot load"):
        open_source(DataSource(dataset_name="data/no_such_dataset"))


def test_parquet_file_and_save_to_disk_sources(tmp_path):
    import datasets

    embedded = datasets.load_dataset("data/fashion_mnist", split="train").select(range(40))
    embedded.save_to_disk(tmp_path / "saved")
    for name in (str(REPO / "data/fashion_mnist/train.parquet"), str(tmp_path / "saved")):
        pixels = prepare_training_images(parse_config(["--dataset_name", name, "--max_train_samples", "40"])).pixels
        assert pixels.shape == (40, 28, 28, 1)


# ----- an SFHQ-shaped folder and its zip -----


def test_sfhq_folder_keeps_good_images_and_reports_bad_ones(sfhq_tree):
    root, _ = sfhq_tree
    prepared = prepare_training_images(tree_config(root))
    assert prepared.pixels.shape == (KEPT, 32, 32, 3) and prepared.pixels.dtype == np.uint8
    summary = prepared.summary
    assert summary["images_kept"] == KEPT and summary["files_skipped"] == len(SFHQ_TREE_SPECIAL) - 5
    assert summary["skipped_by_reason"] == {
        "not an image file": 1,
        "not a readable image": 1,
        "corrupt or truncated": 1,
        "empty file": 1,
        "too small": 1,
    }
    reported = "\n".join(summary["skipped_examples"])
    for file, outcome in SFHQ_TREE_SPECIAL.items():
        if outcome != "kept":
            assert f"{file.split('/')[-1]}: {outcome}" in reported
    assert "skipped 5 file(s)" in data.describe_prepared(summary)


def test_zip_archive_gives_the_same_images_as_the_folder(sfhq_tree):
    root, archive = sfhq_tree
    from_folder = prepare_training_images(tree_config(root)).pixels
    from_zip = prepare_training_images(tree_config(archive))
    np.testing.assert_array_equal(from_zip.pixels, from_folder)
    assert from_zip.summary["files_skipped"] == 5


def test_strict_data_stops_the_run_on_bad_files(sfhq_tree):
    root, _ = sfhq_tree
    with pytest.raises(PipelineError, match="strict_data: .* corrupt or truncated"):
        prepare_training_images(tree_config(root, "--strict_data"))


def test_second_load_reuses_the_cache_without_decoding(sfhq_tree, monkeypatch):
    root, _ = sfhq_tree
    config = tree_config(root, "--resolution", "16", "--min_image_size", "8")
    first = prepare_training_images(config)
    assert not first.summary["from_cache"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "decode_image", no_decoding)
    second = prepare_training_images(config)
    assert second.summary["from_cache"]
    np.testing.assert_array_equal(second.pixels, first.pixels)
    # any preprocessing setting changes the key: this one must decode (and so fail here)
    with pytest.raises(AssertionError, match="decoded again"):
        prepare_training_images(
            tree_config(root, "--resolution", "16", "--min_image_size", "8", "--intermediate_resolution", "48")
        )


def test_a_changed_source_is_decoded_again(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (40, 40), (index * 50, 0, 0)).save(folder / f"{index}.png")
    config = tree_config(folder)
    assert prepare_training_images(config).summary["images_kept"] == 3
    assert prepare_training_images(config).summary["from_cache"]
    Image.new("RGB", (40, 40), (0, 0, 200)).save(folder / "3.png")
    rebuilt = prepare_training_images(config)
    assert not rebuilt.summary["from_cache"] and rebuilt.summary["images_kept"] == 4


def test_subset_is_seeded(sfhq_tree, tmp_path):
    root, _ = sfhq_tree
    first = prepare_training_images(tree_config(root, "--max_train_samples", "12", "--seed", "1")).pixels
    again = prepare_training_images(
        tree_config(root, "--max_train_samples", "12", "--seed", "1", "--cache_dir", str(tmp_path))
    )
    other = prepare_training_images(tree_config(root, "--max_train_samples", "12", "--seed", "2")).pixels
    assert not again.summary["from_cache"]  # decoded afresh in another cache folder: the same images
    np.testing.assert_array_equal(again.pixels, first)
    assert again.summary["images_decoded"] == 12 and len(first) == again.summary["images_kept"]  # bad ones skipped
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_empty_and_missing_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(PipelineError, match="holds no image files \\(1 other files\\)"):
        prepare_training_images(tree_config(tmp_path / "empty"))
    with pytest.raises(PipelineError, match="neither a folder of images nor a .zip archive"):
        prepare_training_images(tree_config(tmp_path / "nowhere"))
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    with pytest.raises(PipelineError, match="not a readable zip archive"):
        prepare_training_images(tree_config(tmp_path / "broken.zip"))
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "a.jpg").write_bytes(b"")
    with pytest.raises(PipelineError, match="none of its 1 images could be used"):
        prepare_training_images(tree_config(only_bad))


def test_prepare_command(sfhq_tree, tmp_path):
    root, _ = sfhq_tree
    command = [
        sys.executable,
        "-m",
        "pipeline.data",
        "prepare",
        "--train_data_dir",
        str(root),
        "--resolution",
        "24",
        "--image_channels",
        "3",
        "--cache_dir",
        str(tmp_path / "cache"),
    ]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert f"Data: {KEPT} images of 24x24x3 from folder" in first.stdout and "decoded in" in first.stdout
    assert "skipped 5 file(s)" in first.stdout and "Decoding" in first.stderr  # the progress bar
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "read from the cache" in second.stdout
    summary = json.loads(next((tmp_path / "cache" / "ddpm_images").glob("*/summary.json")).read_text())
    assert summary["images_kept"] == KEPT
    bad = subprocess.run(
        command[:5] + [str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: train_data_dir:")


# ----- one image -----


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def test_channel_conversions(sfhq_tree):
    root, _ = sfhq_tree
    folder = root / "images" / "images"
    gray = decode_image((folder / "gray.jpg").read_bytes(), SETTINGS)[0]
    assert gray.shape == (32, 32, 3) and np.array_equal(gray[..., 0], gray[..., 1])
    rgba = decode_image((folder / "rgba.png").read_bytes(), SETTINGS)[0]
    assert rgba[:, :14].min() == 255  # the transparent half is composited over white
    sixteen = decode_image((folder / "sixteen_bit.png").read_bytes(), replace(SETTINGS, channels=1))[0]
    assert np.all(sixteen == 128)  # scaled from 16 bits, not clipped to 255
    cmyk = decode_image((folder / "cmyk.jpg").read_bytes(), SETTINGS)[0]
    assert cmyk[..., 0].mean() > 240 and cmyk[..., 1:].mean() < 15  # red
    palette = decode_image((folder / "palette.png").read_bytes(), SETTINGS)[0]
    assert palette.min() == 255  # fully transparent palette image -> white
    red = encoded(Image.new("RGB", (32, 32), (255, 0, 0)), "PNG")
    rgb_to_gray, colour = decode_image(red, replace(SETTINGS, channels=1))
    assert rgb_to_gray.shape == (32, 32, 1) and abs(int(rgb_to_gray[0, 0, 0]) - 76) <= 1  # ITU-R 601 luma of red
    assert colour and not decode_image((folder / "gray.jpg").read_bytes(), SETTINGS)[1]


def test_bad_images_raise_skipped_with_the_reason():
    with pytest.raises(data.SkippedImage, match="empty file"):
        decode_image(b"", SETTINGS)
    with pytest.raises(data.SkippedImage, match="not a readable image"):
        decode_image(b"hello, I am text", SETTINGS)
    with pytest.raises(data.SkippedImage, match="too small \\(10x40; the minimum side is 16\\)"):
        decode_image(encoded(Image.new("RGB", (10, 40)), "PNG"), SETTINGS)


def test_resize_through_an_intermediate_size_and_crops():
    gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, dark left, light right
    rgb = Image.fromarray(np.stack([gradient, gradient // 2, 255 - gradient], axis=-1))
    direct, colour = to_uint8_array(rgb, Preprocessing(16, 3))
    chained, _ = to_uint8_array(rgb, Preprocessing(16, 3, intermediate_resolution=32))
    assert direct.shape == chained.shape == (16, 16, 3) and colour
    assert np.abs(direct.astype(int) - chained.astype(int)).max() <= 8  # a smooth image survives either way
    wide = np.zeros((20, 60), dtype=np.uint8)
    wide[:, 20:40] = 255  # a white square in the middle third
    cropped = to_uint8_array(Image.fromarray(wide), Preprocessing(10, 1))[0][..., 0]
    assert cropped[:, 2:8].min() > 200  # the crop keeps the middle
    squashed = to_uint8_array(Image.fromarray(wide), Preprocessing(10, 1, center_crop=False))[0][..., 0]
    assert squashed[:, 0].max() < 30 and squashed[:, 5].min() > 200  # the whole width, squeezed


def test_exif_orientation_is_applied():
    tall = Image.new("RGB", (20, 40), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 20, 20))  # white top half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    pixels, _ = decode_image(
        encoded(tall, "JPEG", exif=exif.tobytes(), quality=95), replace(SETTINGS, min_image_size=0, center_crop=False)
    )
    assert pixels[:, -8:].mean() > 200 and pixels[:, :8].mean() < 50  # the white half is now on the right


# ----- batches -----


def test_image_stream_shows_every_image_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).reshape(10, 1, 1, 1)
    stream = CachedBatches(images, batch_size=4, seed=0)
    seen = torch.cat([stream.batch(k).flatten() for k in range(5)])  # 20 images = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert seen[:10].tolist() != seen[10:].tolist()  # a new order each epoch
    # a pure function of the micro-batch index: a resumed stream continues exactly
    fresh = CachedBatches(images, batch_size=4, seed=0)
    assert torch.equal(fresh.batch(3), stream.batch(3))
    assert not torch.equal(CachedBatches(images, batch_size=4, seed=1).batch(0), stream.batch(0))


def test_image_stream_shards_the_global_batch_between_processes():
    images = torch.arange(12, dtype=torch.uint8).reshape(12, 1, 1, 1)
    single = CachedBatches(images, batch_size=6, seed=3)
    ranks = [CachedBatches(images, batch_size=3, seed=3, process_index=r, num_processes=2) for r in range(2)]
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


# ----- streaming -----


def streaming_config(*flags):
    return parse_config(
        ["--streaming", "--image_channels", "1", "--train_batch_size", "16", "--shuffle_buffer_size", "64", *flags]
    )


@pytest.mark.usefixtures("short_stream_shutdowns")
def test_streaming_batches_are_seeded_and_resume_exactly():
    first = StreamedBatches(streaming_config())
    batches = [first.batch(k) for k in range(4)]
    assert batches[0].shape == (16, 1, 28, 28) and batches[0].dtype == torch.uint8
    again = StreamedBatches(streaming_config())
    assert torch.equal(again.batch(0), batches[0])
    resumed = StreamedBatches(streaming_config())
    first_two = StreamedBatches(streaming_config())
    first_two.batch(0), first_two.batch(1)
    resumed.load_state(first_two.state())
    assert resumed.state() == {"epoch": 0, "examples_read": 32, "next_micro_batch": 2}
    assert torch.equal(resumed.batch(2), batches[2]) and torch.equal(resumed.batch(3), batches[3])
    with pytest.raises(RuntimeError, match="in order"):
        resumed.batch(7)


@pytest.mark.usefixtures("short_stream_shutdowns")
def test_streaming_processes_read_disjoint_parts():
    ranks = [StreamedBatches(streaming_config(), process_index=rank, num_processes=2) for rank in range(2)]
    seen = [{bytes(image.numpy()) for k in range(10) for image in rank.batch(k)} for rank in ranks]
    assert len(seen[0]) == len(seen[1]) == 160
    assert not seen[0] & seen[1]


@pytest.mark.usefixtures("short_stream_shutdowns")
def test_streaming_crosses_epochs_and_skips_bad_images(tmp_path):
    import datasets

    good = [encoded(Image.new("L", (28, 28), value), "PNG") for value in range(0, 250, 25)]  # 10 distinct images
    rows = [{"bytes": image, "path": None} for image in good] + [{"bytes": b"broken", "path": None}]
    table = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    table.to_parquet(tmp_path / "small.parquet")
    stream = StreamedBatches(
        streaming_config("--dataset_name", str(tmp_path / "small.parquet"), "--train_batch_size", "4")
    )
    values = [int(image[0, 0, 0]) for k in range(5) for image in stream.batch(k)]  # 20 images: 2 epochs of 10
    assert sorted(values[:10]) == sorted(values[10:]) == list(range(0, 250, 25))
    skipped = stream.skipped["not a readable image"]
    assert skipped >= 1 and set(stream.skipped) == {"not a readable image"}
    assert stream.epoch * 11 + stream.examples_read == 20 + skipped  # every example read is used or skipped
