"""FID and KID of a saved pipeline (or a folder of samples) against a reference, with clean-fid's Inception.

    python -m pipeline.evaluate reference --model ddpm-quickstart --dataset_name data/fashion_mnist --output ref.npz
    python -m pipeline.evaluate fid --model ddpm-quickstart --reference ref.npz --sampler dpmsolver++ --steps 20

Everything goes through one path: images as (N, H, W, C) uint8 arrays (checked), resized to
299x299 exactly as clean-fid resizes in the chosen mode, Inception features in float64, then the
Frechet distance from the features' statistics. The reference is read through the training data
loader at the model's resolution, so it is preprocessed exactly like the training images.
"""

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import scipy.linalg
import torch
from PIL import Image
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .config import FID_MODES as MODES
from .config import TrainingConfig
from .data import DataSource, Preprocessing, describe_skipped, prepare_images
from .errors import EvalError, exit_on_error
from .files import FILE, read_json, refuse_foreign, staged, write_json
from .record import RECORD_NAME, read_record
from .sample import (
    SamplingRequest,
    add_sampling_arguments,
    image_grid,
    sample_images,
    sample_unet,
    sampling_request,
    to_uint8,
)


# The weights clean-fid loads in each mode: file name, where clean-fid looks for it, where it downloads it from.
INCEPTION_FILES = {
    "clean": "inception-2015-12-05.pt",
    "legacy_pytorch": "pt_inception-2015-12-05-6726825d.pth",
}
INCEPTION_URLS = {
    "clean": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    "legacy_pytorch": "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
}
# SHA-256 of pytorch-fid's published file (its name carries the first 8 hex digits, torch.hub's convention).
LEGACY_INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FEATURE_DIM = 2048

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Inception weights, found or fetched, and clean-fid's feature extractor built from them


def default_weights_path(mode: str) -> Path:
    """Where clean-fid itself looks for the weights of `mode`."""
    if mode == "clean":
        return Path("/tmp") / INCEPTION_FILES[mode]
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILES[mode]


def find_weights(mode: str, weights: Optional[str] = None, url: Optional[str] = None) -> Path:
    """The Inception weights file for `mode`: the one given, or clean-fid's own, downloaded once if missing.

    A download goes to a temporary name first, so an interrupted one never leaves a corrupt file behind.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise EvalError(
                f"inception_weights: no file at {path} (mode {mode} needs {INCEPTION_FILES[mode]} from "
                f"{INCEPTION_URLS[mode]})"
            )
        return path
    path = default_weights_path(mode)
    if path.is_file():
        return path
    url = url or INCEPTION_URLS[mode]
    try:
        with staged(path) as partial:
            if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", "no", ""):
                raise OSError("HF_HUB_OFFLINE is set, so no download was tried")
            with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as file:
                shutil.copyfileobj(response, file)
    except (urllib.error.URLError, OSError) as error:
        raise EvalError(
            f"the Inception weights for mode {mode!r} are not at {path} and could not be downloaded from {url} "
            f"({type(error).__name__}: {getattr(error, 'reason', error)}). On a machine with network, download that "
            f"file and either put it at {path} or pass --inception_weights PATH."
        ) from None
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unusable_weights(path: Path, mode: str, error: Exception) -> EvalError:
    first = str(error).splitlines()[0] if str(error) else ""
    return EvalError(
        f"inception_weights: {path} is not a usable {INCEPTION_FILES[mode]} ({type(error).__name__}: {first}); delete "
        f"it and download {INCEPTION_URLS[mode]} again"
    )


def load_legacy_weights(path: Path) -> dict:
    """pytorch-fid's Inception state dict, read without running code from the file: `torch.load(weights_only=True)`
    accepts tensors and containers only. A file that loads but is not the published one gets a warning."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for code or unknown classes, RuntimeError/EOFError for a damaged file
        raise unusable_weights(path, "legacy_pytorch", error) from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise EvalError(
            f"inception_weights: {path} holds no state dict of tensors; download {INCEPTION_URLS['legacy_pytorch']} "
            "again"
        )
    digest = file_sha256(path)
    if digest != LEGACY_INCEPTION_SHA256:
        warnings.warn(
            f"{path} is not the published {INCEPTION_FILES['legacy_pytorch']} (SHA-256 {digest[:16]}..., expected "
            f"{LEGACY_INCEPTION_SHA256[:16]}...): its FID values are not comparable with other work"
        )
    return state


