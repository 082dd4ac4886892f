"""Training data: an image folder, a zip archive or any `datasets` source, decoded once, then streamed.

list the source -> pick a subset -> decode, convert and resize each image once (a batched,
parallel `datasets.map`) -> a uint8 array (N, H, W, C) cached on disk, keyed by the source and
every preprocessing setting -> one tensor on the training device -> seeded batches, flipped on
the device at each step. Images that cannot be used are skipped, counted and reported (or stop
the run under --strict_data); one bad file never stops a run mid-epoch.

`python -m pipeline.data prepare [training flags]` builds the cache ahead of time.
"""

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ConfigError, TrainingConfig, parse_config

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Bump when decoding changes what it produces for the same settings: older caches are not reused.
CACHE_VERSION = 2
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
# A streamed source whose rows fail this many times in a row holds no usable images: stop instead of reading it forever.
MAX_UNUSABLE_ROWS_IN_A_ROW = 1000


class DataError(ValueError):
    """The data source cannot give what the configuration asks for; says what was expected."""


class SkippedImage(Exception):
    """One image that cannot be used; the message is the reason."""


@dataclass
class PreparedImages:
    pixels: np.ndarray  # (N, H, W, C) uint8
    summary: dict  # source, counts, skipped images and why, seconds, cache folder


# ---------------------------------------------------------------------------------------------
# Sources: what to decode, and an identity that changes when the source does


@dataclass
class Source:
    table: datasets.Dataset  # a "file" column (name to report), plus the image column for datasets sources
    identity: dict
    description: str
    archive: Optional[str] = None  # images are members of this zip file
    image_column: Optional[str] = None  # images are this column (bytes or paths) of a datasets source
    ignored: tuple = ()  # (file, reason) for files that are not images at all


