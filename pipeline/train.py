"""The training run. `train()` reads top to bottom:

    before any work     the checkpoint to resume, the Hub token, Accelerate and the precision, the output folder
                        (writable, ours, locked), the FID reference
    data                images decoded once (or streamed) -> batches on the device
    model               UNet, noise scheduler, optimizer, LR schedule, EMA, prepared by Accelerate; the checkpoint
    training_loop       fetch -> optimizer_step -> logs, grids, FID, exports, checkpoints, stop requests
    export_run          the EMA weights as a stock DDPMPipeline, the model card, the Hub

`optimizer_step` is also what the benchmarks time (bench/bench_train.py, bench/bench_cpu.py, bench/gpu_check.py).
"""

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, TorchDynamoPlugin, set_seed
from diffusers import DDPMPipeline, DDPMScheduler
from tqdm.auto import tqdm

from .batches import CachedBatches, StreamedBatches
from .checkpoint import (
    check_resume_compatible,
    checkpoint_step,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainingConfig
from .data import DataSource, describe_prepared, open_source, prepare_training_images
from .device import choose_precision, describe_device, device_facts, native_bf16
from .diffusion import PSEUDO_HUBER_C, UncertaintyWeights, draw_seed, step_loss
from .ema import EMA, sampling_weights, unreached_decays
from .errors import DIVERGED_EXIT, PipelineError, TrainingStopped
from .evaluate import EVAL_LAYOUT
from .files import (
    ANYTHING,
    FILE,
    FolderLock,
    check_writable,
    claim_folder,
    staged,
    write_failure,
    write_json,
    write_text,
)
from .hub import describe_data_origin, hub_token, push_to_hub, write_card
from .metrics import TrainingFid
from .model import (
    Teacher,
    build_noise_scheduler,
    build_unet,
    count_parameters,
    describe_unet,
    export_scheduler,
    load_teacher,
)
from .optim import build_optimizer, count_train_steps, lr_schedule
from .record import RECORD_NAME, RunRecord, describe_run, read_record, write_record
from .sample import SamplingRequest, image_grid, sample_unet
from .signals import StopRequest, StopRequested


# What a run writes into its output folder (with its tracker's logging_dir): a folder holding anything else is not a
# run's (check_folder_owner), and --overwrite_output_dir removes exactly these.
PIPELINE_FOLDER = {
    "model_index.json": FILE,
    "unet": {"config.json": FILE, "diffusion_pytorch_model.safetensors": FILE},
    "scheduler": {"scheduler_config.json": FILE},
}
RUN_LAYOUT = {
    **PIPELINE_FOLDER, "README.md": FILE, RECORD_NAME: FILE, ".lock": FILE,
    "checkpoints": {"checkpoint-*": ANYTHING}, "samples": {"step-*.png": FILE},
    "eval": EVAL_LAYOUT,
    "best-fid": {**PIPELINE_FOLDER, "fid.json": FILE}, "ema-*": PIPELINE_FOLDER, "pipeline-*": PIPELINE_FOLDER,
}  # fmt: skip
QUICKSTART_DATA = "data/fashion_mnist"
MAX_PARAMETERS = 10**10  # every field is bounded alone; their product is bounded here, before anything is allocated
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "comet_ml": "comet_ml", "trackio": "trackio"}  # --logger -> package
logger = get_logger(__name__)  # accelerate's: the main process speaks
Batches = Union[CachedBatches, StreamedBatches]


@dataclass
class TrainingData:
    batches: Batches
    num_images: Optional[int]  # None for a stream
    channels: int  # as decoded: --image_channels, or what auto found in the data
    summary: dict  # what the record says about the data: source, images found and kept, files skipped


@dataclass
class TrainingParts:
    """What an optimizer step uses and changes; a checkpoint holds all of it but the noise scheduler."""

    config: TrainingConfig
    unet: torch.nn.Module  # as prepared by Accelerate (DDP-wrapped, compiled): what the step calls
    model: torch.nn.Module  # the same UNet unwrapped, once: what grids, FID, checkpoints and exports read
    noise_scheduler: DDPMScheduler  # the forward process
    optimizer: torch.optim.Optimizer
    lr_schedule: Callable[[int], float]  # the learning rate of each optimizer step (optim.lr_schedule)
    ema: Optional[EMA]
    sampler: Any = None  # the scheduler the pipeline ships (model.export_scheduler); the grids sample with it too
    teacher: Optional[Teacher] = None  # a distillation's frozen teacher and its prediction type
    uncertainty: Optional[UncertaintyWeights] = None  # loss_weighting learned: trained and checkpointed, not exported


@dataclass
class StepOutcome:
    loss: torch.Tensor  # the mean loss of the step's micro-batches, on the device: read back only when logged
    grad_norm: torch.Tensor
    applied: bool  # False: the loss or the gradient was not finite and the step was skipped


