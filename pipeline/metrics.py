"""The metric: features of uint8 images, their statistics, the Frechet distance, KID, reference statistics files, and
FID during training. Pure functions of arrays but for the files and TrainingFid's sampling."""

import json
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.linalg
import torch
from cleanfid.fid import kernel_distance
from cleanfid.resize import build_resizer
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .config import FID_MODES as MODES
from .config import TrainingConfig
from .errors import PipelineError
from .files import staged
from .inception import FeatureFn, inception_extractor
from .sample import SamplingRequest, sample_unet, to_uint8


def check_images(images: np.ndarray, what: str = "images") -> None:
    """Only (N, H, W, C) uint8 with C = 1 or 3 may reach the feature extractor: a channel-first array
    or floats in [-1, 1] would give a plausible but wrong FID, so they are refused here."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise PipelineError(
            f"{what}: expected a uint8 array (values 0-255), got {getattr(images, 'dtype', type(images))}"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise PipelineError(f"{what}: expected shape (N, H, W, C) with C = 1 or 3 (channel-last), got {images.shape}")
    if images.shape[0] < 2:
        raise PipelineError(f"{what}: at least 2 images are needed for a covariance, got {images.shape[0]}")


def inception_input(images: np.ndarray, mode: str) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, 3, 299, 299) in [0, 255], resized exactly as clean-fid resizes in `mode`."""
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
        raise PipelineError(f"mode: choose one of {', '.join(MODES)}, not {mode!r}")
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
        raise PipelineError(f"covariance: LAPACK dpstrf rejected argument {-info}")
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
        raise PipelineError(
            f"statistics of different sizes: mean {mu1.shape} vs {mu2.shape}, covariance {sigma1.shape} vs "
            f"{sigma2.shape}"
        )
    for name, value in (("mean", mu1), ("covariance", sigma1), ("mean", mu2), ("covariance", sigma2)):
        if not np.isfinite(value).all():
            raise PipelineError(f"statistics: the {name} holds NaN or infinite values")
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
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(features1, features2))
    finally:
        np.random.set_state(state)


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
        raise PipelineError(
            f"{where} holds {reference.get('feature_extractor')} features in mode {reference.get('mode')}, this "
            f"evaluation uses {extractor} in mode {mode}"
        )
    if resolution is not None and reference.get("resolution") not in (None, resolution):
        raise PipelineError(f"{where}: its images are {reference.get('resolution')} px, the model's {resolution} px")


def load_reference(path: Path) -> tuple[np.ndarray, dict]:
    """Features and description of statistics saved by `reference`, checked: at least 2 rows of finite numbers."""
    if not path.is_file():
        raise PipelineError(f"reference: no file at {path}")
    try:
        check_npz_sizes(path)
        with np.load(path, allow_pickle=False) as stored:
            features, meta = stored["features"].astype(np.float64), json.loads(str(stored["meta"]))
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, RecursionError) as error:
        raise PipelineError(
            f"reference: {path} is not a statistics file written by `python -m pipeline.evaluate reference` ({error})"
        ) from None
    if features.ndim != 2 or len(features) < 2:
        raise PipelineError(
            f"reference: {path} holds features of shape {features.shape}; at least 2 rows are needed for a covariance"
        )
    if not np.isfinite(features).all():
        raise PipelineError(f"reference: {path} holds NaN or infinite features; encode the reference again")
    if not isinstance(meta, dict):
        raise PipelineError(f"reference: {path} has no description (meta); encode the reference again")
    return features, meta


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
