"""Checkpoints: everything a run needs to continue exactly, in safetensors and JSON only.

    checkpoints/checkpoint-<step>/
      unet/                      the trained weights, a diffusers folder: UNet2DModel.from_pretrained(...)
      unet_ema/, unet_ema-<d>/   each EMA, the same way (unet_ema: --ema_max_decay; then --ema_extra_decays)
      optimizer.safetensors      the optimizer's state tensors; optimizer.json the rest (param groups)
      loss_weights.safetensors   the learned uncertainty weighting's log-variances (--loss_weighting learned only)
      stream_state_<process>.json  a streamed source's position (--streaming only)
      training_config.json       the run's config and record
      training_state.json        the record's counters, grad scaler, EMA counters, and the size of every other
                                 file; its presence marks a complete checkpoint

No generator state and no LR schedule is saved: every draw of a step (flips, timesteps, noise, dropout) comes
from generators seeded by (seed, micro-batch, process), and the learning rate is a function of the step, so
both are rebuilt from the config at the resumed step.

Nothing here is a pickle, so loading a checkpoint from anywhere cannot run code. Every file is checked
whole before anything is restored, against what this version writes: JSON size and depth, keys, types and
ranges; tensors' names, shapes and dtypes against the model and optimizer; weights finite. A bad file stops
the resume with `PipelineError("<file>: <what is wrong>")`, never a partial restore or a crash inside torch.
The folder is staged (pipeline/files.py) by the main process; a write that fails (a full disk) leaves no
partial folder and says so.
"""

import math
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import gather_object
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import FIELDS, MAX_STEPS, TrainingConfig
from .errors import PipelineError
from .files import read_json, staged, write_failure, write_json
from .record import COUNTERS, RECORD_NAME, RunRecord, read_record, write_record


CHECKPOINT_PREFIX = "checkpoint-"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # diffusers' file name in a model folder
STATE_FILE = "training_state.json"
LOSS_WEIGHTS_FILE = "loss_weights.safetensors"
# Settings whose change a resume applies to the optimizer and LR schedule (the others are read at each step).
SCHEDULE_FIELDS = (
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "min_learning_rate",
    "max_train_steps",
    "num_epochs",
)


