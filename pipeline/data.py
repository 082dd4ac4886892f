"""Training data: any `datasets` image source, decoded once into uint8 arrays, then streamed.

load -> pick a subset -> decode + resize once (batched `datasets.map`, cached on disk by
`datasets` and keyed by the source and every preprocessing setting) -> one uint8 tensor
(N, C, H, W) on the training device -> seeded batches, flipped on the device at each step.
"""

import os
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
from PIL import Image

from .config import TrainingConfig


class DataError(ValueError):
    """The data source cannot give what the configuration asks for; says what was expected."""


# ---------------------------------------------------------------------------------------------
# Source


def load_source(config: TrainingConfig) -> datasets.Dataset:
    """The configured image source as a `datasets.Dataset` (not decoded yet)."""
    if config.train_data_dir is not None:
        folder = Path(config.train_data_dir)
        if not folder.is_dir():
            raise DataError(f"train_data_dir: {folder} is not a folder of images")
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=config.cache_dir)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(f"train_data_dir: no images found in {folder} ({error})") from None

    name = config.dataset_name
    if Path(name, "dataset_info.json").is_file() or Path(name, "state.json").is_file():  # a save_to_disk folder
        source = datasets.load_from_disk(name)
        if isinstance(source, datasets.DatasetDict):
            if config.split not in source:
                raise DataError(f"split: {name} has no split {config.split!r}; it has {', '.join(source)}")
            source = source[config.split]
        return source
    try:
        return datasets.load_dataset(name, config.dataset_config_name, split=config.split, cache_dir=config.cache_dir)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        where = "a local folder (relative to the current directory) nor a" if not Path(name).exists() else "a"
        raise DataError(f"dataset_name: cannot load {name!r}, split {config.split!r}: it is neither {where} "
                        f"readable dataset ({type(error).__name__}: {error})") from None


def find_image_column(source: datasets.Dataset, image_column: Optional[str]) -> str:
    """The configured image column, or the first `datasets.Image` feature."""
    if image_column is not None:
        if image_column not in source.features:
            raise DataError(f"image_column: no column {image_column!r}; the dataset has {', '.join(source.features)}")
        return image_column
    for name, feature in source.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise DataError(f"image_column: the dataset has no Image feature (columns: {', '.join(source.features)}); pass --image_column")


# ---------------------------------------------------------------------------------------------
# Decode once


def to_uint8_array(image: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """One image -> (resolution, resolution, channels) uint8: resize the short side, crop the centre."""
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    if scale != 1:
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8).reshape(resolution, resolution, channels)


def _decode_batch(batch: dict, image_column: str, resolution: int, channels: int) -> dict:
    return {"pixels": [to_uint8_array(image, resolution, channels) for image in batch[image_column]]}


def prepare_images(config: TrainingConfig) -> np.ndarray:
    """Decode the configured source once into a (N, H, W, C) uint8 array; cached by `datasets`."""
    source = load_source(config)
    image_column = find_image_column(source, config.image_column)
    if config.max_train_samples is not None and config.max_train_samples < len(source):
        picked = np.random.default_rng(config.seed).choice(len(source), size=config.max_train_samples, replace=False)
        source = source.select(np.sort(picked))
    size, channels = config.resolution, config.image_channels
    decoded = source.map(
        _decode_batch,
        batched=True,
        batch_size=256,
        fn_kwargs={"image_column": image_column, "resolution": size, "channels": channels},
        remove_columns=source.column_names,
        features=datasets.Features({"pixels": datasets.Array3D(shape=(size, size, channels), dtype="uint8")}),
        num_proc=min(os.cpu_count() or 1, 8) if len(source) >= 4096 else None,
        desc=f"Decoding {len(source)} images to {size}x{size}x{channels}",
    )
    if len(decoded) == 0:
        raise DataError("the data source holds no images")
    # Straight from Arrow: the numpy formatter would widen uint8 to int64 (8x the memory).
    column = decoded.data.column("pixels")  # map() wrote a fresh table, so no indices mapping applies
    return np.concatenate([chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks])


# ---------------------------------------------------------------------------------------------
# Batches


class ImageStream:
    """An endless, seeded stream of uint8 batches: every image once per epoch, in a new order each epoch.

    Micro-batch `k` of the whole run is a pure function of `k`, so a resumed run continues
    with exactly the images an uninterrupted one would have seen. Each process takes its own
    slice of the global micro-batch (`num_processes * batch_size` images).
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1):
        self.images = images  # (N, C, H, W) uint8
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self._permutations: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = torch.randperm(len(self.images), generator=generator)
        return self._permutations[epoch]

    def batch(self, micro_batch_index: int) -> torch.Tensor:
        """This process's share of global micro-batch `micro_batch_index`: (B, C, H, W) uint8."""
        start = (micro_batch_index * self.num_processes + self.process_index) * self.batch_size
        positions = torch.arange(start, start + self.batch_size)  # positions in the endless sequence of epochs
        epochs, offsets = positions // len(self.images), positions % len(self.images)
        indices = torch.empty_like(positions)
        for epoch in epochs.unique().tolist():
            in_epoch = epochs == epoch
            indices[in_epoch] = self.permutation(epoch)[offsets[in_epoch]]
        return self.images[indices.to(self.images.device)]


def random_flip(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0