@contextlib.contextmanager
def _clean_fid_loads(state: dict):
    """clean-fid's pytorch Inception (mode legacy_pytorch) fetches its weights with torch.hub's loader, which unpickles
    with weights_only=False; inside this block it receives the state dict already loaded safely instead."""
    from cleanfid import inception_pytorch

    original = inception_pytorch.load_state_dict_from_url
    inception_pytorch.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        yield
    finally:
        inception_pytorch.load_state_dict_from_url = original


def build_inception(mode: str, weights: Path, device: str = "cpu") -> FeatureFn:
    """clean-fid's Inception feature extractor for `mode`, loaded from `weights`, checked on two images."""
    from cleanfid.features import build_feature_extractor

    try:
        if mode == "clean":
            from cleanfid.inception_torchscript import InceptionV3W

            with tempfile.TemporaryDirectory() as folder:  # the file name clean-fid looks for: a link, nothing copied
                (Path(folder) / INCEPTION_FILES[mode]).symlink_to(weights.resolve())
                network = InceptionV3W(folder, download=False).to(device).eval()  # TorchScript, not a pickle

            def extract(batch):
                return network(batch)

        else:
            with _clean_fid_loads(load_legacy_weights(weights)):
                extract = build_feature_extractor(mode, torch.device(device), use_dataparallel=False)
        ramp = torch.linspace(0, 255, 299, device=device).expand(3, 299, 299)
        with torch.no_grad():
            probe = extract(torch.stack([torch.zeros_like(ramp), ramp]))  # a black image and a horizontal ramp
    except EvalError:
        raise
    except Exception as error:  # torch.jit raises many types for a bad file
        raise unusable_weights(weights, mode, error) from None
    if tuple(probe.shape) != (2, FEATURE_DIM):
        raise EvalError(
            f"inception_weights: {weights} gives features of shape {tuple(probe.shape[1:])}, not ({FEATURE_DIM},)"
        )
    if not bool(torch.isfinite(probe).all() & (probe >= 0).all()):  # Inception's pool3 averages ReLU outputs
        raise EvalError(
            f"inception_weights: {weights} gives negative or non-finite features, which Inception's pool3 (an "
            f"average of ReLU outputs) cannot: it is not {INCEPTION_FILES[mode]}; download {INCEPTION_URLS[mode]}"
        )
    return extract


def inception_extractor(mode: str, weights: Optional[str] = None, device: str = "cpu") -> tuple[FeatureFn, str]:
    """clean-fid's Inception for `mode` and the name results record it under, which names the weights file by its
    SHA-256: features (and references) of two different files never compare as the same extractor's."""
    path = find_weights(mode, weights)
    extract = build_inception(mode, path, device)
    return extract, f"clean-fid Inception-V3 ({INCEPTION_FILES[mode]}, SHA-256 {file_sha256(path)[:16]})"


# ---------------------------------------------------------------------------------------------
# Features and statistics


def check_images(images: np.ndarray, what: str = "images") -> None:
    """Only (N, H, W, C) uint8 with C = 1 or 3 may reach the feature extractor: a channel-first array
    or floats in [-1, 1] would give a plausible but wrong FID, so they are refused here."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise EvalError(f"{what}: expected a uint8 array (values 0-255), got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise EvalError(f"{what}: expected shape (N, H, W, C) with C = 1 or 3 (channel-last), got {images.shape}")
    if images.shape[0] < 2:
        raise EvalError(f"{what}: at least 2 images are needed for a covariance, got {images.shape[0]}")


def inception_input(images: np.ndarray, mode: str) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 3, 299, 299) in [0, 255], resized exactly as clean-fid resizes in `mode`."""
    from cleanfid.resize import build_resizer

    resize = build_resizer(mode)
    resized = []
    for image in images:
        # clean-fid reads files with .convert("RGB")
        rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
        resized.append(np.asarray(resize(rgb), dtype=np.float32).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(resized))


