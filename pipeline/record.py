"""training_config.json: a run's resolved config and what happened in the run, written and read in one place.

    {"config": {...every TrainingConfig field...}, "run": {...RunRecord...}}

The file is written when the run starts (`finished: false`) and again at its end; every
checkpoint holds a copy. Its "config" part is itself a valid preset (`--config <run>/training_config.json`).
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .arguments import load_preset
from .config import ConfigError, TrainingConfig
from .files import write_json


RECORD_NAME = "training_config.json"


@dataclass
class RunRecord:
    """Facts about a run that its config does not hold."""

    hardware: str = "not recorded"  # "1 x NVIDIA H200" or "1 process(es) on cpu (2 cores, x86_64)"
    num_processes: int = 1
    cpu_threads_per_process: Optional[int] = None
    mixed_precision: str = "no"  # as Accelerate ran it
    versions: dict = field(default_factory=dict)  # python, torch, diffusers, accelerate, datasets
    num_train_images: Optional[int] = None  # images kept after decoding; None for a stream
    data: dict = field(default_factory=dict)  # source, images_found, images_kept, files_skipped
    data_name: Optional[str] = None  # as the card names the data: a Hub id, or a local path's last component
    hub_dataset_id: Optional[str] = None  # the Hub dataset the data is (or comes from), when there is one
    unet_parameters: int = 0
    total_steps: int = 0  # the budget in optimizer steps
    images_per_step: int = 0  # the global batch: batch x processes x accumulation
    finished: bool = False  # the export was written
    global_step: int = 0  # optimizer steps done
    train_seconds: float = 0.0  # time in training steps (grids, FID and checkpoints left out), across resumes
    wall_seconds: Optional[float] = None  # the last command's wall time, start to export
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    best_fid: Optional[dict] = None  # {"step", "fid", "ema_decay"} of the best FID during training


@dataclass
class TrainingRecord:
    config: TrainingConfig
    run: RunRecord


def write_record(path, config: TrainingConfig, run: RunRecord) -> None:
    write_json(path, {"config": config.to_dict(), "run": dataclasses.asdict(run)})


def read_record(path) -> TrainingRecord:
    """Read a training_config.json. Raises ConfigError naming the file when it is missing or malformed.

    Keys of "run" that this version does not know (written by another version) are ignored.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing (not a training output folder?)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("config"), dict)
        or not isinstance(data.get("run", {}), dict)
    ):
        raise ConfigError(f"{path}: expected an object with 'config' and 'run' objects")
    config = TrainingConfig(**load_preset(path))
    known = {item.name for item in dataclasses.fields(RunRecord)}
    return TrainingRecord(
        config, RunRecord(**{key: value for key, value in data.get("run", {}).items() if key in known})
    )
