"""clean-fid's Inception feature extractor: its weights found (or fetched once), checked and loaded without running
code from the file, for the modes clean-fid resizes in (FID_MODES)."""

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from cleanfid import inception_pytorch
from cleanfid.features import build_feature_extractor
from cleanfid.inception_torchscript import InceptionV3W

from .errors import PipelineError
from .files import staged


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
            raise PipelineError(
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
        raise PipelineError(
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


def unusable_weights(path: Path, mode: str, error: Exception) -> PipelineError:
    first = str(error).splitlines()[0] if str(error) else ""
    return PipelineError(
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
        raise PipelineError(
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
    original = inception_pytorch.load_state_dict_from_url
    inception_pytorch.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        yield
    finally:
        inception_pytorch.load_state_dict_from_url = original


def build_inception(mode: str, weights: Path, device: str = "cpu") -> FeatureFn:
    """clean-fid's Inception feature extractor for `mode`, loaded from `weights`, checked on two images."""
    try:
        if mode == "clean":
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
    except PipelineError:
        raise
    except Exception as error:  # torch.jit raises many types for a bad file
        raise unusable_weights(weights, mode, error) from None
    if tuple(probe.shape) != (2, FEATURE_DIM):
        raise PipelineError(
            f"inception_weights: {weights} gives features of shape {tuple(probe.shape[1:])}, not ({FEATURE_DIM},)"
        )
    if not bool(torch.isfinite(probe).all() & (probe >= 0).all()):  # Inception's pool3 averages ReLU outputs
        raise PipelineError(
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
