"""Checkpoints: everything a run needs to continue exactly, in safetensors and JSON only.

    checkpoints/checkpoint-<step>/
      unet/                      the trained weights, a diffusers folder: UNet2DModel.from_pretrained(...)
      unet_ema/, unet_ema-<d>/   each EMA, the same way (unet_ema: --ema_max_decay; then --ema_extra_decays)
      optimizer.safetensors      the optimizer's state tensors; optimizer.json the rest (param groups)
      rng_state_<process>.json   Python, NumPy and torch (CPU and CUDA) generators of each process
      stream_state_<process>.json  a streamed source's position (--streaming only)
      training_config.json       the run's config and record
      training_state.json        step, time, counters, LR schedule, grad scaler, EMA counters, and the size
                                 of every other file; written last, so its presence marks a complete checkpoint

Nothing here is a pickle, so loading a checkpoint from anywhere cannot run code. Every file is
checked as it is read: a missing, truncated or malformed one stops the resume with
`CheckpointError("<file>: <what is wrong>")`, never a silent partial restore. The folder is
written under a temporary name and renamed when complete; a write that fails (a full disk)
removes the partial folder and says so.
"""

import base64
import json
import random
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, TrainingConfig
from .files import remove, staging_name, write_json
from .record import RECORD_NAME, RunRecord, read_record, write_record


CHECKPOINT_PREFIX = "checkpoint-"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' file name in a model folder
STATE_FILE = "training_state.json"
# Fields that must match between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = (
    "resolution",
    "image_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "add_attention",
    "attention_head_dim",
    "norm_num_groups",
    "act_fn",
    "flip_sin_to_cos",
    "freq_shift",
    "ddpm_num_steps",
    "ddpm_beta_schedule",
    "ddpm_beta_start",
    "ddpm_beta_end",
    "prediction_type",
    "optimizer",
    "use_ema",
    "ema_max_decay",
    "ema_extra_decays",
    "train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "streaming",
)


class CheckpointError(Exception):
    """A checkpoint that cannot be written or resumed from; the message starts with the file concerned."""


@dataclass
class TrainingState:
    """Where a run is: saved in every checkpoint's training_state.json."""

    global_step: int = 0  # optimizer steps done
    train_seconds: float = 0.0  # time spent in training steps, across resumes (grids, FID and checkpoints left out)
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    best_fid: Optional[dict] = None  # {"step", "fid", "ema"} of the best FID during training so far


# ---------------------------------------------------------------------------------------------
# Finding the checkpoint to resume from


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Partial ones (a `.tmp` left by a kill) are skipped with a warning."""
    if not checkpoints_dir.is_dir():
        return []
    for partial in checkpoints_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
        warnings.warn(f"ignoring the incomplete checkpoint {partial} (the run stopped while writing it)")
    complete = [
        path
        for path in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and (path / STATE_FILE).is_file()
    ]
    return sorted(complete, key=checkpoint_step)


def find_resume_checkpoint(config: TrainingConfig) -> Optional[Path]:
    """The checkpoint to resume from, or None for a fresh run. Raises ConfigError when that is ambiguous.

    --resume_from_checkpoint takes "latest", a checkpoint folder, or a bare checkpoint name
    (`checkpoint-500`), which is looked for in <output_dir>/checkpoints as the diffusers example does.
    A new run in a folder with checkpoints is refused unless --overwrite_output_dir (then train() deletes them).
    """
    checkpoints_dir = Path(config.output_dir) / "checkpoints"
    checkpoints = list_checkpoints(checkpoints_dir)
    if config.resume_from_checkpoint is None:
        if checkpoints and not config.overwrite_output_dir:
            raise ConfigError(
                f"resume_from_checkpoint: {config.output_dir} already holds checkpoints of an earlier run (newest: "
                f"{checkpoints[-1].name}); pass --resume_from_checkpoint latest to continue it, or choose another "
                "--output_dir"
            )
        return None
    if config.resume_from_checkpoint == "latest":
        if not checkpoints:
            warnings.warn(f"--resume_from_checkpoint latest: no checkpoint in {config.output_dir}; starting a new run")
            return None
        return checkpoints[-1]
    path = Path(config.resume_from_checkpoint)
    if not path.exists() and len(path.parts) == 1 and (checkpoints_dir / path).exists():
        path = checkpoints_dir / path
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume_from_checkpoint: {path} is not a complete checkpoint folder")
    return path


def check_resume_compatible(config: TrainingConfig, checkpoint: Path) -> None:
    """The checkpoint's config and `config` agree on everything a resume cannot change (RESUME_MUST_MATCH)."""
    try:
        saved = read_record(checkpoint / RECORD_NAME).config
    except ConfigError as error:
        raise CheckpointError(str(error)) from None
    differing = [name for name in RESUME_MUST_MATCH if getattr(saved, name) != getattr(config, name)]
    if differing:
        details = ", ".join(
            f"{name} ({getattr(saved, name)!r} in the checkpoint, {getattr(config, name)!r} now)" for name in differing
        )
        raise ConfigError(f"{differing[0]}: cannot resume {checkpoint}: {details}")


