"""Training batches: the same interface over the decode-once cache and over a streamed source.

`batch(micro_batch_index)` returns this process's share of one global micro-batch as
(B, C, H, W) uint8 on the training device; flips, scaling and noise are applied per step by
pipeline/diffusion.py. `state()` is what a checkpoint must hold to continue (None when the
batches are a pure function of the index).
"""

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from .config import TrainingConfig
from .data import (
    DataSource,
    Preprocessing,
    SkippedImage,
    decode_image,
    find_image_column,
    load_dataset_source,
    read_bytes,
)
from .errors import PipelineError


# A streamed source whose rows fail this many times in a row holds no usable images: stop instead of reading it
# forever.
MAX_UNUSABLE_ROWS_IN_A_ROW = 1000


class CachedBatches:
    """Seeded batches from decoded images held on the device: every image once per epoch, in a new order each epoch.

    Micro-batch `k` of the whole run is a pure function of `k`, so a resumed run continues
    with exactly the images an uninterrupted one would have seen. Each process takes its own
    slice of the global micro-batch (`num_processes * batch_size` images).
    """

    def __init__(
        self, images: torch.Tensor, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1
    ):
        self.images = images  # (N, C, H, W) uint8, on the training device
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self._permutations: dict[int, torch.Tensor] = {}

    @classmethod
    def from_pixels(
        cls, pixels: np.ndarray, device, batch_size: int, seed: int, *, process_index: int = 0, num_processes: int = 1
    ):
        """From the cache's (N, H, W, C) uint8 array (memory-mapped: read into memory here), copied to `device`."""
        images = torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).contiguous().to(device)  # (N, C, H, W)
        return cls(images, batch_size, seed, process_index, num_processes)

    @property
    def num_images(self) -> int:
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

    def state(self) -> Optional[dict]:
        return None  # a pure function of the micro-batch index

    def files_skipped(self) -> int:
        return 0  # counted when the cache was made


class StreamedBatches:
    """Batches decoded on the fly from a streamed `datasets` source, for sources larger than the disk.

    Nothing is cached. Each process reads its own part of the stream (`split_dataset_by_node`)
    through a seeded shuffle buffer that reshuffles every epoch; images are decoded by a thread
    pool (PIL releases the GIL), in order, so the batches are the same on every run. Unusable
    images are skipped and counted. `state()` (epoch, examples read) goes into checkpoints: a
    resumed run reads past what was already used without decoding it.
    """

    num_images = None  # a stream has no known length

    def __init__(self, config: TrainingConfig, process_index: int = 0, num_processes: int = 1, device="cpu"):
        source = DataSource.from_config(config)
        stream = load_dataset_source(source, streaming=True)
        if stream.features is None:
            raise PipelineError(
                f"dataset_name: {config.dataset_name!r} does not declare its features; pass --image_column"
            )
        self.column = find_image_column(stream.features, config.image_column)
        stream = stream.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        self.stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes).shuffle(
            seed=config.seed, buffer_size=config.shuffle_buffer_size
        )
        self.batch_size, self.device = config.train_batch_size, device
        self.preprocessing = Preprocessing.from_config(config)
        self.pool = ThreadPoolExecutor(max_workers=config.preprocessing_num_workers or len(os.sched_getaffinity(0)))
        self.skipped: Counter = Counter()
        self.epoch, self.examples_read, self.next_micro_batch = 0, 0, 0
        self._examples = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "examples_read": self.examples_read, "next_micro_batch": self.next_micro_batch}

    @staticmethod
    def check_state(state: dict) -> None:
        """A `state()` to continue from: exactly three integers in [0, 10^12]; ValueError if not."""
        values = [state.get(name) for name in ("epoch", "examples_read", "next_micro_batch")]
        if set(state) != {"epoch", "examples_read", "next_micro_batch"} or any(
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**12 for value in values
        ):
            raise ValueError(f"epoch, examples_read and next_micro_batch must be non-negative integers, got {state}")

    def load_state(self, state: dict) -> None:
        """Continue from `state()`, checked first (check_state)."""
        self.epoch, self.examples_read, self.next_micro_batch = (
            state["epoch"],
            state["examples_read"],
            state["next_micro_batch"],
        )
        self._examples = None

    def files_skipped(self) -> int:
        return sum(self.skipped.values())

    def _read(self):
        """Raw examples from the current position on, across epochs."""
        while True:
            self.stream.set_epoch(self.epoch)
            examples = iter(self.stream)
            for _ in range(self.examples_read):  # resume: read past what was used, without decoding
                next(examples)
            read_this_epoch = self.examples_read
            for example in examples:
                self.examples_read += 1
                read_this_epoch += 1
                yield example[self.column]
            if read_this_epoch == 0:
                raise PipelineError(f"dataset_name: the stream of this process holds no images (split {self.stream})")
            self.epoch, self.examples_read = self.epoch + 1, 0

    def _decode(self, entry: Optional[dict]):
        try:
            if entry is None:
                raise SkippedImage("empty row (no image)")
            pixels, _ = decode_image(
                read_bytes(None, entry, None, self.preprocessing.max_image_bytes), self.preprocessing
            )
            return pixels  # (H, W, C); with --image_channels auto a stream is read as RGB
        except (SkippedImage, OSError) as error:
            return str(error).split(" (")[0]

    def batch(self, micro_batch_index: int) -> torch.Tensor:
        """The next (B, C, H, W) uint8 batch of this process; micro-batches are read in order."""
        if micro_batch_index != self.next_micro_batch:
            raise RuntimeError(
                f"a stream reads micro-batches in order: expected {self.next_micro_batch}, got {micro_batch_index}"
            )
        if self._examples is None:
            self._examples = self._read()
        images, unusable_in_a_row = [], Counter()
        while len(images) < self.batch_size:
            entries = [next(self._examples) for _ in range(self.batch_size - len(images))]
            for result in self.pool.map(self._decode, entries):
                if isinstance(result, str):
                    self.skipped[result] += 1
                    unusable_in_a_row[result] += 1
                else:
                    images.append(result)
                    unusable_in_a_row.clear()
            if unusable_in_a_row.total() >= MAX_UNUSABLE_ROWS_IN_A_ROW:
                reasons = ", ".join(f"{reason} ({count})" for reason, count in unusable_in_a_row.most_common())
                raise PipelineError(
                    f"dataset_name: the last {unusable_in_a_row.total():,} rows of the stream held no usable image "
                    f"({reasons}); check --dataset_name, --split and --image_column"
                )
        self.next_micro_batch += 1
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)
        return batch.to(self.device, non_blocking=True)