# ---------------------------------------------------------------------------------------------
# Before any work


def launched_on_cpus() -> bool:
    """Several processes (torchrun's LOCAL_RANK is set) on a machine without GPUs. Accelerate joins such processes
    into one gloo group only when asked for the CPU; without this, `accelerate launch --multi_gpu --num_processes 2`
    on a CPU machine would start two independent runs writing to the same folder."""
    return "LOCAL_RANK" in os.environ and not torch.cuda.is_available()


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a message is logged (so redirections made later are followed)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class MessageFormatter(logging.Formatter):
    """The message alone; accelerate's "[RANK 0] " prefix only where there are several processes."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if message.startswith("[RANK 0] ") and PartialState().num_processes == 1:
            message = message[len("[RANK 0] ") :]
        return message


def configure_logging(level: str) -> None:
    """This package's messages go to stdout at `level` (progress bars stay on stderr)."""
    package = logging.getLogger("pipeline")
    package.setLevel(level.upper())
    if not package.handlers:
        handler = StdoutHandler()
        handler.setFormatter(MessageFormatter("%(message)s"))
        package.addHandler(handler)
        package.propagate = False


def setup_accelerator(config: TrainingConfig) -> tuple[Accelerator, dict]:
    """Accelerate for this run's processes and precision (auto: chosen from the device, pipeline/device.py); seeds,
    TF32 on GPUs, every core on CPUs. Returns it and what decided the precision, for the record."""
    if config.logger != "none":
        package = TRACKER_PACKAGES.get(config.logger, config.logger)
        if importlib.util.find_spec(package) is None:
            raise PipelineError(
                f"logger: {config.logger} is not installed (pip install {package}); or use --logger tensorboard"
            )
    on_gpu = torch.cuda.is_available() and not launched_on_cpus()
    facts = device_facts(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if on_gpu else "cpu")
    precision, reason = choose_precision(config.mixed_precision, facts)
    if config.mixed_precision == "bf16" and not native_bf16(facts):
        warnings.warn(f"mixed_precision: {reason}")
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        cpu=launched_on_cpus(),
        mixed_precision=precision,
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
        dynamo_plugin=TorchDynamoPlugin(
            backend="inductor" if config.torch_compile else "no", mode=config.torch_compile_mode
        ),
    )
    set_seed(config.seed)  # the UNet's initial weights; every draw of a step is seeded by the step (draw_seed)
    if accelerator.device.type == "cuda" and config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (and fp32 runs such as the report preset)
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each convolution once
    if accelerator.device.type == "cpu":
        # `accelerate launch` without --cpu sets OMP_NUM_THREADS=1, which halves the speed on 2 cores.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(config.cpu_threads or max(1, len(os.sched_getaffinity(0)) // local_processes))
    return accelerator, {"device": facts, "mixed_precision": accelerator.mixed_precision, "precision_reason": reason}


def check_output_dir(config: TrainingConfig, parameters: int) -> None:
    """Before any work: the output folder can be made and written (files.check_writable), with room for a checkpoint
    (or a warning)."""
    existing = check_writable(Path(config.output_dir))
    # weights + two Adam moments + each EMA, fp32
    checkpoint_bytes = 4 * parameters * (3 + (1 + len(config.ema_extra_decays) if config.use_ema else 0))
    free = shutil.disk_usage(existing).free
    if config.checkpointing_steps and free < 2 * checkpoint_bytes:
        warnings.warn(
            f"{config.output_dir} has {free / 2**20:,.0f} MiB free; one checkpoint takes about "
            f"{checkpoint_bytes / 2**20:,.0f} MiB (and --checkpoints_total_limit {config.checkpoints_total_limit} are "
            "kept)"
        )


def check_folder_owner(config: TrainingConfig, resuming: bool) -> None:
    """The run's folder holds nothing but a run's files (RUN_LAYOUT, with the logging folders of this run and of the
    run recorded there); a new run over an earlier one needs --overwrite_output_dir (files.claim_folder)."""
    output_dir = Path(config.output_dir)
    layout = {**RUN_LAYOUT, Path(config.logging_dir).parts[0]: ANYTHING}
    if (output_dir / RECORD_NAME).is_file():
        try:
            layout[Path(read_record(output_dir / RECORD_NAME).config.logging_dir).parts[0]] = ANYTHING
        except PipelineError:
            layout.pop(RECORD_NAME)  # not a record this version reads: not recognised as a run's
    removed = claim_folder(output_dir, layout, overwrite=config.overwrite_output_dir, resuming=resuming)
    if removed:
        logger.warning(f"--overwrite_output_dir: removed the earlier run in {output_dir} ({', '.join(removed)})")


