"""training_config.json: a run's resolved config and its record (what happened in it), written and read in one place.

    {"config": {...every TrainingConfig field...}, "run": {...RunRecord...}}

The file is written when the run starts (`finished: false`) and again at its end; every checkpoint holds a
copy, and a checkpoint's training_state.json repeats the record's counters. Its "config" part is itself a
valid preset (`--config <run>/training_config.json`).
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

from .config import TrainingConfig, check_type, load_preset
from .errors import PipelineError
from .files import read_json, write_json


RECORD_NAME = "training_config.json"
COUNTERS = ("global_step", "train_seconds", "skipped_steps", "best_fid", "losses")  # what a checkpoint restores


@dataclass
class RunRecord:
    """What a run's config does not say: where and how it ran, what it read, and where it is (the counters)."""

    hardware: str = "not recorded"  # "1 x NVIDIA H200" or "1 process(es) on cpu (Intel(R) Xeon(R) ..., 2 cores)"
    device: dict = field(default_factory=dict)  # what decided the precision: pipeline.device.device_facts()
    num_processes: int = 1
    cpu_threads_per_process: Optional[int] = None
    mixed_precision: str = "no"  # as Accelerate ran it (auto resolved)
    precision_reason: Optional[str] = None  # why: "auto: the device computes bf16 natively", "as asked", ...
    images_per_second: Optional[float] = None  # the median of the logged windows of the last command
    versions: dict = field(default_factory=dict)  # python, torch, diffusers, accelerate, datasets
    num_train_images: Optional[int] = None  # images kept after decoding; None for a stream
    data: dict = field(default_factory=dict)  # source, images_found, images_kept, files_skipped
    data_name: Optional[str] = None  # as the card names the data: a Hub id, or a local path's last component
    hub_dataset_id: Optional[str] = None  # the Hub dataset the data is (or comes from), when there is one
    unet_parameters: int = 0
    total_steps: int = 0  # the budget in optimizer steps
    images_per_step: int = 0  # the global batch: batch x processes x accumulation
    resumed_changes: list = field(default_factory=list)  # settings a resume changed: "learning_rate: 0.002 -> 0.5"
    finished: bool = False  # the export was written
    problems: list = field(default_factory=list)  # why the export is not to be trusted (train.run_problems): exit 3
    # The counters, restored from a checkpoint's training_state.json on resume:
    global_step: int = 0  # optimizer steps done
    train_seconds: float = 0.0  # time in training steps (grids, FID and checkpoints left out), across resumes
    wall_seconds: Optional[float] = None  # the last command's wall time, start to export
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    best_fid: Optional[dict] = None  # {"step", "fid", "ema_decay"} of the best FID during training so far
    losses: Optional[dict] = None  # {"lowest", "last"} of the logged windows' mean losses (train.run_problems)


class SavedRun(NamedTuple):
    config: TrainingConfig
    run: RunRecord


def write_record(path, config: TrainingConfig, run: RunRecord) -> None:
    write_json(path, {"config": config.to_dict(), "run": dataclasses.asdict(run)})


def read_record(path) -> SavedRun:
    """Read a training_config.json. Raises PipelineError naming the file when it is missing or malformed.

    Keys of "run" that this version does not know (written by another version) are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: missing (not a training output folder?)")
    data = read_json(path)
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("run", {}), dict):
        raise PipelineError(f"{path}: expected an object with 'config' and 'run' objects")
    known = typing.get_type_hints(RunRecord)
    run = {
        key: check_type(f"{path}: run.{key}", value, known[key])
        for key, value in data.get("run", {}).items()
        if key in known
    }
    return SavedRun(TrainingConfig(**load_preset(path)), RunRecord(**run))


# ---------------------------------------------------------------------------------------------
# What a run says about itself: the banner


def describe_run(config: TrainingConfig, record: RunRecord, num_images: Optional[int]) -> str:
    """The start-of-run banner: what is trained, on what, for how long, how."""
    parameters = record.unet_parameters
    size = f"{parameters / 1e6:.1f}M" if parameters >= 1e6 else f"{parameters:,}"
    images = f"{num_images:,} images" if num_images else "a stream of images"
    epochs = f", {record.total_steps * record.images_per_step / num_images:.1f} epochs" if num_images else ""
    channels = {1: "grayscale", 3: "RGB"}[config.image_channels]
    preset = f"preset {config.preset}" if config.preset else "no preset: the quickstart's defaults"
    return (
        f"Training a {size}-parameter UNet at {config.resolution}x{config.resolution} {channels} ({preset}) on "
        f"{images}: {record.total_steps:,} steps of {record.images_per_step} images{epochs}, {record.num_processes} "
        f"process(es), mixed precision {record.mixed_precision}, "
        + ("random horizontal flips" if config.random_flip else "no flips (--random_flip true for symmetric data)")
    )
