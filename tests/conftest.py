import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parent.parent


def reset_accelerate() -> None:
    """Forget the Accelerator of an earlier run in this process, as a new process would start without one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def fresh_accelerate_state():
    """Each run makes its own Accelerator, as a new process would."""
    reset_accelerate()
    yield
    reset_accelerate()


@pytest.fixture
def short_stream_shutdowns(monkeypatch):
    """datasets sleeps 5 s each time a streamed parquet iterator closes (an epoch ends, a dropped stream is
    collected): a guard against an Arrow crash when the interpreter exits right after a scan (apache/arrow#45214).
    The in-process stream tests close dozens mid-suite, long before any exit; a 0.1 s sleep there, with the test's
    streams collected before it ends, takes about 40 s off the suite. The library keeps the 5 s."""
    import gc

    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0.1)
    yield
    gc.collect()


sys.path.insert(0, str(REPO))

# Nothing in the tests may reach the network; datasets caches go to a throw-away folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    previous = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = Path(home / "datasets")
    yield home
    if previous is not None:
        os.environ["HF_HOME"] = previous


# A tiny configuration: a 2-level UNet with 8 and 16 channels at 16x16, 50 diffusion steps,
# 64 images of the embedded dataset. Every run of it is a real run, just small.
TINY = {
    "dataset_name": "data/fashion_mnist",
    "max_train_samples": 64,
    "resolution": 16,
    "image_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "add_attention": True,
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "ddpm_num_steps": 50,
    "train_batch_size": 8,
    "max_train_steps": 6,
    "learning_rate": 0.001,
    "lr_warmup_steps": 2,
    "logging_steps": 2,
    "save_images_steps": 3,
    "num_grid_images": 4,
    "grid_sampler": "dpmsolver++",
    "grid_inference_steps": 3,
    "checkpointing_steps": 3,
    "checkpoints_total_limit": 2,
    "mixed_precision": "auto",  # bf16 where native, else fp32 (emulated bf16 would be ~10x slower)
}


class TinyFeatures(torch.nn.Module):
    """A fixed random conv net: (N, 3, 299, 299) in [0, 255] -> (N, 32) features, as clean-fid's extractors take."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=9, stride=6)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.1)
            self.conv.bias.zero_()

    @torch.no_grad()
    def forward(self, batch):
        hidden = torch.tanh(self.conv(batch / 255 - 0.5))
        return torch.nn.functional.adaptive_avg_pool2d(hidden, 2).flatten(1)


@pytest.fixture
def tiny_config_file(tmp_path):
    """Write the tiny config as a YAML preset and return its path."""
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(autouse=True)
def run_from_repo(monkeypatch):
    """The embedded dataset's path is relative to the repository root, as in the README."""
    monkeypatch.chdir(REPO)


def _photo(rng, size: int):
    """A smooth, photograph-like RGB image: a colour gradient plus blurred blobs (not flat noise)."""
    import numpy as np
    from PIL import Image, ImageFilter

    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, 1 - x * y], axis=-1) * rng.uniform(0.4, 1.0, size=3)
    for _ in range(4):
        cy, cx, radius = rng.uniform(0, 1, size=3) * (1, 1, 0.3)
        base += ((x - cx) ** 2 + (y - cy) ** 2 < radius**2)[..., None] * rng.uniform(-0.4, 0.4, size=3)
    image = Image.fromarray((base.clip(0, 1) * 255).astype("uint8"))
    return image.filter(ImageFilter.GaussianBlur(size / 40))


# What the SFHQ-shaped tree holds besides its good JPEGs, and what becomes of each file.
SFHQ_TREE_GOOD_JPEGS = 30
SFHQ_TREE_SPECIAL = {
    "images/images/gray.jpg": "kept",
    "images/images/rgba.png": "kept",
    "images/images/sixteen_bit.png": "kept",
    "images/images/cmyk.jpg": "kept",
    "images/images/palette.png": "kept",
    "images/images/corrupt.jpg": "not a readable image",
    "images/images/truncated.jpg": "corrupt or truncated",
    "images/images/empty.jpg": "empty file",
    "images/images/tiny.jpg": "too small",
    "images/notes.txt": "not an image file",
}