def load_training_data(config: TrainingConfig, accelerator: Accelerator) -> TrainingData:
    """Decoded once (the main process first; the others read its cache) and held on the device, or streamed."""
    if config.streaming:
        batches = StreamedBatches(config, accelerator.process_index, accelerator.num_processes, accelerator.device)
        summary = {"source": f"stream of {config.dataset_name} ({config.split})"}
        return TrainingData(batches, None, config.image_channels or 3, summary)  # auto reads a stream as RGB
    with accelerator.main_process_first():
        prepared = prepare_training_images(config)
    logger.info(describe_prepared(prepared.summary))
    global_micro_batch = config.train_batch_size * accelerator.num_processes
    if len(prepared.pixels) < global_micro_batch:
        raise PipelineError(
            f"train_batch_size: the data holds {len(prepared.pixels)} images, fewer than one global batch of "
            f"{global_micro_batch}"
        )
    batches = CachedBatches.from_pixels(
        prepared.pixels,
        accelerator.device,
        config.train_batch_size,
        config.seed,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
    )
    summary = {key: prepared.summary[key] for key in ("source", "images_found", "images_kept", "files_skipped")}
    summary["fingerprint"] = hashlib.sha256(memoryview(np.ascontiguousarray(prepared.pixels))).hexdigest()[:16]
    return TrainingData(batches, batches.num_images, prepared.summary["channels"], summary)


def build_training(
    config: TrainingConfig, accelerator: Accelerator, unet, total_steps: int, teacher: Optional[Teacher] = None
) -> TrainingParts:
    """The UNet on the device, its noise scheduler, optimizer (prepared by Accelerate), LR schedule and EMA; for a
    distillation the UNet starts from the teacher's weights, and the teacher (`teacher`, else loaded) is frozen."""
    if config.distill_teacher is not None:
        teacher = teacher or load_teacher(config)
        unet.load_state_dict(teacher.unet.state_dict())
        on_device = config.distill_target == "teacher"  # tuning on the images needs only the starting weights
        teacher = teacher._replace(unet=teacher.unet.to(accelerator.device)) if on_device else None
    unet = unet.to(accelerator.device)
    uncertainty = None
    if config.loss_weighting == "learned":
        uncertainty = UncertaintyWeights(config.ddpm_num_steps).to(accelerator.device)
    trained = [*unet.parameters(), *(uncertainty.parameters() if uncertainty is not None else [])]
    optimizer = build_optimizer(config, trained, accelerator.device)
    schedule = lr_schedule(config, optimizer, total_steps)
    ema = None
    if config.use_ema:
        decays = [config.ema_max_decay, *config.ema_extra_decays]
        ema = EMA(unet, decays, config.ema_inv_gamma, config.ema_power)
        reached, unreached = unreached_decays(decays, total_steps, config.ema_inv_gamma, config.ema_power)
        if len(unreached) > 1:
            logger.warning(
                f"ema_extra_decays: in {total_steps:,} steps the EMA warmup's decay reaches only {reached:.5f}, so the"
                f" averages with max decay {', '.join(f'{decay:g}' for decay in unreached)} will be identical; choose "
                "max decays below it, or train longer"
            )
    prepared, optimizer = accelerator.prepare(unet, optimizer)
    # keep_fp32_wrapper: without DDP `prepared` is `unet` itself, whose forward Accelerate wrapped in autocast;
    # unwrapping without the wrapper would restore the plain forward in place and train in fp32 whatever the precision
    model = accelerator.unwrap_model(prepared, keep_fp32_wrapper=True, keep_torch_compile=False)
    noise_scheduler, sampler = build_noise_scheduler(config), export_scheduler(config)
    return TrainingParts(
        config, prepared, model, noise_scheduler, optimizer, schedule, ema, sampler, teacher, uncertainty
    )


# ---------------------------------------------------------------------------------------------
# One optimizer step


def optimizer_step(
    accelerator: Accelerator, parts: TrainingParts, micro_batches: list[torch.Tensor], step: int
) -> StepOutcome:
    """Optimizer step `step` (from 0): forward and backward over the micro-batches, gradient clipping, then the
    optimizer and EMA updates at the step's learning rate, or neither when the loss or the gradient is not finite."""
    config, unet = parts.config, parts.unet
    for group in parts.optimizer.param_groups:
        group["lr"] = parts.lr_schedule(step)
    accumulation = len(micro_batches)
    losses = torch.zeros((), device=accelerator.device)
    for micro_step, batch in enumerate(micro_batches):
        index = step * accumulation + micro_step
        torch.manual_seed(draw_seed(config.seed, index, 1, accelerator.process_index))  # dropout
        with nullcontext() if micro_step == accumulation - 1 else accelerator.no_sync(unet):  # one all-reduce a step
            processes = {"process_index": accelerator.process_index, "num_processes": accelerator.num_processes}
            loss = step_loss(
                unet, parts.noise_scheduler, config, batch, index, **processes,
                teacher=parts.teacher, uncertainty=parts.uncertainty,
            )  # fmt: skip
            accelerator.backward(loss / accumulation)
        losses += loss.detach()
    if parts.uncertainty is not None and accelerator.num_processes > 1:  # DDP averages the UNet's gradients only
        gradient = parts.uncertainty.logvars.grad
        gradient.copy_(accelerator.reduce(gradient, reduction="mean"))
    grad_norm = accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm or math.inf)
    # fp16: the grad scaler skips overflowing steps itself. Otherwise one host sync per step: gradients
    # are already averaged over processes, so every process takes the same decision.
    applied = accelerator.mixed_precision == "fp16" or bool(torch.isfinite(grad_norm) & torch.isfinite(losses))
    if applied:
        parts.optimizer.step()
        if parts.ema is not None:
            parts.ema.update(unet.parameters())
    parts.optimizer.zero_grad(set_to_none=True)
    return StepOutcome(losses / accumulation, grad_norm, applied)