# ---------------------------------------------------------------------------------------------
# Pieces: JSON, tensors, generators


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None


def ema_folder_name(index: int, decay: float) -> str:
    """unet_ema for the main EMA, unet_ema-<decay> for the others."""
    return "unet_ema" if index == 0 else f"unet_ema-{decay:g}"


def save_unet_folder(unet, folder: Path, parameters: Optional[list] = None) -> None:
    """A diffusers model folder (config.json + safetensors) of `unet`, with `parameters` instead of its own."""
    tensors = unet.state_dict()
    if parameters is not None:
        names = [name for name, _ in unet.named_parameters()]
        tensors.update(zip(names, parameters))
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_config(folder)
    save_file(
        {name: tensor.detach().contiguous() for name, tensor in tensors.items()},
        folder / WEIGHTS_NAME,
        metadata={"format": "pt"},
    )


def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)


def rng_state() -> dict:
    """This process's random generators as JSON: Python, NumPy, torch CPU and (when present) CUDA."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "position": position,
            "has_gauss": has_gauss,
            "cached_gaussian": cached,
        },
        "torch": _encode_bytes(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_encode_bytes(generator) for generator in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`; raises ValueError, TypeError or KeyError when it is malformed."""
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    np.random.set_state(
        (
            numpy_state["name"],
            np.asarray(numpy_state["keys"], dtype=np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(_decode_bytes(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_decode_bytes(text) for text in state["cuda"]])


def _optimizer_files(optimizer) -> tuple[dict, dict]:
    """An optimizer's state_dict split into tensors (for safetensors) and the rest (for JSON)."""
    state_dict = optimizer.state_dict()
    tensors, state = {}, {}
    for index, values in state_dict["state"].items():
        state[str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                state[str(index)][key] = value
    return tensors, {"state": state, "param_groups": state_dict["param_groups"]}


def _optimizer_state_dict(tensors: dict, rest: dict) -> dict:
    state = {int(index): dict(values) for index, values in rest["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    groups = [
        {**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in rest["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------
# Save and load


def save_checkpoint(
    accelerator, parts, record: RunRecord, state: TrainingState, stream_state: Optional[dict] = None
) -> Path:
    """Write checkpoint-<step> of `parts` (pipeline.train.TrainingParts) through a temporary folder; prune old ones
    past --checkpoints_total_limit."""
    config, ema = parts.config, parts.ema
    checkpoints_dir = Path(config.output_dir) / "checkpoints"
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{state.global_step}"
    partial = staging_name(final)
    if accelerator.is_main_process:
        remove(partial)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        index = accelerator.process_index
        write_json(partial / f"rng_state_{index}.json", rng_state())
        if stream_state is not None:
            write_json(partial / f"stream_state_{index}.json", stream_state)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(parts.unet, keep_fp32_wrapper=False, keep_torch_compile=False)
            save_unet_folder(model, partial / "unet")
            if ema is not None:
                for average_index, decay in enumerate(ema.max_decays):
                    save_unet_folder(
                        model, partial / ema_folder_name(average_index, decay), ema.averages[average_index]
                    )
            tensors, rest = _optimizer_files(parts.optimizer)
            save_file(tensors, partial / "optimizer.safetensors")
            write_json(partial / "optimizer.json", rest)
            write_record(partial / RECORD_NAME, config, record)
            files = {
                path.relative_to(partial).as_posix(): path.stat().st_size
                for path in sorted(partial.rglob("*"))
                if path.is_file()
            }
            write_json(
                partial / STATE_FILE,
                {
                    **asdict(state),
                    "num_processes": accelerator.num_processes,
                    "lr_scheduler": parts.lr_scheduler.state_dict(),
                    "grad_scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                    "ema": ema.state() if ema is not None else None,
                    "files": files,
                },
            )
    except (OSError, SafetensorError) as error:  # a full disk, a quota, a file size limit
        remove(partial)
        latest = list_checkpoints(checkpoints_dir)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise CheckpointError(
            f"{partial}: cannot write the checkpoint of step {state.global_step} ({reason}); the partial checkpoint "
            "was removed. "
            f"{f'The last complete one is {latest[-1]}' if latest else 'No complete checkpoint exists yet'}; free "
            "some space and resume with --resume_from_checkpoint latest."
        ) from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        remove(final)
        partial.rename(final)
        if config.checkpoints_total_limit is not None:
            checkpoints = list_checkpoints(checkpoints_dir)
            for old in checkpoints[: max(0, len(checkpoints) - config.checkpoints_total_limit)]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _non_negative(path: Path, state: dict, name: str, kind) -> None:
    value = state.get(name)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        raise CheckpointError(
            f"{path}: {name} must be a non-negative {'integer' if kind is int else 'number'}, got {value!r}"
        )


def read_training_state(checkpoint: Path) -> dict:
    """training_state.json, checked: counters of the right type and range, every recorded file present at its recorded
    size."""
    path = checkpoint / STATE_FILE
    state = _read_json(path)
    _non_negative(path, state, "global_step", int)
    _non_negative(path, state, "skipped_steps", int)
    _non_negative(path, state, "train_seconds", (int, float))
    if checkpoint.name.startswith(CHECKPOINT_PREFIX) and checkpoint.name[len(CHECKPOINT_PREFIX) :].isdigit():
        if state["global_step"] != checkpoint_step(checkpoint):
            raise CheckpointError(
                f"{path}: global_step {state['global_step']} does not match the folder name {checkpoint.name}"
            )
    files = state.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: no 'files' record (not written by this version of the pipeline?)")
    for name, size in files.items():
        file = checkpoint / name
        if not file.resolve().is_relative_to(checkpoint.resolve()):
            raise CheckpointError(f"{path}: names a file outside the checkpoint: {name!r}")
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        if file.stat().st_size != size:
            raise CheckpointError(
                f"{file}: {file.stat().st_size} bytes, the checkpoint recorded {size} (truncated or changed since)"
            )
    return state


def load_checkpoint(checkpoint: Path, accelerator, parts, stream=None) -> TrainingState:
    """Restore `parts` (pipeline.train.TrainingParts), the generators and the stream position from `checkpoint`;
    returns where the run was. Raises CheckpointError naming the bad file."""
    state = read_training_state(checkpoint)
    state_path = checkpoint / STATE_FILE
    unet, optimizer, lr_scheduler, ema = parts.unet, parts.optimizer, parts.lr_scheduler, parts.ema

    model = accelerator.unwrap_model(unet, keep_fp32_wrapper=False, keep_torch_compile=False)
    weights_path = checkpoint / "unet" / WEIGHTS_NAME
    try:
        model.load_state_dict(_read_tensors(weights_path))
    except RuntimeError as error:
        raise CheckpointError(f"{weights_path}: does not fit the model ({str(error).splitlines()[0]})") from None
    if ema is not None:
        folders = [
            checkpoint / ema_folder_name(index, decay) / WEIGHTS_NAME for index, decay in enumerate(ema.max_decays)
        ]
        try:
            ema.load_state(state.get("ema") or {}, [_read_tensors(folder) for folder in folders])
        except ValueError as error:
            raise CheckpointError(f"{checkpoint / ema_folder_name(0, 0)}: the EMA {error}") from None

    optimizer_path = checkpoint / "optimizer.safetensors"
    try:
        optimizer.load_state_dict(
            _optimizer_state_dict(_read_tensors(optimizer_path), _read_json(checkpoint / "optimizer.json"))
        )
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{optimizer_path}: does not fit the optimizer ({type(error).__name__}: {error})"
        ) from None
    try:
        lr_scheduler.load_state_dict(dict(state["lr_scheduler"]))
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["grad_scaler"])
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{state_path}: malformed LR schedule or grad scaler state ({type(error).__name__}: {error})"
        ) from None

    index = accelerator.process_index
    rng_path = checkpoint / f"rng_state_{index}.json"
    if index < state.get("num_processes", 1) or rng_path.exists():
        try:
            set_rng_state(_read_json(rng_path))
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{rng_path}: malformed generator state ({type(error).__name__}: {error})") from None
    else:
        warnings.warn(
            f"{checkpoint} was written by {state.get('num_processes')} process(es): process {index} starts its "
            "dropout generator from the seed, so dropout draws differ from an uninterrupted run"
        )
    if stream is not None:
        stream_path = checkpoint / f"stream_state_{index}.json"
        try:
            stream.load_state(_read_json(stream_path))
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(
                f"{stream_path}: malformed stream position ({type(error).__name__}: {error})"
            ) from None
    best_fid = state.get("best_fid")
    if best_fid is not None and not (isinstance(best_fid, dict) and isinstance(best_fid.get("fid"), (int, float))):
        raise CheckpointError(
            f"{state_path}: best_fid must be null or an object with a numeric 'fid', got {best_fid!r}"
        )
    return TrainingState(state["global_step"], float(state["train_seconds"]), state["skipped_steps"], best_fid)