# ---------------------------------------------------------------------------------------------
# Finding the checkpoint to resume from, and what the resume changes


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
    """The checkpoint to resume from, or None for a fresh run. Raises PipelineError when that is ambiguous.

    --resume_from_checkpoint takes "latest", a checkpoint folder, or a bare checkpoint name
    (`checkpoint-500`), which is looked for in <output_dir>/checkpoints as the diffusers example does.
    A new run in a folder with checkpoints is refused unless --overwrite_output_dir (then train() deletes them).
    """
    checkpoints_dir = Path(config.output_dir) / "checkpoints"
    checkpoints = list_checkpoints(checkpoints_dir)
    if config.resume_from_checkpoint is None:
        if checkpoints and not config.overwrite_output_dir:
            raise PipelineError(
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
        raise PipelineError(f"resume_from_checkpoint: {path} is not a complete checkpoint folder")
    named = path.name.startswith(CHECKPOINT_PREFIX) and path.name[len(CHECKPOINT_PREFIX) :].isdigit()
    step = checkpoint_step(path) if named else read_json(path / STATE_FILE).get("global_step")
    # (the state is checked whole when it is loaded; here a step that is not one compares with nothing)
    valid = isinstance(step, int) and not isinstance(step, bool) and step >= 0
    newer = [checkpoint.name for checkpoint in checkpoints if valid and checkpoint_step(checkpoint) > step]
    if newer and not config.overwrite_output_dir:
        raise PipelineError(
            f"resume_from_checkpoint: {config.output_dir} holds checkpoints newer than {path.name} "
            f"({', '.join(newer)}), which resuming from it would overwrite; pass --resume_from_checkpoint latest, or "
            "--overwrite_output_dir to replace them"
        )
    return path


def check_resume_compatible(config: TrainingConfig, checkpoint: Path, data: Optional[dict] = None) -> list[str]:
    """What resuming `checkpoint` with `config` changes, one line per setting. Settings that must match (the data
    and its preprocessing, the model, the diffusion process, the draws: option(same=True)) are refused with
    both values; the others are applied from the resumed step on (see load_checkpoint) and listed here, and so is
    a change of the images themselves (`data`: the run record's summary, with their count and fingerprint)."""
    saved, saved_run = read_record(checkpoint / RECORD_NAME)
    differing = {name: (getattr(saved, name), getattr(config, name)) for name in FIELDS}
    differing = {name: values for name, values in differing.items() if values[0] != values[1]}
    refused = [name for name in differing if FIELDS[name].metadata["same"]]
    if refused:
        details = ", ".join(
            f"{name} ({differing[name][0]!r} in the checkpoint, {differing[name][1]!r} now)" for name in refused
        )
        raise PipelineError(f"{refused[0]}: cannot resume {checkpoint}: {details}")
    changes = []
    for name, (before, now) in differing.items():
        if FIELDS[name].metadata["same"] is False:
            effect = (
                ": the LR schedule is rebuilt and continues from the resumed step" if name in SCHEDULE_FIELDS else ""
            )
            changes.append(f"{name}: {before!r} in the checkpoint, {now!r} now{effect}")
    (before, before_print), (now, now_print) = [
        (summary.get("images_kept"), summary.get("fingerprint")) for summary in (saved_run.data, data or {})
    ]
    fingerprints_differ = None not in (before_print, now_print) and before_print != now_print  # older records: none
    if data is not None and (before != now or fingerprints_differ):
        changes.append(
            f"data: {before} images (fingerprint {before_print}) in the checkpoint, {now} ({now_print}) now: the "
            "batches from the resumed step on are drawn from the new images"
        )
    return changes


# ---------------------------------------------------------------------------------------------
# Pieces: tensors, optimizer state


def _read_tensors(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A safetensors file whose tensors have exactly the names, shapes and dtypes of `expected`, all finite."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise PipelineError(f"{path}: not a readable safetensors file ({error})") from None
    if set(tensors) != set(expected):
        names = sorted(set(tensors) ^ set(expected))
        raise PipelineError(f"{path}: does not fit the model ({len(names)} tensor names differ, e.g. {names[0]!r})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape or tensor.dtype != expected[name].dtype:
            raise PipelineError(
                f"{path}: does not fit the model (tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, the "
                f"model's {expected[name].dtype} {tuple(expected[name].shape)})"
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PipelineError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return tensors


def ema_folder_name(index: int, decay: float) -> str:
    """unet_ema for the main EMA, unet_ema-<decay> for the others."""
    return "unet_ema" if index == 0 else f"unet_ema-{decay:g}"


def save_unet_folder(unet, folder: Path, parameters: Optional[list] = None) -> None:
    """A diffusers model folder (config.json + safetensors) of `unet`, with `parameters` instead of its own."""
    tensors = unet.state_dict()
    if parameters is not None:
        tensors.update(zip([name for name, _ in unet.named_parameters()], parameters))
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_config(folder)
    tensors = {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})


def _optimizer_files(optimizer) -> tuple[dict, dict]:
    """An optimizer's state_dict split into tensors (for safetensors) and the rest (for JSON)."""
    state_dict = optimizer.state_dict()
    tensors, state = {}, {}
    for index, values in state_dict["state"].items():
        state[str(index)] = {key: value for key, value in values.items() if not isinstance(value, torch.Tensor)}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
    return tensors, {"state": state, "param_groups": state_dict["param_groups"]}


def _like(template, value, where: str) -> None:
    """`value` (read from JSON) has the keys and JSON types of `template` (what this version writes)."""
    if isinstance(template, dict):
        if not isinstance(value, dict) or set(value) != set(template):
            keys = sorted(set(value) ^ set(template)) if isinstance(value, dict) else []
            raise ValueError(
                f"{where}: expected the keys {sorted(template)}" + (f" (differs in {keys})" if keys else "")
            )
        for key in template:
            _like(template[key], value[key], f"{where}.{key}")
    elif isinstance(template, (list, tuple)):
        if not isinstance(value, list) or len(value) != len(template):
            raise ValueError(f"{where}: expected a list of {len(template)}")
        for index, (expected, item) in enumerate(zip(template, value)):
            _like(expected, item, f"{where}[{index}]")
    elif isinstance(template, bool) or template is None:  # flags: torch writes None or a bool
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{where}: expected true, false or null, got {value!r}")
    elif isinstance(template, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected {type(template).__name__}, got {value!r}")
    elif isinstance(template, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        if isinstance(template, int) and not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        if value < 0:
            raise ValueError(f"{where}: {value!r} is negative")


def _optimizer_state_dict(optimizer, tensors_path: Path, rest_path: Path) -> dict:
    """The optimizer state a checkpoint holds, checked against `optimizer` (built by this run, not yet stepped):
    the same param groups (keys, types, parameter indices), state tensors of each parameter's shape."""
    rest = read_json(rest_path)
    template = optimizer.state_dict()
    try:
        _like({"state": {}, "param_groups": template["param_groups"]}, {**rest, "state": {}}, "optimizer")
        if [group["params"] for group in rest["param_groups"]] != [
            group["params"] for group in template["param_groups"]
        ]:
            raise ValueError("optimizer: holds other parameters than the model's")
        for group in rest["param_groups"]:
            if not 0 <= group["betas"][0] < 1 or not 0 <= group["betas"][1] < 1:
                raise ValueError(f"optimizer: betas {group['betas']} out of range")
        if not isinstance(rest["state"], dict):
            raise ValueError("optimizer.state: expected an object")
    except ValueError as error:
        raise PipelineError(f"{rest_path}: does not fit the optimizer ({error})") from None
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    expected = {}
    for index in rest["state"]:
        if not index.isdigit() or int(index) >= len(parameters):
            raise PipelineError(f"{rest_path}: state of parameter {index!r}, which the model does not have")
        shape = parameters[int(index)].shape
        expected.update({f"{index}.step": torch.zeros(()), f"{index}.exp_avg": torch.zeros(shape),
                         f"{index}.exp_avg_sq": torch.zeros(shape)})  # fmt: skip
        if rest["state"][index]:
            raise PipelineError(f"{rest_path}: unexpected state of parameter {index}: {sorted(rest['state'][index])}")
    state = {int(index): {} for index in rest["state"]}
    for name, tensor in _read_tensors(tensors_path, expected).items():
        index, key = name.split(".", 1)
        state[int(index)][key] = tensor
    groups = [{**group, "betas": tuple(group["betas"])} for group in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------------------------------------
# Save and load


def save_checkpoint(accelerator, parts, record: RunRecord, stream_state: Optional[dict] = None) -> Path:
    """Write checkpoint-<step> of `parts` (pipeline.train.TrainingParts) at `record.global_step`, staged, by the main
    process (the other processes' stream positions are gathered to it); prune old ones past
    --checkpoints_total_limit."""
    config, ema = parts.config, parts.ema
    checkpoints_dir = Path(config.output_dir) / "checkpoints"
    final = checkpoints_dir / f"{CHECKPOINT_PREFIX}{record.global_step}"
    streams = gather_object([stream_state])
    if accelerator.is_main_process:
        try:
            with staged(final, folder=True) as partial:
                for index, stream in enumerate(streams):
                    if stream is not None:
                        write_json(partial / f"stream_state_{index}.json", stream)
                model = parts.model  # the UNet itself, its autocast kept (unwrapping it would strip it)
                save_unet_folder(model, partial / "unet")
                for index, decay in enumerate(ema.max_decays if ema is not None else []):
                    save_unet_folder(model, partial / ema_folder_name(index, decay), ema.averages[index])
                tensors, rest = _optimizer_files(parts.optimizer)
                save_file(tensors, partial / "optimizer.safetensors")
                if parts.uncertainty is not None:
                    weights = {name: tensor.detach().cpu() for name, tensor in parts.uncertainty.state_dict().items()}
                    save_file(weights, partial / LOSS_WEIGHTS_FILE)
                write_json(partial / "optimizer.json", rest)
                write_record(partial / RECORD_NAME, config, record)
                files = {
                    path.relative_to(partial).as_posix(): path.stat().st_size for path in sorted(partial.rglob("*"))
                }
                state = {name: getattr(record, name) for name in COUNTERS}
                state.update(
                    grad_scaler=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                    ema=ema.state() if ema is not None else None,
                    files={name: size for name, size in files.items() if (partial / name).is_file()},
                )
                write_json(partial / STATE_FILE, state)
        except (OSError, SafetensorError) as error:  # a full disk, a quota, a file size limit
            latest = list_checkpoints(checkpoints_dir)
            reason = write_failure(error) or str(error)
            last = f"The last complete one is {latest[-1]}" if latest else "No complete checkpoint exists yet"
            raise PipelineError(
                f"{final}: cannot write the checkpoint of step {record.global_step} ({reason}); the partial "
                f"checkpoint was removed. {last}; free some space and resume with --resume_from_checkpoint latest."
            ) from None
        checkpoints = list_checkpoints(checkpoints_dir)
        for old in checkpoints[: max(0, len(checkpoints) - (config.checkpoints_total_limit or len(checkpoints)))]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _count(path: Path, state: dict, name: str, kind, maximum=MAX_STEPS) -> None:
    value = state.get(name)
    finite = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if isinstance(value, bool) or not isinstance(value, kind) or not finite or value < 0:
        raise PipelineError(
            f"{path}: {name} must be a non-negative {'integer' if kind is int else 'number'}, got {value!r}"
        )
    if value > maximum:
        raise PipelineError(f"{path}: {name} must be at most {maximum:,}, got {value!r}")


def read_training_state(checkpoint: Path) -> dict:
    """training_state.json, checked: counters of the right type and range, every recorded file present at its
    recorded size and inside the checkpoint."""
    path = checkpoint / STATE_FILE
    state = read_json(path)
    _count(path, state, "global_step", int)
    _count(path, state, "skipped_steps", int)
    _count(path, state, "train_seconds", (int, float), maximum=1e12)
    if checkpoint.name.startswith(CHECKPOINT_PREFIX) and checkpoint.name[len(CHECKPOINT_PREFIX) :].isdigit():
        if state["global_step"] != checkpoint_step(checkpoint):
            raise PipelineError(
                f"{path}: global_step {state['global_step']} does not match the folder name {checkpoint.name}"
            )
    best_fid = state.get("best_fid")
    if best_fid is not None and not (
        isinstance(best_fid, dict) and isinstance(best_fid.get("fid"), (int, float)) and math.isfinite(best_fid["fid"])
    ):
        raise PipelineError(f"{path}: best_fid must be null or an object with a numeric 'fid', got {best_fid!r}")
    losses = state.get("losses")
    if losses is not None and not (
        isinstance(losses, dict)
        and all(isinstance(losses.get(key), (int, float)) and math.isfinite(losses[key]) for key in ("lowest", "last"))
    ):
        raise PipelineError(f"{path}: losses must be null or hold finite 'lowest' and 'last', got {losses!r}")
    for name in ("ema", "grad_scaler"):
        if state.get(name) is not None and not isinstance(state.get(name), dict):
            raise PipelineError(f"{path}: {name} must be an object, got {state.get(name)!r}")
    files = state.get("files")
    if not isinstance(files, dict):
        raise PipelineError(f"{path}: no 'files' record (not written by this version of the pipeline?)")
    for name, size in files.items():
        file = checkpoint / name
        if not file.resolve().is_relative_to(checkpoint.resolve()):
            raise PipelineError(f"{path}: names a file outside the checkpoint: {name!r}")
        if not file.is_file():
            raise PipelineError(f"{file}: missing")
        if file.stat().st_size != size:
            raise PipelineError(
                f"{file}: {file.stat().st_size} bytes, the checkpoint recorded {size} (truncated or changed since)"
            )
    return state


def load_checkpoint(checkpoint: Path, accelerator, parts, stream=None) -> dict:
    """Restore `parts` (pipeline.train.TrainingParts) and the stream position from `checkpoint`, every
    file checked before anything changes; the settings of `parts.config` that differ from the checkpoint's are applied
    (see check_resume_compatible). Returns the record's counters. Raises PipelineError naming the bad file."""
    state = read_training_state(checkpoint)
    state_path = checkpoint / STATE_FILE
    config, ema, index = parts.config, parts.ema, accelerator.process_index
    model = parts.model

    # 1. read and check everything
    own = model.state_dict()
    weights = _read_tensors(checkpoint / "unet" / WEIGHTS_NAME, own)
    names = [name for name, _ in model.named_parameters()]
    folders = [ema_folder_name(number, decay) for number, decay in enumerate(ema.max_decays)] if ema else []
    averages = [_read_tensors(checkpoint / folder / WEIGHTS_NAME, own) for folder in folders]
    optimizer_state = _optimizer_state_dict(
        parts.optimizer, checkpoint / "optimizer.safetensors", checkpoint / "optimizer.json"
    )
    if parts.uncertainty is not None:
        loss_weights = _read_tensors(checkpoint / LOSS_WEIGHTS_FILE, parts.uncertainty.state_dict())
    try:
        if accelerator.scaler is not None and state.get("grad_scaler") is not None:
            _like(accelerator.scaler.state_dict(), state["grad_scaler"], "grad_scaler")
        if ema is not None:
            ema.check_state(state.get("ema"))
    except (ValueError, TypeError, KeyError) as error:
        raise PipelineError(f"{state_path}: malformed state ({error})") from None
    stream_path = checkpoint / f"stream_state_{index}.json"
    if stream is not None:
        stream_state = read_json(stream_path)
        try:
            stream.check_state(stream_state)
        except ValueError as error:
            raise PipelineError(f"{stream_path}: malformed stream position ({error})") from None

    # 2. restore
    model.load_state_dict(weights)
    if parts.uncertainty is not None:
        parts.uncertainty.load_state_dict(loss_weights)
    if ema is not None:
        ema.load_state(state["ema"], [{name: stored[name] for name in names} for stored in averages])
    parts.optimizer.load_state_dict(optimizer_state)
    for group in parts.optimizer.param_groups:  # the settings of this run; unchanged ones are the same values
        group.update(betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                     weight_decay=config.adam_weight_decay, initial_lr=config.learning_rate)  # fmt: skip
    if accelerator.scaler is not None and state.get("grad_scaler") is not None:
        accelerator.scaler.load_state_dict(state["grad_scaler"])
    if stream is not None:
        stream.load_state(stream_state)
    return {name: state.get(name) for name in COUNTERS}