# ---------------------------------------------------------------------------------------------
# Samples and exports


def export_pipeline(unet, noise_scheduler, folder: Path) -> None:
    """A stock DDPMPipeline (safetensors only) in `folder`, each part staged; model_index.json, written last, marks it
    whole. Other files in the folder (checkpoints, samples) stay. Refuses non-finite weights, writing nothing."""
    for name, parameter in unet.named_parameters():
        if not torch.isfinite(parameter).all():
            raise TrainingStopped(
                f"training diverged: refusing to export: parameter {name} holds NaN or infinite values; nothing was "
                f"written to {folder}; train again with a lower --learning_rate",
                DIVERGED_EXIT,
            )
    for name, part in (("unet", unet), ("scheduler", noise_scheduler)):
        with staged(Path(folder) / name, folder=True) as staging:
            part.save_pretrained(staging, **({"safe_serialization": True} if name == "unet" else {}))
    write_text(Path(folder) / "model_index.json", DDPMPipeline(unet=unet, scheduler=noise_scheduler).to_json_string())


def log_images(accelerator: Accelerator, images, step: int) -> None:
    """A sample grid's images to the trackers that take images (TensorBoard, Weights & Biases)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": images}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb  # an optional tracker: imported only where it is used

            tracker.log({"samples": [wandb.Image(image) for image in images]}, step=step)


def save_sample_grid(accelerator: Accelerator, parts: TrainingParts, step: int, unet=None) -> Path:
    """The fixed-seed grid of the main EMA (or of `unet`) with the grid sampler: samples/step-<step>.png, trackers."""
    config = parts.config
    request = SamplingRequest(
        config.grid_sampler, config.grid_inference_steps, config.num_grid_images, config.num_grid_images, config.seed
    )
    with sampling_weights(parts.model, parts.ema) if unet is None else nullcontext(unet) as model:
        images = sample_unet(model, parts.sampler.config, request)  # parts.model's forward holds the run's autocast
    path = Path(config.output_dir) / "samples" / f"step-{step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(path)
    log_images(accelerator, images, step)
    return path


def track_fid(accelerator: Accelerator, parts: TrainingParts, fid_tracker: TrainingFid, record: RunRecord) -> None:
    """FID of each EMA (or of the weights without EMA) now, logged; the best (step, EMA) so far goes to best-fid/."""
    config, step = parts.config, record.global_step
    for index, decay in enumerate(parts.ema.max_decays if parts.ema is not None else [None]):
        with sampling_weights(parts.model, parts.ema, index) as model:
            with accelerator.autocast():
                fid = fid_tracker(model, parts.sampler.config)
            accelerator.log({"fid" if index == 0 else f"fid_ema_{decay:g}": fid}, step=step)
            if record.best_fid is None or fid < record.best_fid["fid"]:
                record.best_fid = {"step": step, "fid": round(fid, 4), "ema_decay": decay}
                export_pipeline(model, parts.sampler, Path(config.output_dir) / "best-fid")
                write_json(
                    Path(config.output_dir) / "best-fid" / "fid.json",
                    {
                        **record.best_fid,
                        "reference": config.fid_reference,
                        "num_images": config.fid_num_images,
                        "sampler": config.fid_sampler,
                        "steps": config.fid_inference_steps,
                        "mode": config.fid_mode,
                    },
                )


# ---------------------------------------------------------------------------------------------
# The loop


def fetch_micro_batches(batches: Batches, config: TrainingConfig, step: int, stop_request: StopRequest) -> list:
    """This process's micro-batches of optimizer step `step`. A stream can keep the loop waiting for long: a
    signal during that wait stops the run at once (without a checkpoint of the step not yet taken)."""
    indices = range(step * config.gradient_accumulation_steps, (step + 1) * config.gradient_accumulation_steps)
    try:
        with stop_request.interruptible() if config.streaming else nullcontext():
            return [batches.batch(index) for index in indices]
    except StopRequested:
        checkpoints = list_checkpoints(Path(config.output_dir) / "checkpoints")
        resume = f"Continue from {checkpoints[-1].name} with --resume_from_checkpoint latest." if checkpoints else ""
        raise TrainingStopped(
            f"stopped by {stop_request.name} while waiting for the data of step {step + 1}: no checkpoint was written "
            f"for this step. {resume or 'There is no checkpoint yet.'}",
            exit_code=128 + stop_request.received,
        ) from None


class LogWindow:
    """The loss and speed since the last log line. The loss stays on the device until it is logged; time spent on
    grids, FID and checkpoints (`paused`) is left out of images/s and of the training time."""

    def __init__(self, device):
        self.loss_sum, self.speeds = torch.zeros((), device=device), []
        self.reset()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.losses, self.steps, self.paused, self.started = 0, 0, 0.0, time.perf_counter()

    def add(self, outcome: StepOutcome) -> None:
        self.steps += 1
        if outcome.applied:
            self.loss_sum += outcome.loss
            self.losses += 1

    @contextmanager
    def pause(self):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - started

    def close(self, accelerator: Accelerator, record: RunRecord) -> float:
        """The mean loss over every process (nan when every step was skipped); counts the window's time into the
        record and its speed into `speeds`; starts the next window."""
        seconds = time.perf_counter() - self.started - self.paused
        loss = accelerator.reduce(self.loss_sum, reduction="mean").item() / self.losses if self.losses else math.nan
        self.speeds.append(self.steps * record.images_per_step / seconds)
        record.train_seconds = round(record.train_seconds + seconds, 1)
        if math.isfinite(loss):
            lowest = min(loss, record.losses["lowest"]) if record.losses else loss
            record.losses = {"lowest": round(lowest, 6), "last": round(loss, 6)}
        self.reset()
        return loss


def training_loop(accelerator, parts: TrainingParts, batches: Batches, record: RunRecord, fid_tracker) -> list:
    """Optimizer steps until the budget is spent; returns the images/s of each logging window. Raises TrainingStopped
    for a signal (after a checkpoint) or divergence."""
    config, total_steps, main = parts.config, record.total_steps, accelerator.is_main_process
    progress = tqdm(total=total_steps, initial=record.global_step, desc="Training", disable=not main)
    window, bad_steps_in_a_row = LogWindow(accelerator.device), 0
    parts.unet.train()
    with progress, StopRequest() as stop_request:  # SIGTERM/SIGINT: finish the step, checkpoint, stop
        while record.global_step < total_steps:
            # step: accumulate over the micro-batches, clip, update the weights and the EMA (or skip the step)
            micro_batches = fetch_micro_batches(batches, config, record.global_step, stop_request)
            outcome = optimizer_step(accelerator, parts, micro_batches, record.global_step)
            record.global_step += 1
            step, is_last = record.global_step, record.global_step == total_steps
            progress.update(1)
            window.add(outcome)
            bad_steps_in_a_row = 0 if outcome.applied else bad_steps_in_a_row + 1
            if not outcome.applied:
                record.skipped_steps += 1
                progress.write(
                    f"step {step}: non-finite loss or gradient, step skipped ({bad_steps_in_a_row} in a row)"
                )
                if config.max_bad_steps and bad_steps_in_a_row >= config.max_bad_steps:
                    raise diverged(config, record, bad_steps_in_a_row)

            # log
            if step % config.logging_steps == 0 or is_last:
                logs = {"loss": window.close(accelerator, record), "lr": parts.optimizer.param_groups[0]["lr"]}
                logs.update(images_per_second=window.speeds[-1], skipped_steps=record.skipped_steps)
                if parts.ema is not None:
                    logs["ema_decay"] = parts.ema.current_decays()[0]
                progress.set_postfix(
                    loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{window.speeds[-1]:.0f}"
                )
                accelerator.log(logs, step=step)

            with window.pause():
                # grids, FID, exports: the main process, while the others wait
                due = {
                    "grid": config.save_images_steps and step % config.save_images_steps == 0 and not is_last,
                    "fid": config.fid_steps and (step % config.fid_steps == 0 or is_last),
                    "export": config.save_model_steps and step % config.save_model_steps == 0 and not is_last,
                }
                if main and due["grid"]:
                    progress.write(f"step {step}: sample grid {save_sample_grid(accelerator, parts, step)}")
                if main and due["fid"]:
                    track_fid(accelerator, parts, fid_tracker, record)
                    best = record.best_fid
                    progress.write(
                        f"step {step}: best FID {best['fid']:.2f} (step {best['step']}, EMA {best['ema_decay']})"
                    )
                if main and due["export"]:
                    folder = Path(config.output_dir) / f"pipeline-{step}"
                    with sampling_weights(parts.model, parts.ema) as model:
                        export_pipeline(model, parts.sampler, folder)
                    progress.write(f"step {step}: pipeline exported to {folder}")
                if any(due.values()):
                    accelerator.wait_for_everyone()

                # stop requests (every process stops after the same step: one small all-reduce) and checkpoints
                if stop_request.received is not None:
                    accelerator.set_trigger()
                stop = accelerator.check_trigger() and not is_last
                if (config.checkpointing_steps and (step % config.checkpointing_steps == 0 or is_last)) or stop:
                    save_checkpoint(accelerator, parts, record, batches.state())
            if stop:
                raise TrainingStopped(
                    f"stopped by {stop_request.name} after step {step} of {total_steps}: checkpoint "
                    f"{Path(config.output_dir) / 'checkpoints' / f'checkpoint-{step}'} written. Continue with the "
                    "same command and --resume_from_checkpoint latest.",
                    exit_code=128 + (stop_request.received or 15),
                )
    return window.speeds


def diverged(config: TrainingConfig, record: RunRecord, bad_steps_in_a_row: int) -> TrainingStopped:
    # checkpoints written during the bad streak hold the same weights as the last good step
    good_step = record.global_step - bad_steps_in_a_row
    checkpoints = [
        path
        for path in list_checkpoints(Path(config.output_dir) / "checkpoints")
        if checkpoint_step(path) <= good_step
    ]
    last_good = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "there is no checkpoint yet"
    return TrainingStopped(
        f"training diverged: {bad_steps_in_a_row} steps in a row (up to step {record.global_step}) had a non-finite "
        f"loss or gradient and were skipped; {last_good}. Resume from it with a lower --learning_rate "
        "(--resume_from_checkpoint PATH), or raise --max_bad_steps.",
        exit_code=DIVERGED_EXIT,
    )


# ---------------------------------------------------------------------------------------------
# After the loop


# A finished run has problems when it skipped more than this share of its steps (a healthy run skips none; fp16's
# grad scaler skips are not counted) or its exported weights grew past this size (a trained UNet's are of order 1).
MAX_SKIPPED_SHARE = 0.01
MAX_WEIGHT = 1e4


def zero_output_loss(config: TrainingConfig) -> Optional[float]:
    """The loss of a UNet that outputs zero, where the target alone fixes it: an epsilon target (unit Gaussian noise)
    weighted uniformly (E|eps| = sqrt(2 / pi) for L1, E[eps^2] = 1 for L2); None for other targets and weightings."""
    weighted = config.snr_gamma or config.loss_weighting != "none"
    if config.prediction_type != "epsilon" or weighted or config.distill_teacher is not None:
        return None
    return {"l1": math.sqrt(2 / math.pi), "l2": 1.0, "pseudo_huber": 1.0 - PSEUDO_HUBER_C}[config.loss_type]


def run_problems(record: RunRecord, unet: torch.nn.Module, config: TrainingConfig) -> list[str]:
    """Why the weights `unet` that `record`'s run exports are not to be trusted, if they are not: one line each."""
    problems = []
    zero, losses = zero_output_loss(config), record.losses
    if zero and losses and losses["lowest"] < 0.8 * zero and abs(losses["last"] / zero - 1) < 0.01:
        problems.append(
            f"the loss fell to {losses['lowest']:.4f}, then rose to {losses['last']:.4f}: the loss of a "
            f"UNet that outputs zero ({zero:.4f}), so the model collapsed; lower the learning rate, or add a warmup "
            "(--lr_warmup_steps) or gradient clipping (--max_grad_norm)"
        )
    if record.skipped_steps > MAX_SKIPPED_SHARE * record.global_step:
        problems.append(
            f"{record.skipped_steps} of {record.global_step} steps were skipped for a non-finite loss or gradient "
            f"(more than {MAX_SKIPPED_SHARE:.0%})"
        )
    largest = max(parameter.detach().abs().max().item() for parameter in unet.parameters())
    if not largest <= MAX_WEIGHT:
        problems.append(f"the weights grew to {largest:.3g} (more than {MAX_WEIGHT:g}): the run diverged")
    return problems