def extract_features(
    images: np.ndarray,
    feature_fn: FeatureFn,
    mode: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    description: str = "features",
) -> np.ndarray:
    """Features (N, D) in float64 of uint8 (N, H, W, C) images."""
    check_images(images, description)
    if mode not in MODES:
        raise EvalError(f"mode: choose one of {', '.join(MODES)}, not {mode!r}")
    features = []
    for start in tqdm(range(0, len(images), batch_size), desc=description, unit="batch"):
        batch = inception_input(images[start : start + batch_size], mode).to(device)
        with torch.no_grad():
            features.append(feature_fn(batch).double().cpu().numpy())
    return np.concatenate(features)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance, in float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_factor(matrix: np.ndarray) -> np.ndarray:
    """F (n x rank) with F F^T = matrix, for a symmetric positive semi-definite matrix: LAPACK's pivoted Cholesky
    (dpstrf), which stops at the matrix's numerical rank: rank-deficient covariances (fewer samples than dimensions)
    work."""
    factor, pivots, rank, info = scipy.linalg.lapack.dpstrf(matrix, lower=1)
    if info < 0:
        raise EvalError(f"covariance: LAPACK dpstrf rejected argument {-info}")
    result = np.zeros((len(matrix), rank))
    result[pivots - 1] = np.tril(factor)[:, :rank]  # P^T A P = L L^T, so A = (P L)(P L)^T
    return result


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, blas_threads=None
) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2), in float64.

    Tr((S1 S2)^1/2) is the sum of the square roots of the eigenvalues of S1 S2, which are those of
    the symmetric positive semi-definite F^T S2 F for any factor S1 = F F^T. F comes from a pivoted
    Cholesky factorisation and only eigenvalues are computed: about 0.5 s at 2048 dimensions on
    2 cores, and still about 1 s with the cores oversubscribed by another job, where an
    eigendecomposition with eigenvectors (or scipy's sqrtm, about 50 s even when idle) slows down
    to half a minute (bench/bench_frechet.py). Eigenvalues below zero are rounding error and count as 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise EvalError(
            f"statistics of different sizes: mean {mu1.shape} vs {mu2.shape}, covariance {sigma1.shape} vs "
            f"{sigma2.shape}"
        )
    for name, value in (("mean", mu1), ("covariance", sigma1), ("mean", mu2), ("covariance", sigma2)):
        if not np.isfinite(value).all():
            raise EvalError(f"statistics: the {name} holds NaN or infinite values")
    # `blas_threads` limits the BLAS pool (None: all cores, no thread-pool lookup). One thread was tried against
    # oversubscription by another job or the training process's own OpenMP pool: on the 2-core Xeon, natively and
    # capped at AVX2, it was 0-30% slower than all threads, idle, after torch work and loaded alike
    # (bench/bench_frechet.py), so the default is all threads.
    with threadpool_limits(limits=blas_threads, user_api="blas") if blas_threads else nullcontext():
        factor = _psd_factor(sigma1)
        middle = factor.T @ sigma2 @ factor
        eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, seed: int = 0) -> float:
    """clean-fid's KID (unbiased MMD^2, cubic polynomial kernel, 100 subsets of up to 1000), with its
    random subsets drawn from `seed` so that the number is reproducible."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(features1, features2))
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------------------------------------------
# Reference statistics: from a data source through the training loader, or saved earlier


def reference_preprocessing(model_dir: Optional[Path], resolution: int, channels: int) -> Preprocessing:
    """The model's resolution and channels, with the training run's resizing (intermediate size, crop) when its
    record is there: reference images are made exactly as the training images were."""
    record = model_dir / RECORD_NAME if model_dir is not None else None
    if record is None or not record.is_file():
        return Preprocessing(resolution, channels)
    trained = Preprocessing.from_config(read_record(record).config)
    return replace(trained, resolution=resolution, channels=channels, min_image_size=0)


def reference_source(args: argparse.Namespace) -> DataSource:
    """The --reference_* flags as a data source."""
    if (args.reference_data_dir is None) == (args.reference_dataset is None):
        raise EvalError(
            "reference: give exactly one of --reference_data_dir and --reference_dataset (or --reference stats.npz)"
        )
    return DataSource(
        args.reference_data_dir,
        args.reference_dataset,
        split=args.reference_split,
        max_images=args.reference_max_images,
    )


def reference_images(source: DataSource, preprocessing: Preprocessing) -> tuple[np.ndarray, dict]:
    """The reference images as uint8 (N, H, W, C) and what was read, through the training data loader."""
    prepared = prepare_images(source, preprocessing)
    summary = prepared.summary
    description = {
        "source": source.name,
        "split": None if source.train_data_dir else source.split,
        "images": int(len(prepared.pixels)),
        "files_skipped": summary.get("files_skipped", 0),
        "resolution": preprocessing.resolution,
        "intermediate_resolution": preprocessing.intermediate_resolution,
        "center_crop": preprocessing.center_crop,
    }
    if summary.get("files_skipped"):
        print(f"reference: {describe_skipped(summary)}", file=sys.stderr)
    return np.asarray(prepared.pixels), description


def encode_reference(
    args: argparse.Namespace, model_dir: Optional[Path], resolution: int, channels: int, feature_fn: FeatureFn
):
    """The --reference_* source's features (float64) and description, read at `resolution` through the data loader."""
    pixels, description = reference_images(
        reference_source(args), reference_preprocessing(model_dir, resolution, channels)
    )
    features = extract_features(
        pixels, feature_fn, args.mode, batch_size=args.feature_batch_size, device=args.device,
        description="reference features",
    )  # fmt: skip
    return features, description