def _files_identity(entries: list[tuple[str, int, int]]) -> str:
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def readable_name(name: str) -> str:
    """A file name as text, with bytes that are not UTF-8 shown as escapes (`bad\\xff.jpg`)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _folder_source(folder: Path, max_image_bytes: int) -> Source:
    """List the image files under `folder`. Whatever cannot be listed or used (a dangling or looping link, a name that is
    not UTF-8, an unreadable subfolder, a file over the size limit) is set aside with its reason, never a traceback."""
    images, ignored, entries = [], [], []

    def unreadable(error: OSError):
        ignored.append((readable_name(str(Path(error.filename).relative_to(folder))) + "/", f"unreadable folder ({error.strerror})"))

    for root, directories, files in os.walk(folder, onerror=unreadable):
        directories.sort()
        for name in sorted(files):
            path = Path(root, name)
            relative = readable_name(str(path.relative_to(folder)))
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                ignored.append((relative, f"not an image file ({path.suffix or 'no extension'})"))
                continue
            try:
                str(path).encode("utf-8")
            except UnicodeEncodeError:
                ignored.append((relative, "file name is not valid UTF-8 (rename the file to use it)"))
                continue
            try:
                stat = path.stat()
            except OSError as error:  # a dangling link, a link loop, a file removed while listing
                ignored.append((relative, f"unreadable ({error.strerror})"))
                continue
            if stat.st_size > max_image_bytes:
                ignored.append((relative, f"too large ({stat.st_size:,} bytes; --max_image_bytes {max_image_bytes:,})"))
                continue
            images.append(str(path))
            entries.append((relative, stat.st_size, stat.st_mtime_ns))
    if not images:
        others = f" ({len(ignored)} other files)" if ignored else ""
        raise DataError(f"train_data_dir: {folder} holds no image files{others}; expected {', '.join(sorted(IMAGE_EXTENSIONS))}")
    identity = {"kind": "folder", "path": str(folder.resolve()), "files": _files_identity(entries), "count": len(images)}
    return Source(datasets.Dataset.from_dict({"file": images}), identity, f"folder {folder}", ignored=tuple(ignored))


def _zip_source(archive: Path, max_image_bytes: int) -> Source:
    """List the image members of a zip archive; encrypted members and members over the size limit are set aside unread."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = sorted((info for info in opened.infolist() if not info.is_dir()), key=lambda info: info.filename)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"train_data_dir: {archive} is not a readable zip archive ({error})") from None
    images, ignored = [], []
    for info in members:
        if Path(info.filename).suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append((info.filename, f"not an image file ({Path(info.filename).suffix or 'no extension'})"))
        elif info.flag_bits & 0x1:
            ignored.append((info.filename, "encrypted archive member"))
        elif info.file_size > max_image_bytes:
            ignored.append((info.filename, f"too large ({info.file_size:,} bytes; --max_image_bytes {max_image_bytes:,})"))
        else:
            images.append(info.filename)
    if not images:
        raise DataError(f"train_data_dir: the archive {archive} holds no usable image files ({len(members)} other files)")
    stat = archive.stat()
    identity = {"kind": "zip", "path": str(archive.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return Source(datasets.Dataset.from_dict({"file": images}), identity, f"archive {archive}", archive=str(archive), ignored=tuple(ignored))


def load_dataset_source(config: TrainingConfig, streaming: bool = False):
    """--dataset_name as a `datasets.Dataset` (an `IterableDataset` when streaming): a save_to_disk folder,
    a parquet file, or anything `load_dataset` reads."""
    name = config.dataset_name
    verb = "stream" if streaming else "load"
    try:
        if Path(name, "dataset_info.json").is_file() or Path(name, "state.json").is_file():  # a save_to_disk folder
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if config.split not in loaded:
                    raise DataError(f"split: {name} has no split {config.split!r}; it has {', '.join(loaded)}")
                loaded = loaded[config.split]
            return loaded.to_iterable_dataset() if streaming else loaded
        if name.endswith(".parquet"):
            return datasets.load_dataset("parquet", data_files=name, split="train", cache_dir=config.cache_dir, streaming=streaming)
        return datasets.load_dataset(
            name, config.dataset_config_name, split=config.split, cache_dir=config.cache_dir, streaming=streaming
        )
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        if isinstance(error, DataError):
            raise
        where = "a local path (relative to the current directory) nor a" if not Path(name).exists() else "a"
        raise DataError(
            f"dataset_name: cannot {verb} {name!r}, split {config.split!r}: it is neither {where} readable dataset "
            f"({type(error).__name__}: {error})"
        ) from None


def find_image_column(features: datasets.Features, image_column: Optional[str]) -> str:
    """The configured image column, or the first `datasets.Image` feature."""
    if image_column is not None:
        if image_column not in features:
            raise DataError(f"image_column: no column {image_column!r}; the dataset has {', '.join(features)}")
        if not isinstance(features[image_column], datasets.Image):
            raise DataError(f"image_column: column {image_column!r} holds {features[image_column]}, not images")
        return image_column
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise DataError(f"image_column: the dataset has no Image feature (columns: {', '.join(features)}); pass --image_column")


def open_source(config: TrainingConfig) -> Source:
    """List the configured source without decoding anything. Raises DataError when it cannot be used."""
    if config.train_data_dir is not None:
        path = Path(config.train_data_dir)
        if path.is_file() and path.suffix.lower() == ".zip":
            return _zip_source(path, config.max_image_bytes)
        if not path.is_dir():
            raise DataError(f"train_data_dir: {path} is neither a folder of images nor a .zip archive")
        return _folder_source(path, config.max_image_bytes)

    loaded = load_dataset_source(config)
    column = find_image_column(loaded.features, config.image_column)
    table = loaded.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    identity = {
        "kind": "dataset",
        "name": config.dataset_name,
        "config": config.dataset_config_name,
        "split": config.split,
        "column": column,
        "fingerprint": loaded._fingerprint,  # datasets' own hash of the data files / revision
    }
    return Source(table, identity, f"dataset {config.dataset_name} ({config.split})", image_column=column)


# ---------------------------------------------------------------------------------------------
# Decoding one image


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to "L" or "RGB": 16-bit scaled (not clipped), transparency over white, CMYK to RGB."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.getextrema()[1] > 255):
        values = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
        image = Image.fromarray(values.round().clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def _fit(image: Image.Image, size: int, center_crop: bool) -> Image.Image:
    """Make the image size x size: scale the short side and crop the centre, or squash the whole image."""
    if not center_crop:
        return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None) if image.size != (size, size) else image
    width, height = image.size
    scale = size / min(width, height)
    if scale != 1:
        target = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=None)  # antialiased when shrinking
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_uint8_array(
    image: Image.Image,
    resolution: int,
    channels: int,
    intermediate_resolution: Optional[int] = None,
    center_crop: bool = True,
    min_image_size: int = 0,
) -> np.ndarray:
    """One image -> (resolution, resolution, channels) uint8, through the intermediate size if given."""
    image = ImageOps.exif_transpose(image)
    if min(image.size) < min_image_size:
        raise SkippedImage(f"too small ({image.width}x{image.height}; the minimum side is {min_image_size})")
    image = to_mode(image, channels)
    for size in (intermediate_resolution, resolution):
        if size is not None:
            image = _fit(image, size, center_crop)
    return np.asarray(image, dtype=np.uint8).reshape(resolution, resolution, channels)


_open_archives: dict[tuple[str, int], zipfile.ZipFile] = {}
# What reading one archive member can raise besides OSError: a bad CRC or header, a compression
# method zipfile lacks, a truncated or corrupt compressed stream, a password it does not have.
ARCHIVE_MEMBER_ERRORS = (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError, RuntimeError)


def _too_large(size: int, max_bytes: int) -> SkippedImage:
    return SkippedImage(f"too large ({size:,} bytes; --max_image_bytes {max_bytes:,})")


def _read_bytes(file: Optional[str], entry: Optional[dict], archive: Optional[str], max_bytes: int) -> bytes:
    """The bytes of one image: an archive member, a file, or a datasets row (bytes or a path). Raises SkippedImage."""
    if archive is not None:
        key = (archive, os.getpid())  # one handle per worker process
        if key not in _open_archives:
            _open_archives[key] = zipfile.ZipFile(archive)
        try:
            return _open_archives[key].read(file)  # the member's declared size was checked when listing
        except ARCHIVE_MEMBER_ERRORS as error:
            raise SkippedImage(f"unreadable archive member ({type(error).__name__}: {error})") from None
    if entry is not None and entry.get("bytes") is not None:
        if len(entry["bytes"]) > max_bytes:
            raise _too_large(len(entry["bytes"]), max_bytes)
        return entry["bytes"]
    path = entry.get("path") if entry is not None else file
    if not path:
        raise SkippedImage("empty row (no image)")
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise _too_large(size, max_bytes)
    return Path(path).read_bytes()


def decode_image(data: bytes, settings: dict) -> np.ndarray:
    """Bytes of one image file -> uint8 array; raises SkippedImage with the reason it cannot be used."""
    if not data:
        raise SkippedImage("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if min(image.size) < settings["min_image_size"]:
                raise SkippedImage(f"too small ({image.width}x{image.height}; the minimum side is {settings['min_image_size']})")
            if image.format == "JPEG":
                # Let libjpeg scale by 1/2, 1/4 or 1/8 while decoding, keeping at least twice the first
                # target size: a 1024 -> 64 decode is about 5x faster and the final resize still antialiases.
                target = 2 * max(settings["resolution"], settings["intermediate_resolution"] or 0)
                image.draft(image.mode, (target, target))
            image.load()
            return to_uint8_array(image, **{**settings, "min_image_size": 0})
    except UnidentifiedImageError:
        raise SkippedImage("not a readable image") from None
    except Image.DecompressionBombError as error:
        raise SkippedImage(f"too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise SkippedImage(f"corrupt or truncated ({error})") from None


def _decode_batch(batch: dict, indices: list, archive, image_column, settings: dict, max_bytes: int) -> dict:
    size, channels = settings["resolution"], settings["channels"]
    pixels, errors, files = [], [], []
    for position, index in enumerate(indices):
        entry = batch[image_column][position] if image_column else None
        file = batch["file"][position] if image_column is None else ((entry or {}).get("path") or f"row {index}")
        try:
            if image_column is not None and entry is None:
                raise SkippedImage("empty row (no image)")
            pixels.append(decode_image(_read_bytes(file, entry, archive, max_bytes), settings))
            errors.append("")
        except (SkippedImage, OSError) as error:  # OSError: the file vanished or cannot be read
            pixels.append(np.zeros((size, size, channels), dtype=np.uint8))
            errors.append(str(error) or type(error).__name__)
        files.append(file)
    return {"pixels": pixels, "error": errors, "file": files}


# ---------------------------------------------------------------------------------------------
# Decode once, cache, report


def preprocessing_settings(config: TrainingConfig) -> dict:
    """Everything that changes the decoded pixels (and so the cache key)."""
    return {
        "resolution": config.resolution,
        "channels": config.image_channels,
        "intermediate_resolution": config.intermediate_resolution,
        "center_crop": config.center_crop,
        "min_image_size": config.resolution // 2 if config.min_image_size is None else config.min_image_size,
    }


def cache_folder(config: TrainingConfig, source: Source) -> Path:
    """Where the decoded images of this source and these settings live."""
    subset = {"max_train_samples": config.max_train_samples, "seed": config.seed if config.max_train_samples else None}
    key = json.dumps({"version": CACHE_VERSION, "source": source.identity, "settings": preprocessing_settings(config), **subset}, sort_keys=True)
    root = Path(config.cache_dir) if config.cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    return root / "ddpm_images" / hashlib.sha256(key.encode()).hexdigest()[:20]


def prepare_images(config: TrainingConfig) -> PreparedImages:
    """Decode the configured source once into (N, H, W, C) uint8, or read the cache of an earlier run."""
    started = time.perf_counter()
    source = open_source(config)
    folder = cache_folder(config, source)
    if (folder / "summary.json").is_file() and (folder / "pixels.npy").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        prepared = PreparedImages(np.load(folder / "pixels.npy", mmap_mode="r"), {**summary, "from_cache": True})
    else:
        prepared = _decode_source(config, source, folder)
    prepared.summary.update(cache=str(folder), seconds=round(time.perf_counter() - started, 2))
    if config.strict_data and prepared.summary["files_skipped"]:
        raise DataError(f"strict_data: {source.description} has files that cannot be used; {describe_skipped(prepared.summary)}")
    return prepared


def _decode_source(config: TrainingConfig, source: Source, folder: Path) -> PreparedImages:
    """Decode (a subset of) the source in parallel; write the cache folder whole or not at all."""
    table = source.table
    if config.max_train_samples is not None and config.max_train_samples < len(table):
        picked = np.random.default_rng(config.seed).choice(len(table), size=config.max_train_samples, replace=False)
        table = table.select(np.sort(picked))
    settings = preprocessing_settings(config)
    size, channels = settings["resolution"], settings["channels"]
    workers = config.preprocessing_num_workers or (len(os.sched_getaffinity(0)) if len(table) >= 256 else 1)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))  # renamed into place when complete
    try:
        decoded = table.map(
            _decode_batch,
            with_indices=True,
            batched=True,
            batch_size=64,
            fn_kwargs={"archive": source.archive, "image_column": source.image_column, "settings": settings,
                       "max_bytes": config.max_image_bytes},  # fmt: skip
            remove_columns=table.column_names,
            features=datasets.Features(
                {
                    "pixels": datasets.Array3D(shape=(size, size, channels), dtype="uint8"),
                    "error": datasets.Value("string"),
                    "file": datasets.Value("string"),
                }
            ),
            num_proc=workers if workers > 1 else None,
            cache_file_name=str(staging / "decoded.arrow"),
            new_fingerprint=folder.name,
            desc=f"Decoding {len(table):,} images to {size}x{size}x{channels}",
        )
        errors = list(decoded["error"])
        keep = np.array([error == "" for error in errors], dtype=bool)
        # Straight from Arrow: the numpy formatter would widen uint8 to int64 (8x the memory).
        column = decoded.data.column("pixels")
        pixels = np.concatenate([chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks])[keep]
        skipped = list(source.ignored) + [(file, error) for file, error in zip(decoded["file"], errors) if error]
        del decoded, column
        summary = {
            "source": source.description,
            "images_found": len(source.table),
            "images_decoded": len(table),
            "images_kept": int(keep.sum()),
            "files_skipped": len(skipped),
            "skipped_by_reason": dict(Counter(reason.split(" (")[0] for _, reason in skipped)),
            "skipped_examples": [f"{file}: {reason}" for file, reason in skipped[:20]],
            "resolution": size,
            "channels": channels,
        }
        if len(pixels) == 0:
            raise DataError(f"{source.description}: none of its {len(table)} images could be used; {describe_skipped(summary)}")
        np.save(staging / "pixels.npy", pixels)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for shard in staging.glob("*.arrow"):
            shard.unlink()
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return PreparedImages(pixels, {**summary, "from_cache": False})


def describe_skipped(summary: dict, limit: int = 5) -> str:
    """How many files were skipped, why, and the first few of them."""
    reasons = ", ".join(f"{reason} ({count})" for reason, count in summary["skipped_by_reason"].items())
    examples = "".join(f"\n  {example}" for example in summary["skipped_examples"][:limit])
    more = summary["files_skipped"] - min(limit, len(summary["skipped_examples"]))
    return f"skipped {summary['files_skipped']} file(s): {reasons}{examples}" + (f"\n  ... and {more} more" if more > 0 else "")


def describe_prepared(summary: dict) -> str:
    """One paragraph for the log: what was kept, what was skipped and why, how long it took."""
    where = "read from the cache" if summary["from_cache"] else "decoded"
    text = (
        f"Data: {summary['images_kept']:,} images of {summary['resolution']}x{summary['resolution']}x{summary['channels']} "
        f"from {summary['source']}, {where} in {summary['seconds']:.1f} s"
    )
    return text + (f"; {describe_skipped(summary)}" if summary["files_skipped"] else "")


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


class StreamingImages:
    """Batches decoded on the fly from a streamed `datasets` source, for sources larger than the disk.

    Nothing is cached. Each process reads its own part of the stream (`split_dataset_by_node`)
    through a seeded shuffle buffer that reshuffles every epoch; images are decoded by a thread
    pool (PIL releases the GIL), in order, so the batches are the same on every run. Unusable
    images are skipped and counted. `state()` (epoch, examples read) goes into checkpoints: a
    resumed run reads past what was already used without decoding it.
    """

    def __init__(self, config: TrainingConfig, process_index: int = 0, num_processes: int = 1, device="cpu"):
        from concurrent.futures import ThreadPoolExecutor

        from datasets.distributed import split_dataset_by_node

        stream = load_dataset_source(config, streaming=True)
        if stream.features is None:
            raise DataError(f"dataset_name: {config.dataset_name!r} does not declare its features; pass --image_column")
        self.column = find_image_column(stream.features, config.image_column)
        stream = stream.select_columns([self.column]).cast_column(self.column, datasets.Image(decode=False))
        self.stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes).shuffle(
            seed=config.seed, buffer_size=config.shuffle_buffer_size
        )
        self.batch_size, self.device = config.train_batch_size, device
        self.settings = preprocessing_settings(config)
        self.max_image_bytes = config.max_image_bytes
        self.pool = ThreadPoolExecutor(max_workers=config.preprocessing_num_workers or len(os.sched_getaffinity(0)))
        self.skipped: Counter = Counter()
        self.epoch, self.examples_read, self.next_micro_batch = 0, 0, 0
        self._examples = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "examples_read": self.examples_read, "next_micro_batch": self.next_micro_batch}

    def load_state(self, state: dict) -> None:
        """Continue from `state()`; raises ValueError for anything but three non-negative integers."""
        values = [state.get(name) for name in ("epoch", "examples_read", "next_micro_batch")]
        if any(isinstance(value, bool) or not isinstance(value, int) or value < 0 for value in values):
            raise ValueError(f"epoch, examples_read and next_micro_batch must be non-negative integers, got {state}")
        self.epoch, self.examples_read, self.next_micro_batch = values
        self._examples = None

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
                raise DataError(f"dataset_name: the stream of this process holds no images (split {self.stream})")
            self.epoch, self.examples_read = self.epoch + 1, 0

    def _decode(self, entry: dict):
        try:
            if entry is None:
                raise SkippedImage("empty row (no image)")
            return decode_image(_read_bytes(None, entry, None, self.max_image_bytes), self.settings)
        except (SkippedImage, OSError) as error:
            return str(error).split(" (")[0]

    def batch(self, micro_batch_index: int) -> torch.Tensor:
        """The next (B, C, H, W) uint8 batch of this process; micro-batches are read in order."""
        if micro_batch_index != self.next_micro_batch:
            raise RuntimeError(f"a stream reads micro-batches in order: expected {self.next_micro_batch}, got {micro_batch_index}")
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
                raise DataError(
                    f"dataset_name: the last {unusable_in_a_row.total():,} rows of the stream held no usable image ({reasons}); "
                    "check --dataset_name, --split and --image_column"
                )
        self.next_micro_batch += 1
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (B, H, W, C) -> (B, C, H, W)
        return batch.to(self.device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# Command line: python -m pipeline.data prepare [training flags]


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "prepare":
        print("usage: python -m pipeline.data prepare [--config PRESET] [training flags, e.g. --train_data_dir DIR]", file=sys.stderr)
        sys.exit(2)
    try:
        prepared = prepare_images(parse_config(argv[1:]))
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(describe_prepared(prepared.summary))
    if not prepared.summary["from_cache"]:
        print(f"Cache: {prepared.summary['cache']}")


if __name__ == "__main__":
    main()
