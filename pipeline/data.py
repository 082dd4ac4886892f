"""Images from a folder, a zip archive or any `datasets` source, decoded once into a cached uint8 array.

    DataSource (what to read) -> list it -> pick a subset -> decode, convert and resize each image once
    with a Preprocessing (how), in a batched, parallel `datasets.map` -> (N, H, W, C) uint8 cached on
    disk, keyed by the source's identity and every preprocessing setting

Training reads the array through pipeline/batches.py; evaluation reads reference images through
the same two objects, so both see pixels made the same way. Images that cannot be used are
skipped, counted and reported (or stop the run under --strict_data); one bad file never stops a run.

`python -m pipeline.data prepare [training flags]` builds the cache ahead of time.
"""

import hashlib
import io
import json
import os
import sys
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import TrainingConfig
from .errors import PipelineError
from .files import staged, write_failure


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Bump when decoding changes what it produces for the same settings: older caches are not reused.
CACHE_VERSION = 3
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20


class SkippedImage(Exception):
    """One image that cannot be used; the message is the reason."""


@dataclass(frozen=True)
class DataSource:
    """What to read: a folder or zip archive (`train_data_dir`), or a `datasets` source (`dataset_name`)."""

    train_data_dir: Optional[str] = None
    dataset_name: Optional[str] = None
    dataset_config_name: Optional[str] = None
    split: str = "train"
    image_column: Optional[str] = None
    cache_dir: Optional[str] = None  # default: HF_DATASETS_CACHE
    max_images: Optional[int] = None  # a random subset of this size, drawn with `seed`
    seed: int = 0
    strict: bool = False  # stop on the first unusable file instead of skipping it
    num_workers: Optional[int] = None  # decoding processes; default: every core for 256 images or more

    @classmethod
    def from_config(cls, config: TrainingConfig) -> "DataSource":
        same_names = ("train_data_dir", "dataset_name", "dataset_config_name", "split", "image_column", "cache_dir")
        return cls(
            **{name: getattr(config, name) for name in same_names},
            max_images=config.max_train_samples,
            seed=config.seed,
            strict=config.strict_data,
            num_workers=config.preprocessing_num_workers,
        )

    @property
    def name(self) -> str:
        return self.train_data_dir if self.train_data_dir is not None else self.dataset_name


@dataclass(frozen=True)
class Preprocessing:
    """How to turn a file into pixels: everything that changes the decoded array, and so the cache key."""

    resolution: int
    channels: int  # 1 (grayscale) or 3 (RGB)
    intermediate_resolution: Optional[int] = None  # resize to this first (the report: 1024 -> 256 -> 64)
    center_crop: bool = True  # scale the short side and crop the centre; False: squash to a square
    min_image_size: int = 0  # skip images whose short side is smaller
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES  # skip files (and archive members) larger than this, unread

    @classmethod
    def from_config(cls, config: TrainingConfig) -> "Preprocessing":
        min_size = config.resolution // 2 if config.min_image_size is None else config.min_image_size
        return cls(
            resolution=config.resolution,
            channels=config.image_channels,
            intermediate_resolution=config.intermediate_resolution,
            center_crop=config.center_crop,
            min_image_size=min_size,
            max_image_bytes=config.max_image_bytes,
        )


@dataclass
class PreparedImages:
    pixels: np.ndarray  # (N, H, W, C) uint8
    summary: dict  # source, counts, skipped images and why, seconds, cache folder


# ---------------------------------------------------------------------------------------------
# Sources: what to decode, and an identity that changes when the source does


@dataclass
class SourceListing:
    """What `open_source` found in a DataSource, before anything is decoded."""

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