def save_reference(path: Path, features: np.ndarray, meta: dict) -> None:
    """Mean, covariance, features (for KID) and a description, in one .npz written whole or not at all."""
    mu, sigma = statistics(features)
    with staged(path) as partial, open(partial, "wb") as file:
        np.savez(file, mu=mu, sigma=sigma, features=features.astype(np.float32), meta=json.dumps(meta))


MAX_NPZ_BYTES = 2**32  # 4 GiB: 10^6 reference images' 2048 float32 features is 8 GiB; 10^5 (ten times FID's 50k) fits
MAX_DEFLATE_RATIO = 20  # float features deflate by about 1.1x; a member that inflates by more is mostly padding


def check_npz_sizes(path: Path) -> None:
    """Each array of an .npz holds no more data than its member's size, a compressed member inflates by at most
    MAX_DEFLATE_RATIO, and all of them together hold at most MAX_NPZ_BYTES: a header or a zip entry that claims more
    (10^9 x 2048 features, or 2 GiB of zeros in 2 MB) would make NumPy allocate it before noticing. Raises
    ValueError."""
    with zipfile.ZipFile(path) as archive:
        total = sum(info.file_size for info in archive.infolist())
        if total > MAX_NPZ_BYTES:
            raise ValueError(f"its arrays hold {total:,} bytes, more than the {MAX_NPZ_BYTES:,} statistics may hold")
        for info in archive.infolist():
            if info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 2**20:
                raise ValueError(
                    f"{info.filename} inflates from {info.compress_size:,} to {info.file_size:,} bytes (more than "
                    f"{MAX_DEFLATE_RATIO}x): not statistics this pipeline wrote"
                )
            with archive.open(info) as member:
                major, _ = np.lib.format.read_magic(member)
                read_header = (
                    np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(member)
                claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if claimed > info.file_size:
                    raise ValueError(f"{info.filename} claims {claimed:,} bytes in a {info.file_size:,}-byte member")


def check_reference(reference: dict, where, mode: str, extractor: str, resolution: Optional[int] = None) -> None:
    """Reference statistics fit an evaluation: the same feature extractor, the same clean-fid mode, and (when
    known) the same image resolution."""
    if reference.get("mode") != mode or reference.get("feature_extractor") != extractor:
        raise EvalError(
            f"{where} holds {reference.get('feature_extractor')} features in mode {reference.get('mode')}, this "
            f"evaluation uses {extractor} in mode {mode}"
        )
    if resolution is not None and reference.get("resolution") not in (None, resolution):
        raise EvalError(f"{where}: its images are {reference.get('resolution')} px, the model's {resolution} px")


def load_reference(path: Path) -> tuple[np.ndarray, dict]:
    """Features and description of statistics saved by `reference`, checked: at least 2 rows of finite numbers."""
    if not path.is_file():
        raise EvalError(f"reference: no file at {path}")
    try:
        check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as stored:
            features, meta = stored["features"].astype(np.float64), json.loads(str(stored["meta"]))
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, RecursionError) as error:
        raise EvalError(
            f"reference: {path} is not a statistics file written by `python -m pipeline.evaluate reference` ({error})"
        ) from None
    if features.ndim != 2 or len(features) < 2:
        raise EvalError(
            f"reference: {path} holds features of shape {features.shape}; at least 2 rows are needed for a covariance"
        )
    if not np.isfinite(features).all():
        raise EvalError(f"reference: {path} holds NaN or infinite features; encode the reference again")
    if not isinstance(meta, dict):
        raise EvalError(f"reference: {path} has no description (meta); encode the reference again")
    return features, meta