def export_run(accelerator: Accelerator, parts: TrainingParts, record: RunRecord, started: float) -> None:
    """The main EMA (or the trained weights) as a stock DDPMPipeline in the output folder and each other EMA in
    ema-<decay>/, a last sample grid, the finished record and the model card; then the Hub push if asked."""
    config, output_dir = parts.config, Path(parts.config.output_dir)
    try:
        for index, decay in list(enumerate(parts.ema.max_decays))[1:] if parts.ema is not None else []:
            with sampling_weights(parts.model, parts.ema, index) as model:
                export_pipeline(model, parts.sampler, output_dir / f"ema-{decay:g}")
        with sampling_weights(parts.model, parts.ema) as model:  # the main EMA, swapped in and out again
            record.problems = run_problems(record, model, config)
            export_pipeline(model, parts.sampler, output_dir)  # refuses non-finite weights: a diverged run, exit 3
            grid_path = save_sample_grid(accelerator, parts, record.global_step, model)
        record.finished, record.wall_seconds = True, round(time.time() - started, 1)
        write_record(output_dir / RECORD_NAME, config, record)
        write_card(output_dir, config.hub_model_id)
    except Exception as error:
        reason = write_failure(error)
        if reason is None:
            raise
        latest = list_checkpoints(output_dir / "checkpoints")
        state = (
            "the pipeline was written, its sample grid, record or card not"
            if (output_dir / "model_index.json").is_file()
            else "each part is written whole or not at all and model_index.json (written last) is missing, so the "
            "folder does not load as a pipeline"
        )
        again = (
            f"the trained weights are in {latest[-1]}: free some space and run the same command with "
            "--resume_from_checkpoint latest to export them"
            if latest and checkpoint_step(latest[-1]) == record.global_step
            else "no checkpoint holds the last step's weights: free some space and train again"
        )
        raise PipelineError(f"{output_dir}: cannot write the export ({reason}); {state}; {again}") from None
    logger.info(
        f"Exported the DDPMPipeline to {output_dir} (sample grid: {grid_path}) in {time.time() - started:.0f} s"
    )
    if record.problems:
        raise TrainingStopped(
            f"training diverged: {'; '.join(record.problems)}. The export is marked so in {RECORD_NAME} "
            f"(run.problems) and its model card{', and was not pushed to the Hub' if config.push_to_hub else ''}; "
            "train again with a lower --learning_rate",
            DIVERGED_EXIT,
        )
    if config.push_to_hub:
        try:
            push_to_hub(output_dir, config.hub_model_id, config.hub_private_repo)
        except PipelineError as error:
            raise PipelineError(
                f"{error}\nThe trained pipeline is kept; push it later with `python -m pipeline.hub push`."
            )