@pytest.fixture(scope="session")
def sfhq_tree(tmp_path_factory):
    """A small SFHQ-shaped dataset (Kaggle layout images/images/*.jpg) with every kind of awkward file, and its zip."""
    import zipfile

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("sfhq") / "SFHQ_part1"
    images = root / "images" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(SFHQ_TREE_GOOD_JPEGS):
        _photo(rng, 96).save(images / f"SFHQ_pt1_{index:08d}.jpg", quality=90)
    _photo(rng, 96).convert("L").save(images / "gray.jpg", quality=90)
    rgba = _photo(rng, 96).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(96)[None, :] < 48, 0, 255).astype("uint8").repeat(96, 0)))
    rgba.save(images / "rgba.png")  # left half fully transparent
    Image.fromarray(np.full((96, 96), 128 * 257, dtype=np.uint16)).save(
        images / "sixteen_bit.png"
    )  # mid grey, 16 bits
    Image.new("CMYK", (96, 96), (0, 255, 255, 0)).save(images / "cmyk.jpg", quality=95)  # pure red
    palette = Image.new("P", (96, 96), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 1  # every pixel transparent
    palette.save(images / "palette.png", transparency=1)
    (images / "corrupt.jpg").write_bytes(rng.bytes(3000))
    good = (images / "SFHQ_pt1_00000000.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (images / "empty.jpg").write_bytes(b"")
    _photo(rng, 8).save(images / "tiny.jpg")
    (root / "images" / "notes.txt").write_text("not an image\n")

    archive = root.parent / "SFHQ_part1.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(root.parent))
    return root, archive


# `accelerate launch` as a user types it, from the repository root: one process with the repository's
# accelerate_config.yaml, or two (`--multi_gpu` on a CPU machine: one gloo group of two processes).
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
ONE_PROCESS = ["--config_file", "accelerate_config.yaml"]
TWO_PROCESSES = ["--multi_gpu", "--num_processes", "2"]


def train_arguments(config_file: Path, output_dir: Path, *extra: str, launcher=ONE_PROCESS) -> list[str]:
    """The launcher's arguments for train_ddpm.py with a preset, an output folder and more flags."""
    return [*launcher, "train_ddpm.py", "--config", str(config_file), "--output_dir", str(output_dir), *extra]


def logged_scalars(output_dir, tag: str) -> list:
    """The TensorBoard events of `tag` that a run in `output_dir` logged (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {  # the run's folder (TensorBoard writes the hparams into a folder below it)
        path.parent
        for path in (Path(output_dir) / "logs").rglob("events.out.tfevents.*")
        if path.parent.name == "train_ddpm"
    }
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return accumulator.Scalars(tag)


def launch(*arguments: str, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`accelerate launch <arguments>`, run to its end, its output captured."""
    return subprocess.run([*LAUNCH, *arguments], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


FINISHED_RUN = {**TINY, "mixed_precision": "no", "save_images_steps": 0, "logger": "none"}


def train(config):
    """pipeline.train.train in this process as a new process would run it: with an Accelerate state of its own, which
    is reset after it too (whether it finished or raised)."""
    from pipeline.train import train as run

    reset_accelerate()
    try:
        return run(config)
    finally:
        reset_accelerate()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A tiny fp32 run (in this process) with checkpoints at steps 3 and 6 and its export; the tests that only read it
    or copy from it share it."""
    from pipeline.config import TrainingConfig

    output_dir = tmp_path_factory.mktemp("finished") / "out"
    train(TrainingConfig(**{**FINISHED_RUN, "output_dir": str(output_dir)}))
    return output_dir


def deeply_nested(depth: int) -> str:
    """JSON nested `depth` levels deep: a probe for every reader of JSON."""
    return '{"a": ' * depth + "1" + "}" * depth


def copy_checkpoint(finished_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A new output folder holding only checkpoint-3 of the finished run: the folder and the checkpoint."""
    import shutil

    output_dir = tmp_path / "resumed"
    shutil.copytree(finished_run / "checkpoints" / "checkpoint-3", output_dir / "checkpoints" / "checkpoint-3")
    return output_dir, output_dir / "checkpoints" / "checkpoint-3"


def resume(output_dir: Path, **changes):
    """The finished run's config resumed from the latest checkpoint in `output_dir`, with `changes`."""
    from pipeline.config import TrainingConfig

    values = {**FINISHED_RUN, "output_dir": str(output_dir), "resume_from_checkpoint": "latest", **changes}
    return train(TrainingConfig(**values))