# ---------------------------------------------------------------------------------------------
# Generated images


def read_samples(folder: Path) -> tuple[np.ndarray, dict]:
    """A folder written by `python -m pipeline.sample`: its numbered PNGs as uint8 (N, H, W, C) and samples.json."""
    if not (folder / "samples.json").is_file():
        raise EvalError(f"samples: {folder} has no samples.json; write it with `python -m pipeline.sample`")
    info = read_json(folder / "samples.json", EvalError)
    for key in ("model", "sampler", "steps", "num_images"):
        if key not in info:
            raise EvalError(
                f"{folder / 'samples.json'}: has no {key!r}; write the folder with `python -m pipeline.sample`"
            )
    files = sorted(folder.glob("[0-9]*.png"))
    if len(files) != info["num_images"]:
        raise EvalError(f"samples: {folder} holds {len(files)} numbered PNGs, samples.json says {info['num_images']}")
    pixels = []
    for file in files:
        try:
            with Image.open(file) as image:
                pixel = np.asarray(image)
        except (OSError, Image.DecompressionBombError) as error:  # not an image, truncated, or a bomb
            raise EvalError(f"samples: {file} is not a readable image ({error})") from None
        pixels.append(pixel[..., None] if pixel.ndim == 2 else pixel)
        if pixels[-1].shape != pixels[0].shape or pixels[-1].dtype != np.uint8:
            raise EvalError(
                f"samples: {file} is {pixels[-1].shape} {pixels[-1].dtype}, {files[0].name} {pixels[0].shape} uint8"
            )
    return np.stack(pixels), info


EVAL_LAYOUT = {"metrics.json": FILE, "samples-*.png": FILE}  # what the fid command writes into its folder


def check_metrics_folder(output: Path, model: str) -> None:
    """Before any work: the fid command writes only into a folder of its own (EVAL_LAYOUT), and inside a model's
    folder only for that model (its card shows what that folder's eval/ holds)."""
    refuse_foreign(output, EVAL_LAYOUT, EvalError, "metrics or grids of this command", "pass another --output_dir")
    owner = next(
        (folder for folder in output.resolve().parents if (folder / "model_index.json").is_file()
         or (folder / RECORD_NAME).is_file()),
        None,
    )  # fmt: skip
    if owner is not None and not (Path(model).is_dir() and Path(model).resolve() == owner):
        raise EvalError(
            f"output_dir: {output} is inside {owner}, the folder of another model than {model}, whose card and "
            "metrics would then show this one's numbers; pass an --output_dir of its own"
        )


def metrics_path(args: argparse.Namespace, model: str) -> Path:
    """Where the `fid` command records: --output_dir, else the model folder's eval/, else ./eval."""
    output = (
        Path(args.output_dir) if args.output_dir else Path(model) / "eval" if Path(model).is_dir() else Path("eval")
    )
    return output / "metrics.json"


def read_metrics(path: Path) -> list:
    """The entries of an eval/metrics.json (none when there is no file), checked before any work is done."""
    if not path.exists():
        return []
    results = read_json(path, EvalError).get("results")
    if not isinstance(results, list) or not all(isinstance(entry, dict) for entry in results):
        raise EvalError(f"{path}: 'results' must be a list of objects; move the file aside to start a new one")
    return results


def append_metrics(path: Path, result: dict, existing: list) -> None:
    """eval/metrics.json keeps one entry per (sampler, steps, images, seed, reference, mode); a rerun replaces it."""
    key_fields = "model sampler steps eta solver_order num_samples seed reference mode feature_extractor".split()
    kept = [entry for entry in existing if any(entry.get(name) != result.get(name) for name in key_fields)]
    write_json(path, {"results": kept + [result]})