def resolve_after_data(config: TrainingConfig, data: TrainingData, num_processes: int) -> TrainingConfig:
    """What the data decides: the channels (auto), and the epoch-based schedules of the example's flags."""
    changes = {"image_channels": data.channels}
    if data.num_images is not None:
        steps_per_epoch = math.ceil(data.num_images / config.global_batch_size(num_processes))
        if config.save_images_epochs is not None:
            changes["save_images_steps"] = config.save_images_epochs * steps_per_epoch
        if config.save_model_epochs is not None:
            changes["save_model_steps"] = config.save_model_epochs * steps_per_epoch
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------------------------
# The run


def train(config: TrainingConfig) -> Path:
    """Train, checkpoint and export; returns the output folder. Everything that can be refused is checked first."""
    configure_logging(config.log_level)
    resume_from = find_resume_checkpoint(config)
    if config.push_to_hub and not hub_token():
        raise PipelineError("push_to_hub: no Hugging Face token; set HF_TOKEN or run `hf auth login` before training")
    accelerator, precision = setup_accelerator(config)
    main = accelerator.is_main_process
    if main:
        with torch.device("meta"):  # only counted, never allocated
            parameters = count_parameters(build_unet(config))
        if parameters > MAX_PARAMETERS:
            raise PipelineError(
                f"block_out_channels: this UNet has {parameters:,} parameters, more than the {MAX_PARAMETERS:,} a run "
                "here takes (the largest image diffusion UNets have about 2.6 billion)"
            )
        check_output_dir(config, parameters)
    # a teacher that cannot be distilled stops the run here, before the folder is touched; loaded once
    teacher = load_teacher(config) if main and config.distill_teacher is not None else None
    with FolderLock(config.output_dir) if main else nullcontext():  # one run, resume or export per folder
        if main:
            check_folder_owner(config, resuming=resume_from is not None)
        accelerator.wait_for_everyone()
        fid_tracker = TrainingFid(config, accelerator.device) if config.fid_steps and main else None
        device = describe_device(precision["device"])
        logger.info(
            f"Device: {device}; mixed precision {precision['mixed_precision']} ({precision['precision_reason']})"
        )
        for note in start_notes(config, precision["device"]):
            logger.warning(note)
        try:
            run_training(config, accelerator, resume_from, precision, fid_tracker, teacher=teacher)
        finally:
            accelerator.end_training()
    return Path(config.output_dir)