def _folder_source(folder: Path, max_image_bytes: int) -> SourceListing:
    """List the image files under `folder`. Whatever cannot be listed or used (a dangling or looping link, a name
    that is not UTF-8, an unreadable subfolder, a file over the size limit) is set aside with its reason."""
    images, ignored, entries = [], [], []

    def unreadable(error: OSError):
        ignored.append(
            (
                readable_name(str(Path(error.filename).relative_to(folder))) + "/",
                f"unreadable folder ({error.strerror})",
            )
        )

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
                ignored.append(
                    (relative, f"too large ({stat.st_size:,} bytes; --max_image_bytes {max_image_bytes:,})")
                )
                continue
            images.append(str(path))
            entries.append((relative, stat.st_size, stat.st_mtime_ns))
    if not images:
        others = f" ({len(ignored)} other files)" if ignored else ""
        raise PipelineError(
            f"train_data_dir: {folder} holds no image files{others}; expected {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    identity = {
        "kind": "folder",
        "path": str(folder.resolve()),
        "files": _files_identity(entries),
        "count": len(images),
    }
    return SourceListing(
        datasets.Dataset.from_dict({"file": images}), identity, f"folder {folder}", ignored=tuple(ignored)
    )


def _zip_source(archive: Path, max_image_bytes: int) -> SourceListing:
    """List the image members of a zip archive; encrypted members and members over the size limit are set aside."""
    try:
        with zipfile.ZipFile(archive) as opened:
            members = sorted((info for info in opened.infolist() if not info.is_dir()), key=lambda info: info.filename)
    except (zipfile.BadZipFile, OSError) as error:
        raise PipelineError(f"train_data_dir: {archive} is not a readable zip archive ({error})") from None
    images, ignored = [], []
    for info in members:
        if Path(info.filename).suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append((info.filename, f"not an image file ({Path(info.filename).suffix or 'no extension'})"))
        elif info.flag_bits & 0x1:
            ignored.append((info.filename, "encrypted archive member"))
        elif info.file_size > max_image_bytes:
            ignored.append(
                (info.filename, f"too large ({info.file_size:,} bytes; --max_image_bytes {max_image_bytes:,})")
            )
        else:
            images.append(info.filename)
    if not images:
        raise PipelineError(
            f"train_data_dir: the archive {archive} holds no usable image files ({len(members)} other files)"
        )
    stat = archive.stat()
    identity = {"kind": "zip", "path": str(archive.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return SourceListing(
        datasets.Dataset.from_dict({"file": images}),
        identity,
        f"archive {archive}",
        archive=str(archive),
        ignored=tuple(ignored),
    )


def load_dataset_source(source: DataSource, streaming: bool = False):
    """`source.dataset_name` as a `datasets.Dataset` (an `IterableDataset` when streaming): a save_to_disk folder,
    a parquet file, or anything `load_dataset` reads."""
    name = source.dataset_name
    verb = "stream" if streaming else "load"
    try:
        if Path(name, "dataset_info.json").is_file() or Path(name, "state.json").is_file():  # a save_to_disk folder
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise PipelineError(f"split: {name} has no split {source.split!r}; it has {', '.join(loaded)}")
                loaded = loaded[source.split]
            return loaded.to_iterable_dataset() if streaming else loaded
        if name.endswith(".parquet"):
            return datasets.load_dataset(
                "parquet", data_files=name, split="train", cache_dir=source.cache_dir, streaming=streaming
            )
        return datasets.load_dataset(
            name, source.dataset_config_name, split=source.split, cache_dir=source.cache_dir, streaming=streaming
        )
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        where = "a local path (relative to the current directory) nor a" if not Path(name).exists() else "a"
        raise PipelineError(
            f"dataset_name: cannot {verb} {name!r}, split {source.split!r}: it is neither {where} readable dataset "
            f"({type(error).__name__}: {error})"
        ) from None


def find_image_column(features: datasets.Features, image_column: Optional[str]) -> str:
    """The configured image column, or the first `datasets.Image` feature."""
    if image_column is not None:
        if image_column not in features:
            raise PipelineError(f"image_column: no column {image_column!r}; the dataset has {', '.join(features)}")
        if not isinstance(features[image_column], datasets.Image):
            raise PipelineError(f"image_column: column {image_column!r} holds {features[image_column]}, not images")
        return image_column
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise PipelineError(
        f"image_column: the dataset has no Image feature (columns: {', '.join(features)}); pass --image_column"
    )


def open_source(source: DataSource, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> SourceListing:
    """List the source without decoding anything. Raises PipelineError when it cannot be used."""
    if source.train_data_dir is not None:
        path = Path(source.train_data_dir)
        if path.is_file() and path.suffix.lower() == ".zip":
            return _zip_source(path, max_image_bytes)
        if not path.is_dir():
            raise PipelineError(f"train_data_dir: {path} is neither a folder of images nor a .zip archive")
        return _folder_source(path, max_image_bytes)
    if source.dataset_name is None:
        raise PipelineError("dataset_name: give a folder, a zip archive or a datasets source")

    loaded = load_dataset_source(source)
    column = find_image_column(loaded.features, source.image_column)
    table = loaded.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    identity = {
        "kind": "dataset",
        "name": source.dataset_name,
        "config": source.dataset_config_name,
        "split": source.split,
        "column": column,
        "fingerprint": loaded._fingerprint,  # datasets' own hash of the data files / revision
    }
    return SourceListing(table, identity, f"dataset {source.dataset_name} ({source.split})", image_column=column)


# ---------------------------------------------------------------------------------------------
# Decoding one image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to "RGB": 16-bit scaled (not clipped), transparency over white, CMYK and palettes to RGB."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.getextrema()[1] > 255):
        values = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
        image = Image.fromarray(values.round().clip(0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _fit(image: Image.Image, size: int, center_crop: bool) -> Image.Image:
    """Make the image size x size: scale the short side and crop the centre, or squash the whole image."""
    if not center_crop:
        return (
            image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
            if image.size != (size, size)
            else image
        )
    width, height = image.size
    scale = size / min(width, height)
    if scale != 1:
        target = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(target, Image.Resampling.BICUBIC, reducing_gap=None)  # antialiased when shrinking
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_uint8_array(image: Image.Image, preprocessing: Preprocessing) -> tuple[np.ndarray, bool]:
    """One image -> (resolution, resolution, channels) uint8, and whether it has colour: EXIF orientation, RGB,
    each resize, then grayscale (PIL's luma, the same numbers as converting first) when channels is 1.
    With channels None (auto) the array stays RGB; the caller decides once every image is seen."""
    image = to_rgb(ImageOps.exif_transpose(image))
    for size in (preprocessing.intermediate_resolution, preprocessing.resolution):
        if size is not None:
            image = _fit(image, size, preprocessing.center_crop)
    pixels = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    colour = not ((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())
    if preprocessing.channels == 1:
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
    return pixels, colour


_open_archives: dict[tuple[str, int], zipfile.ZipFile] = {}
# What reading one archive member can raise besides OSError: a bad CRC or header, a compression
# method zipfile lacks, a truncated or corrupt compressed stream, a password it does not have.
ARCHIVE_MEMBER_ERRORS = (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError, RuntimeError)


def _too_large(size: int, max_bytes: int) -> SkippedImage:
    return SkippedImage(f"too large ({size:,} bytes; --max_image_bytes {max_bytes:,})")


def read_bytes(file: Optional[str], entry: Optional[dict], archive: Optional[str], max_bytes: int) -> bytes:
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


def decode_image(data: bytes, preprocessing: Preprocessing) -> tuple[np.ndarray, bool]:
    """Bytes of one image file -> (uint8 array, whether it has colour); raises SkippedImage with the reason it
    cannot be used."""
    if not data:
        raise SkippedImage("empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if min(image.size) < preprocessing.min_image_size:
                raise SkippedImage(
                    f"too small ({image.width}x{image.height}; the minimum side is {preprocessing.min_image_size})"
                )
            if image.format == "JPEG":
                # Let libjpeg scale by 1/2, 1/4 or 1/8 while decoding, keeping at least twice the first
                # target size: a 1024 -> 64 decode is about 5x faster and the final resize still antialiases.
                target = 2 * max(preprocessing.resolution, preprocessing.intermediate_resolution or 0)
                image.draft(image.mode, (target, target))
            image.load()
            return to_uint8_array(image, preprocessing)
    except UnidentifiedImageError:
        raise SkippedImage("not a readable image") from None
    except Image.DecompressionBombError as error:
        raise SkippedImage(f"too large ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise SkippedImage(f"corrupt or truncated ({error})") from None


def decoded_channels(preprocessing: Preprocessing) -> int:
    """Channels of the arrays decode_image returns: RGB while the count is still to be decided (auto)."""
    return preprocessing.channels or 3


def _decode_batch(batch: dict, indices: list, archive, image_column, preprocessing: Preprocessing) -> dict:
    size, channels = preprocessing.resolution, decoded_channels(preprocessing)
    pixels, colours, errors, files = [], [], [], []
    for position, index in enumerate(indices):
        entry = batch[image_column][position] if image_column else None
        file = batch["file"][position] if image_column is None else ((entry or {}).get("path") or f"row {index}")
        try:
            if image_column is not None and entry is None:
                raise SkippedImage("empty row (no image)")
            image, colour = decode_image(
                read_bytes(file, entry, archive, preprocessing.max_image_bytes), preprocessing
            )
            pixels.append(image)
            colours.append(colour)
            errors.append("")
        except (SkippedImage, OSError) as error:  # OSError: the file vanished or cannot be read
            pixels.append(np.zeros((size, size, channels), dtype=np.uint8))
            colours.append(False)
            errors.append(str(error) or type(error).__name__)
        files.append(file)
    return {"pixels": pixels, "colour": colours, "error": errors, "file": files}


# ---------------------------------------------------------------------------------------------
# Decode once, cache, report


def cache_folder(source: DataSource, listed: SourceListing, preprocessing: Preprocessing) -> Path:
    """Where the decoded images of this source and these settings live."""
    subset = {"max_train_samples": source.max_images, "seed": source.seed if source.max_images else None}
    key = json.dumps(
        {"version": CACHE_VERSION, "source": listed.identity, "settings": asdict(preprocessing), **subset},
        sort_keys=True,
    )
    root = Path(source.cache_dir) if source.cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    return root / "ddpm_images" / hashlib.sha256(key.encode()).hexdigest()[:20]


def prepare_images(source: DataSource, preprocessing: Preprocessing) -> PreparedImages:
    """Decode `source` once into (N, H, W, C) uint8 with `preprocessing`, or read the cache of an earlier run."""
    started = time.perf_counter()
    try:
        listed = open_source(source, preprocessing.max_image_bytes)
        folder = cache_folder(source, listed, preprocessing)
        if (folder / "summary.json").is_file() and (folder / "pixels.npy").is_file():
            summary = json.loads((folder / "summary.json").read_text())
            prepared = PreparedImages(np.load(folder / "pixels.npy", mmap_mode="r"), {**summary, "from_cache": True})
        else:
            prepared = _decode_source(source, listed, preprocessing, folder)
    except Exception as error:  # the datasets library's cache or ours could not be written
        reason = write_failure(error)
        if reason is None:
            raise
        root = source.cache_dir or datasets.config.HF_DATASETS_CACHE
        raise PipelineError(
            f"cache_dir: cannot write the data cache under {root} ({reason}); nothing half-written is kept: free "
            "some space there, or pass --cache_dir on a disk with room"
        ) from None
    prepared.summary.update(cache=str(folder), seconds=round(time.perf_counter() - started, 2))
    if source.strict and prepared.summary["files_skipped"]:
        raise PipelineError(
            f"strict_data: {listed.description} has files that cannot be used; {describe_skipped(prepared.summary)}"
        )
    return prepared


def prepare_training_images(config: TrainingConfig) -> PreparedImages:
    """The training data of `config`, decoded once."""
    return prepare_images(DataSource.from_config(config), Preprocessing.from_config(config))


def _decode_source(
    source: DataSource, listed: SourceListing, preprocessing: Preprocessing, folder: Path
) -> PreparedImages:
    """Decode (a subset of) the source in parallel; write the cache folder whole or not at all."""
    table = listed.table
    if source.max_images is not None and source.max_images < len(table):
        picked = np.random.default_rng(source.seed).choice(len(table), size=source.max_images, replace=False)
        table = table.select(np.sort(picked))
    size, channels = preprocessing.resolution, decoded_channels(preprocessing)
    workers = source.num_workers or (len(os.sched_getaffinity(0)) if len(table) >= 256 else 1)
    check_memory(len(table), size, channels)
    with staged(folder, folder=True) as staging:
        decoded = table.map(
            _decode_batch,
            with_indices=True,
            batched=True,
            batch_size=64,
            fn_kwargs={"archive": listed.archive, "image_column": listed.image_column, "preprocessing": preprocessing},
            remove_columns=table.column_names,
            features=datasets.Features(
                {
                    "pixels": datasets.Array3D(shape=(size, size, channels), dtype="uint8"),
                    "colour": datasets.Value("bool"),
                    "error": datasets.Value("string"),
                    "file": datasets.Value("string"),
                }
            ),
            num_proc=workers if workers > 1 else None,
            cache_file_name=str(staging / "decoded.arrow"),
            new_fingerprint=folder.name,
            desc=f"Decoding {len(table):,} images to {size}x{size}x{preprocessing.channels or 'auto'}",
        )
        errors = list(decoded["error"])
        keep = np.array([error == "" for error in errors], dtype=bool)
        colour_images = int(np.asarray(decoded["colour"], dtype=bool)[keep].sum())
        # Straight from Arrow: the numpy formatter would widen uint8 to int64 (8x the memory).
        column = decoded.data.column("pixels")
        pixels = np.concatenate([chunk.to_numpy(zero_copy_only=False) for chunk in column.chunks])[keep]
        if preprocessing.channels is None and colour_images == 0:  # auto, and every image is grayscale
            pixels, channels = np.ascontiguousarray(pixels[..., :1]), 1
        skipped = list(listed.ignored) + [(file, error) for file, error in zip(decoded["file"], errors) if error]
        del decoded, column
        summary = {
            "source": listed.description,
            "images_found": len(listed.table),
            "images_decoded": len(table),
            "images_kept": int(keep.sum()),
            "files_skipped": len(skipped),
            "skipped_by_reason": dict(Counter(reason.split(" (")[0] for _, reason in skipped)),
            "skipped_examples": [f"{file}: {reason}" for file, reason in skipped[:20]],
            "resolution": size,
            "channels": channels,
            "colour_images": colour_images,
        }
        if len(pixels) == 0:
            raise PipelineError(
                f"{listed.description}: none of its {len(table)} images could be used; {describe_skipped(summary)}"
            )
        np.save(staging / "pixels.npy", pixels)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for shard in staging.glob("*.arrow"):
            shard.unlink()
    return PreparedImages(pixels, {**summary, "from_cache": False})


def check_memory(count: int, size: int, channels: int) -> None:
    """Before decoding: the decoded images must fit in this machine's memory (they are held there, and on the
    training device); above 1 GiB the size is said first."""
    needed = count * size * size * channels
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > total:
        raise PipelineError(
            f"resolution: {count:,} images at {size}x{size}x{channels} take {needed / 2**30:,.1f} GiB decoded, more "
            f"than this machine's {total / 2**30:,.1f} GiB of memory; lower --resolution or --max_train_samples, or "
            "stream the source (--streaming)"
        )
    if needed > 2**30:
        print(f"Decoding {count:,} images at {size}x{size}: {needed / 2**30:,.1f} GiB in memory", file=sys.stderr)


def describe_skipped(summary: dict, limit: int = 5) -> str:
    """How many files were skipped, why, and the first few of them."""
    reasons = ", ".join(f"{reason} ({count})" for reason, count in summary["skipped_by_reason"].items())
    examples = "".join(f"\n  {example}" for example in summary["skipped_examples"][:limit])
    more = summary["files_skipped"] - min(limit, len(summary["skipped_examples"]))
    return f"skipped {summary['files_skipped']} file(s): {reasons}{examples}" + (
        f"\n  ... and {more} more" if more > 0 else ""
    )


def describe_prepared(summary: dict) -> str:
    """One paragraph for the log: what was kept, what was skipped and why, how long it took."""
    where = "read from the cache" if summary["from_cache"] else "decoded"
    text = (
        f"Data: {summary['images_kept']:,} images of "
        f"{summary['resolution']}x{summary['resolution']}x{summary['channels']} from {summary['source']}, {where} in "
        f"{summary['seconds']:.1f} s"
    )
    if summary["channels"] == 1 and summary.get("colour_images"):
        text += f"; {summary['colour_images']:,} colour images converted to grayscale (--image_channels 1)"
    return text + (f"; {describe_skipped(summary)}" if summary["files_skipped"] else "")


if __name__ == "__main__":
    from pipeline.commands import data_main  # the command line lives in pipeline/commands.py

    data_main()