def evaluate(
    args: argparse.Namespace, feature_fn: Optional[FeatureFn] = None, feature_name: Optional[str] = None
) -> dict:
    """The `fid` command: generate (or read) samples, extract features, compare with the reference, record.

    `feature_fn` replaces Inception (as clean-fid's custom_feat_extractor does); the CLI always uses Inception.
    """
    started = time.perf_counter()
    request = sampling_request(args, args.model) if args.samples is None else None  # checked before any loading
    if feature_fn is None:
        feature_fn, feature_name = inception_extractor(args.mode, args.inception_weights, args.device)

    # Saved reference statistics are read and checked before any sampling
    if args.reference is not None:
        reference_features, reference = load_reference(Path(args.reference))
        reference = {**reference, "statistics_file": Path(args.reference).name}
        check_reference(reference, f"reference: {args.reference}", args.mode, feature_name)

    # The samples: generated here, or a folder from pipeline.sample; either way with what was run. The metrics file
    # they go to is read first, so a bad one stops the command before the work
    if args.samples is not None:
        images, info = read_samples(Path(args.samples))
    elif args.model is None:
        raise EvalError("model: pass --model (a saved pipeline) or --samples (a folder from pipeline.sample)")
    model = info["model"] if args.samples is not None else args.model
    path = metrics_path(args, model)
    check_metrics_folder(path.parent, model)
    existing = read_metrics(path)
    if args.samples is None:
        images, info = sample_images(args.model, request)
    sample_features = extract_features(
        images, feature_fn, args.mode, batch_size=args.feature_batch_size, device=args.device,
        description="sample features",
    )  # fmt: skip

    # Or the reference is a data source, read at the samples' resolution
    if args.reference is None:
        model_dir = Path(model) if Path(model).is_dir() else None
        reference_features, reference = encode_reference(args, model_dir, images.shape[1], images.shape[3], feature_fn)
        reference = {**reference, "mode": args.mode, "feature_extractor": feature_name}
    check_reference(reference, "reference", args.mode, feature_name, images.shape[1])

    fid = frechet_distance(*statistics(sample_features), *statistics(reference_features))
    kid = kernel_inception_distance(sample_features, reference_features, seed=args.seed)
    result = {
        "model": Path(model).name if Path(model).is_dir() else model,  # a local path's name only: the file is pushed
        "fid": round(fid, 4),
        "kid": round(kid, 6),
        "num_samples": int(len(images)),
        "num_reference": int(len(reference_features)),
        **{
            key: info.get(key)
            for key in ("sampler", "steps", "eta", "solver_order", "model_evaluations_per_image", "seed")
        },
        "reference": reference,
        "mode": args.mode,
        "feature_extractor": feature_name,
        "clean_fid_version": importlib.metadata.version("clean-fid"),
        "device": args.device,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    output = path.parent
    append_metrics(path, result, existing)
    image_grid(images[:64].astype(np.float32) / 255).save(output / f"samples-{info['sampler']}-{info['steps']}.png")
    model_dir = output.parent
    if (
        output.name == "eval"
        and (model_dir / "training_config.json").is_file()
        and (model_dir / "README.md").is_file()
    ):
        from .hub import write_card

        write_card(model_dir)  # the card shows the new numbers
    return result


def make_reference(
    args: argparse.Namespace, feature_fn: Optional[FeatureFn] = None, feature_name: Optional[str] = None
) -> dict:
    """The `reference` command: encode a data source once and save its statistics."""
    if Path(args.output).exists():
        try:
            load_reference(Path(args.output))
        except EvalError:
            raise EvalError(
                f"output: {args.output} exists and is not reference statistics of this command; choose another path"
            ) from None
    if feature_fn is None:
        feature_fn, feature_name = inception_extractor(args.mode, args.inception_weights, args.device)
    if args.model is not None:
        model_dir = Path(args.model)
        unet_config = model_dir / "unet" / "config.json"
        if not unet_config.is_file():
            raise EvalError(
                f"model: {unet_config} not found; pass a training output folder, or --resolution and --channels"
            )
        unet = json.loads(unet_config.read_text())
        resolution, channels = unet["sample_size"], unet["in_channels"]
    elif args.resolution is not None:
        model_dir, resolution, channels = None, args.resolution, args.channels
    else:
        raise EvalError("reference: pass --model (its resolution is used) or --resolution and --channels")
    features, description = encode_reference(args, model_dir, resolution, channels, feature_fn)
    meta = {
        **description,
        "mode": args.mode,
        "feature_extractor": feature_name,
        "clean_fid_version": importlib.metadata.version("clean-fid"),
    }
    save_reference(Path(args.output), features, meta)
    return meta


class TrainingFid:
    """FID during training (--fid_steps): a small, fast-sampled FID against saved reference statistics.

    Built before training starts, so a missing reference or missing weights stop the run before any work.
    """

    def __init__(self, config: TrainingConfig, device):
        self.config, self.device = config, str(device)
        features, meta = load_reference(Path(config.fid_reference))
        self.feature_fn, self.feature_name = inception_extractor(
            config.fid_mode, config.inception_weights, self.device
        )
        check_reference(
            meta, f"fid_reference: {config.fid_reference}", config.fid_mode, self.feature_name, config.resolution
        )
        self.reference = statistics(features)

    def __call__(self, unet, scheduler_config: dict) -> float:
        config = self.config
        request = SamplingRequest(
            config.fid_sampler, config.fid_inference_steps, config.fid_num_images, config.num_grid_images, config.seed
        )
        images = sample_unet(unet, scheduler_config, request)
        features = extract_features(
            to_uint8(images), self.feature_fn, config.fid_mode, device=self.device, description="FID features"
        )
        return frechet_distance(*statistics(features), *self.reference)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--mode", default="clean", choices=MODES, help="clean-fid mode: how images are resized to 299x299."
    )
    common.add_argument(
        "--inception_weights", help="The Inception weights file, when it cannot be downloaded to clean-fid's place."
    )
    common.add_argument("--feature_batch_size", type=int, default=64)
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--reference_data_dir", help="Reference images: a folder or .zip (as --train_data_dir).")
    source.add_argument(
        "--reference_dataset",
        help="Reference images: a Hub dataset, save_to_disk folder or .parquet (as --dataset_name).",
    )
    source.add_argument("--reference_split", default="train")
    source.add_argument(
        "--reference_max_images", type=int, help="A seeded random subset of the reference of this size."
    )

    fid = commands.add_parser(
        "fid", parents=[common, source], help="FID and KID of a model's samples against a reference."
    )
    fid.add_argument("--model", help="Training output folder or Hub id to sample from.")
    fid.add_argument("--samples", help="Instead of --model: a folder written by `python -m pipeline.sample`.")
    fid.add_argument("--reference", help="Reference statistics (.npz) written by the `reference` command.")
    fid.add_argument("--output_dir", help="Where metrics.json goes (default: <model>/eval).")
    add_sampling_arguments(fid, num_images=10_000, batch_size=256)

    reference = commands.add_parser(
        "reference", parents=[common, source], help="Encode reference images once; save their statistics."
    )
    reference.add_argument("--model", help="Take the resolution and channels from this training output folder.")
    reference.add_argument("--resolution", type=int)
    reference.add_argument("--channels", type=int, default=3, choices=(1, 3))
    reference.add_argument("--output", required=True, help="The .npz to write.")
    reference.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.command == "fid":
        given = [name for name in ("reference", "reference_data_dir", "reference_dataset") if getattr(args, name)]
        if len(given) != 1:
            parser.error("give exactly one of --reference, --reference_data_dir, --reference_dataset")
        if (args.model is None) == (args.samples is None):
            parser.error("give exactly one of --model and --samples")
        if args.num_images < 2:
            parser.error("--num_images: a covariance needs at least 2 samples")
    if args.feature_batch_size < 1:
        parser.error("--feature_batch_size must be at least 1")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    with exit_on_error():
        if args.command == "reference":
            meta = make_reference(args)
            print(
                f"reference statistics of {meta['images']} images ({meta['source']}, mode {meta['mode']}) -> "
                f"{args.output}"
            )
        else:
            result = evaluate(args)
            print(
                f"FID {result['fid']:.2f}  KID {result['kid']:.5f}  ({result['num_samples']} samples, "
                f"{result['sampler']} {result['steps']} steps, vs {result['num_reference']} reference images, mode "
                f"{result['mode']}, {result['wall_seconds']:.0f} s)"
            )


if __name__ == "__main__":
    main()