def run_training(
    config: TrainingConfig, accelerator: Accelerator, resume_from, precision: dict, fid_tracker, *, teacher=None
) -> None:
    """Data, model, the checkpoint to continue, the loop and the export, in the folder `train` has made ready."""
    started = time.time()
    data = load_training_data(config, accelerator)
    config = resolve_after_data(config, data, accelerator.num_processes)
    changes = check_resume_compatible(config, resume_from, data.summary) if resume_from is not None else []
    total_steps = count_train_steps(config, data.num_images, accelerator.num_processes)
    unet = build_unet(config)
    parts = build_training(config, accelerator, unet, total_steps, teacher)
    record = RunRecord(
        **describe_environment(accelerator), **precision, num_train_images=data.num_images, data=data.summary,
        **describe_data_origin(config), unet_parameters=count_parameters(unet), total_steps=total_steps,
        images_per_step=config.global_batch_size(accelerator.num_processes), resumed_changes=changes,
    )  # fmt: skip
    if resume_from is not None:
        counters = load_checkpoint(resume_from, accelerator, parts, data.batches if config.streaming else None)
        record = dataclasses.replace(record, **counters)
        resumed = "".join(f"\n  changed: {change}" for change in changes)
        logger.info(f"Resumed from {resume_from} at step {record.global_step}{resumed}")
    if accelerator.is_main_process:
        write_record(Path(config.output_dir) / RECORD_NAME, config, record)
        hparams = {
            name: value if isinstance(value, (int, float, str, bool)) else str(value)
            for name, value in config.to_dict().items()
        }
        accelerator.init_trackers("train_ddpm", config=hparams)  # (TensorBoard's hparams take scalars and strings)
    logger.info(describe_run(config, record, data.num_images))

    speeds = training_loop(accelerator, parts, data.batches, record, fid_tracker)
    record.images_per_second = round(statistics.median(speeds), 1) if speeds else None
    if config.streaming:  # counted by each process while reading
        skipped = torch.tensor(data.batches.files_skipped(), device=accelerator.device)
        record.data = {**record.data, "files_skipped": int(accelerator.reduce(skipped, reduction="sum").item())}
    if accelerator.is_main_process:
        export_run(accelerator, parts, record, started)


def describe_environment(accelerator) -> dict:
    """The hardware, processes, threads and versions a run records."""
    if accelerator.device.type == "cuda":
        hardware = f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    else:
        cpu = device_facts("cpu")
        hardware = f"{accelerator.num_processes} process(es) on cpu ({cpu['name']}, {cpu['cores']} cores)"
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{package: importlib.metadata.version(package) for package in ("diffusers", "accelerate", "datasets")},
    }
    return {
        "hardware": hardware,
        "num_processes": accelerator.num_processes,
        "cpu_threads_per_process": torch.get_num_threads(),
        "versions": versions,
    }


def start_notes(config: TrainingConfig, facts: dict) -> list[str]:
    """What a run tells a user at its start: the quickstart on a CPU without native bf16 (so fp32, and the time it
    takes), other data without a preset."""
    notes = []
    quickstart = config.preset is None or Path(config.preset).name == "quickstart.yaml"
    quickstart = quickstart and config.train_data_dir is None and config.dataset_name == QUICKSTART_DATA
    if quickstart and facts["type"] == "cpu" and not native_bf16(facts):
        notes.append(
            "note: this CPU has no native bf16, so the quickstart trains in fp32: on 2 AVX2 cores 7-9 minutes "
            "(measured on a Zen 3 EPYC; 14 with other work on the machine), against 5-7 on 2 with AVX-512 (README, "
            "Quickstart); `--config configs/quickstart_fast.yaml` trains a smaller UNet in about half of that, at "
            "lower quality"
        )
    if config.preset is None and (config.train_data_dir is not None or config.dataset_name != QUICKSTART_DATA):
        notes.append(
            "note: no --config, so the quickstart's defaults apply (28x28, a 2.5M-parameter UNet); for your own "
            "images start from `--config configs/images64.yaml` (see the README, 'Your own images')"
        )
    return notes


def dry_run(config: TrainingConfig) -> None:
    """Print the resolved config, the UNet and the step count; decode nothing, train nothing."""
    state = PartialState(cpu=launched_on_cpus())
    if not state.is_main_process:
        return
    print(json.dumps(config.to_dict(), indent=2))
    print(describe_unet(build_unet(config)))
    try:
        num_images = (
            None
            if config.streaming
            else len(open_source(DataSource.from_config(config), config.max_image_bytes).table)
        )
        source_note = " (streamed: the length is not known ahead)" if config.streaming else ""
    except PipelineError as error:
        num_images, source_note = None, f" (the data source is not readable yet: {error})"
    if config.max_train_samples is not None:
        num_images = min(num_images or config.max_train_samples, config.max_train_samples)
    if num_images is None and config.max_train_steps is None:
        print(f"training steps: unknown until the data source can be read{source_note}")
        return
    steps = count_train_steps(config, num_images or 0, state.num_processes)
    print(
        f"training steps: {steps:,} of {config.global_batch_size(state.num_processes)} images on "
        f"{num_images or 'unknown'} training images{source_note}"
    )
