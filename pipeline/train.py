"""The training run: data, model, optimisation, checkpoints, sample grids and the final export.

`train(config)` is one function cut into sections, in the order they happen. The pieces
with one job each (checkpoint naming, export, LR schedule) are small functions around it.
"""

import functools
import json
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMPipeline
from diffusers.optimization import get_scheduler
from huggingface_hub import get_token
from tqdm.auto import tqdm

from .checkpoint import (
    CHECKPOINT_PREFIX,
    CheckpointError,
    TrainingState,
    check_resume_compatible,
    checkpoint_step,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .config import ConfigError, TrainingConfig, parse_config, save_config
from .data import (
    DataError,
    ImageStream,
    StreamingImages,
    describe_prepared,
    open_source,
    prepare_images,
)
from .diffusion import cosine_with_min_lr, step_loss
from .ema import EMA
from .evaluate import EvalError, TrainingFid
from .hub import HubError, push_to_hub, write_card
from .model import build_noise_scheduler, build_unet, count_parameters, describe_unet
from .sample import generate, image_grid, make_sampler

EXPORT_FILES = ("model_index.json", "unet", "scheduler")


# ---------------------------------------------------------------------------------------------
# Helpers


class TrainingStopped(RuntimeError):
    """The run stopped early on purpose (a signal, divergence); `exit_code` is what the process exits with."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequested(Exception):
    """A signal arrived during a wait that it interrupts (see StopRequest.interruptible); args[0] is its number."""


class StopRequest:
    """SIGTERM or SIGINT asks the loop to stop after the current step and checkpoint; a second SIGINT stops at once.

    Inside `interruptible()` (a wait for data, which can last long on a slow or broken stream) the
    signal ends the wait at once by raising StopRequested.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}
        self._interruptible = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @contextmanager
    def interruptible(self):
        if self.received is not None:
            raise StopRequested(self.received)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _handle(self, number, frame):
        if self.received == signal.SIGINT and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number
        if self._interruptible:
            raise StopRequested(number)


def count_train_steps(config: TrainingConfig, num_images: int, num_processes: int) -> int:
    """Optimizer steps in the run: --max_train_steps, or enough global batches for --num_epochs."""
    if config.max_train_steps is not None:
        return config.max_train_steps
    images_per_step = config.train_batch_size * num_processes * config.gradient_accumulation_steps
    return math.ceil(config.num_epochs * num_images / images_per_step)


def build_optimizer(config: TrainingConfig, parameters, device: Optional[torch.device] = None) -> torch.optim.Optimizer:
    """Adam or AdamW; the fused CUDA kernel when the parameters are on a GPU (one launch per step instead of many)."""
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=True if device is not None and device.type == "cuda" else None,
    )


def build_lr_scheduler(config: TrainingConfig, optimizer, total_steps: int):
    """diffusers' schedules; `cosine_with_min_lr` (which diffusers lacks) decays to --min_learning_rate."""
    if config.lr_scheduler == "cosine_with_min_lr":
        multiplier = functools.partial(
            cosine_with_min_lr,
            warmup_steps=config.lr_warmup_steps,
            total_steps=total_steps,
            min_ratio=config.min_learning_rate / config.learning_rate,
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=total_steps)


def export_pipeline(unet, noise_scheduler, output_dir: Path) -> None:
    """Save a stock DDPMPipeline (safetensors only), replacing an earlier export only once the new one is whole."""
    for name, parameter in unet.named_parameters():
        if not torch.isfinite(parameter).all():
            raise RuntimeError(f"refusing to export: parameter {name} holds NaN or infinite values")
    staging = output_dir / ".export.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(staging, safe_serialization=True)
    for name in EXPORT_FILES:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        (staging / name).replace(target)
    shutil.rmtree(staging)


def save_sample_grid(unet, config: TrainingConfig, noise_scheduler, global_step: int, accelerator: Accelerator) -> Path:
    """Sample the fixed-seed grid with the cheap grid sampler and write samples/step-<step>.png."""
    sampler = make_sampler(config.grid_sampler, noise_scheduler.config)
    was_training = unet.training
    unet.eval()
    with accelerator.autocast():
        images = generate(unet, sampler, config.num_grid_images, config.grid_inference_steps, seed=config.seed)
    unet.train(was_training)
    path = Path(config.output_dir) / "samples" / f"step-{global_step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(path)
    if config.logger == "tensorboard":
        accelerator.get_tracker("tensorboard").log_images({"samples": images}, step=global_step, dataformats="NHWC")
    return path


@contextmanager
def ema_weights(model, ema: Optional[EMA], index: int = 0):
    """The model with EMA `index` in place (or its own weights without EMA), in eval mode, inside the block."""
    if ema is not None:
        with ema.swapped_in(model, index):
            yield model
        return
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_output_dir(config: TrainingConfig, parameters: int) -> None:
    """Before any work: the output folder can be created and written, and has room for a checkpoint (a warning if not)."""
    output_dir = Path(config.output_dir)
    missing = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]
    existing = output_dir.parents[len(missing) - 1] if missing else output_dir
    if not existing.is_dir():
        raise ConfigError(f"output_dir: {existing} exists and is not a folder")
    try:  # create what is missing and a file in it, then remove them again: nothing is left if the run stops early
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"output_dir: cannot write to {output_dir} ({error.strerror or error})") from None
    finally:
        for folder in missing:
            if folder.is_dir():
                folder.rmdir()
    # weights + two Adam moments + each EMA, fp32
    checkpoint_bytes = 4 * parameters * (3 + (1 + len(config.ema_extra_decays) if config.use_ema else 0))
    free = shutil.disk_usage(existing).free
    if config.checkpointing_steps and free < 2 * checkpoint_bytes:
        warnings.warn(
            f"{output_dir} has {free / 2**20:,.0f} MiB free; one checkpoint takes about {checkpoint_bytes / 2**20:,.0f} MiB "
            f"(and --checkpoints_total_limit {config.checkpoints_total_limit} are kept)"
        )


def track_fid(fid_tracker, model, noise_scheduler, global_step: int, output_dir: Path, best: Optional[dict], accelerator, progress) -> dict:
    """FID of `model` (the EMA weights) now; logged, and exported to best-fid/ when it is the best so far. Returns the best."""
    with accelerator.autocast():
        fid = fid_tracker(model, noise_scheduler.config)
    accelerator.log({"fid": fid}, step=global_step)
    if best is None or fid < best["fid"]:
        best = {"step": global_step, "fid": round(fid, 4)}
        export_pipeline(model, noise_scheduler, output_dir / "best-fid")
        (output_dir / "best-fid" / "fid.json").write_text(json.dumps({**best, "reference": fid_tracker.config.fid_reference,
            "num_images": fid_tracker.config.fid_num_images, "sampler": fid_tracker.config.fid_sampler,
            "steps": fid_tracker.config.fid_inference_steps, "mode": fid_tracker.config.fid_mode}, indent=2) + "\n")  # fmt: skip
    progress.write(f"step {global_step}: FID {fid:.2f} (best {best['fid']:.2f} at step {best['step']})")
    return best


def describe_environment(accelerator: Accelerator) -> dict:
    import accelerate
    import datasets
    import diffusers

    if accelerator.device.type == "cuda":
        hardware = f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    else:
        hardware = f"{accelerator.num_processes} process(es) on {accelerator.device.type} ({os.cpu_count()} cores, {platform.machine()})"
    return {
        "hardware": hardware,
        "num_processes": accelerator.num_processes,
        "cpu_threads_per_process": torch.get_num_threads(),
        "mixed_precision": accelerator.mixed_precision,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "accelerate": accelerate.__version__,
            "datasets": datasets.__version__,
        },
    }


def launched_on_cpus() -> bool:
    """Several processes (torchrun's LOCAL_RANK is set) on a machine without GPUs.

    Accelerate joins such processes into one gloo group only when asked for the CPU; without
    this, `accelerate launch --multi_gpu --num_processes 2` on a CPU machine would start two
    independent runs writing to the same folder.
    """
    return "LOCAL_RANK" in os.environ and not torch.cuda.is_available()


def tracker_config(config: TrainingConfig) -> dict:
    """TensorBoard's hparams accept scalars and strings only."""
    return {name: value if isinstance(value, (int, float, str, bool)) else str(value) for name, value in config.to_dict().items()}


# ---------------------------------------------------------------------------------------------
# The run


def train(config: TrainingConfig) -> Path:
    """Train, checkpoint and export; returns the output folder."""
    started = time.time()
    output_dir = Path(config.output_dir)
    resume_from = find_resume_checkpoint(config)
    if resume_from is not None:
        check_resume_compatible(config, resume_from)
    if config.push_to_hub and not get_token():
        raise ConfigError("push_to_hub: no Hugging Face token; set HF_TOKEN or run `hf auth login` before training")

    # ----- Accelerate -----
    accelerator = Accelerator(
        cpu=launched_on_cpus(),
        mixed_precision=config.mixed_precision,
        log_with=None if config.logger == "none" else config.logger,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        step_scheduler_with_optimizer=False,  # the LR schedule counts optimizer steps, whatever the process count
        dynamo_backend="inductor" if config.torch_compile else "no",
    )
    set_seed(config.seed, device_specific=True)  # dropout and sampling; the training draws come from step_draws
    if accelerator.device.type == "cuda" and config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 parts (and fp32 runs such as the report preset)
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each convolution once
    if accelerator.device.type == "cpu":
        # `accelerate launch` without --cpu sets OMP_NUM_THREADS=1, which halves the speed on 2 cores.
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(config.cpu_threads or max(1, len(os.sched_getaffinity(0)) // local_processes))

    # Before any work: the output folder, the reference and the Inception weights for FID during training
    unet = build_unet(config)
    if accelerator.is_main_process:
        check_output_dir(config, count_parameters(unet))
    fid_tracker = TrainingFid(config, accelerator.device) if config.fid_steps and accelerator.is_main_process else None

    # ----- data: decoded once (main process first, the others read its cache), or streamed -----
    images_per_step = config.train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    if config.streaming:
        stream = StreamingImages(config, accelerator.process_index, accelerator.num_processes, accelerator.device)
        num_images, data_summary = None, {"source": f"stream of {config.dataset_name} ({config.split})"}
    else:
        with accelerator.main_process_first():
            prepared = prepare_images(config)
        accelerator.print(describe_prepared(prepared.summary))
        pixels = np.array(prepared.pixels)  # (N, H, W, C) uint8, read into memory (the cache is memory-mapped)
        if len(pixels) < config.train_batch_size * accelerator.num_processes:
            raise DataError(
                f"train_batch_size: the data holds {len(pixels)} images, fewer than one global batch of "
                f"{config.train_batch_size * accelerator.num_processes}"
            )
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(accelerator.device)  # (N, C, H, W) uint8
        stream = ImageStream(images, config.train_batch_size, config.seed, accelerator.process_index, accelerator.num_processes)
        num_images = len(images)
        data_summary = {key: prepared.summary[key] for key in ("source", "images_found", "images_kept", "files_skipped")}
    total_steps = count_train_steps(config, num_images, accelerator.num_processes)

    # ----- model, optimizer, schedules, EMA -----
    unet = unet.to(accelerator.device)
    noise_scheduler = build_noise_scheduler(config)
    optimizer = build_optimizer(config, unet.parameters(), accelerator.device)
    lr_scheduler = build_lr_scheduler(config, optimizer, total_steps)
    ema = EMA(unet, [config.ema_max_decay, *config.ema_extra_decays], config.ema_inv_gamma, config.ema_power) if config.use_ema else None
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    run = {
        **describe_environment(accelerator),
        "num_train_images": num_images,
        "data": data_summary,
        "unet_parameters": count_parameters(unet),
        "total_steps": total_steps,
        "images_per_step": images_per_step,
    }
    if accelerator.is_main_process:
        save_config(config, output_dir / "training_config.json", {**run, "finished": False})
        accelerator.init_trackers("train_ddpm", config=tracker_config(config))

    # ----- resume -----
    state = TrainingState()
    if resume_from is not None:
        state = load_checkpoint(resume_from, accelerator, unet, optimizer, lr_scheduler, ema, stream if config.streaming else None)
        accelerator.print(f"Resumed from {resume_from} at step {state.global_step}")
    global_step, train_seconds = state.global_step, state.train_seconds
    run["skipped_steps"], run["best_fid"] = state.skipped_steps, state.best_fid
    epochs = f"{total_steps * images_per_step / num_images:.1f} epochs" if num_images else "streamed"
    accelerator.print(
        f"Training {count_parameters(unet):,} parameters on {num_images or 'a stream of'} images: {total_steps:,} steps of "
        f"{images_per_step} images ({epochs}), {accelerator.num_processes} process(es), mixed precision {config.mixed_precision}"
    )

    # ----- training loop -----
    progress = tqdm(total=total_steps, initial=global_step, desc="Training", disable=not accelerator.is_main_process)
    loss_sum, loss_count = torch.zeros((), device=accelerator.device), 0
    window_start, window_steps = time.perf_counter(), 0
    bad_steps_in_a_row = 0
    unet.train()
    with StopRequest() as stop_request:  # SIGTERM/SIGINT: finish the step, checkpoint, stop
        while global_step < total_steps:
            # 1. forward and backward over the micro-batches of one optimizer step
            losses = torch.zeros((), device=accelerator.device)
            for micro_step in range(config.gradient_accumulation_steps):
                micro_batch_index = global_step * config.gradient_accumulation_steps + micro_step
                try:
                    with stop_request.interruptible() if config.streaming else nullcontext():  # only a stream can wait long
                        batch = stream.batch(micro_batch_index)
                except StopRequested as stopped:
                    progress.close()
                    accelerator.end_training()
                    checkpoints = list_checkpoints(output_dir / "checkpoints")
                    raise TrainingStopped(
                        f"stopped by {signal.Signals(stopped.args[0]).name} while waiting for the data of step {global_step + 1}: "
                        f"no checkpoint was written for this step. "
                        + (f"Continue from {checkpoints[-1].name} with --resume_from_checkpoint latest." if checkpoints
                           else "There is no checkpoint yet."),
                        exit_code=128 + stopped.args[0],
                    ) from None  # fmt: skip
                last_micro_step = micro_step == config.gradient_accumulation_steps - 1
                with nullcontext() if last_micro_step else accelerator.no_sync(unet):
                    loss = step_loss(unet, noise_scheduler, config, batch, micro_batch_index, accelerator.process_index, accelerator.num_processes)
                    accelerator.backward(loss / config.gradient_accumulation_steps)
                losses += loss.detach()

            # 2. optimizer, LR schedule and EMA step; a step with a non-finite loss or gradient is skipped
            grad_norm = accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm if config.max_grad_norm > 0 else math.inf)
            # fp16: the grad scaler skips overflowing steps itself. Otherwise one host sync per step: gradients
            # are already averaged over processes, so every process takes the same decision.
            finite = config.mixed_precision == "fp16" or bool(torch.isfinite(grad_norm) & torch.isfinite(losses))
            if finite:
                optimizer.step()
                if ema is not None:
                    ema.update(unet.parameters())
                loss_sum += losses
                loss_count += config.gradient_accumulation_steps
                bad_steps_in_a_row = 0
            else:
                run["skipped_steps"] += 1
                bad_steps_in_a_row += 1
                progress.write(f"step {global_step + 1}: non-finite loss or gradient, step skipped ({bad_steps_in_a_row} in a row)")
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            window_steps += 1
            progress.update(1)
            if config.max_bad_steps and bad_steps_in_a_row >= config.max_bad_steps:
                good_step = global_step - bad_steps_in_a_row  # checkpoints written during the bad streak hold the same weights
                checkpoints = [path for path in list_checkpoints(output_dir / "checkpoints") if checkpoint_step(path) <= good_step]
                last_good = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "there is no checkpoint yet"
                accelerator.end_training()
                raise TrainingStopped(
                    f"training diverged: {bad_steps_in_a_row} steps in a row (up to step {global_step}) had a non-finite loss or "
                    f"gradient and were skipped; {last_good}. Resume from it with a lower --learning_rate "
                    f"(--resume_from_checkpoint PATH), or raise --max_bad_steps.",
                    exit_code=3,
                )

            # 3. logs (the loss is read back from the device only here, not every step)
            if global_step % config.logging_steps == 0 or global_step == total_steps:
                elapsed = time.perf_counter() - window_start
                train_seconds += elapsed
                logs = {
                    # nan when every step of the window was skipped
                    "loss": accelerator.reduce(loss_sum, reduction="mean").item() / loss_count if loss_count else math.nan,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "images_per_second": window_steps * images_per_step / elapsed,
                    "skipped_steps": run["skipped_steps"],
                }
                if ema is not None:
                    logs["ema_decay"] = ema.current_decays()[0]
                progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['images_per_second']:.0f}")
                accelerator.log(logs, step=global_step)
                loss_sum.zero_()
                loss_count = 0
                window_start, window_steps = time.perf_counter(), 0

            # 4. sample grids and checkpoints (their time is left out of images/s)
            pause_start = time.perf_counter()
            is_last = global_step == total_steps
            if config.save_images_steps and global_step % config.save_images_steps == 0 and not is_last:
                if accelerator.is_main_process:
                    with ema_weights(accelerator.unwrap_model(unet, keep_torch_compile=False), ema) as model:
                        path = save_sample_grid(model, config, noise_scheduler, global_step, accelerator)
                    progress.write(f"step {global_step}: sample grid {path}")
                accelerator.wait_for_everyone()
            if config.fid_steps and (global_step % config.fid_steps == 0 or is_last):
                if accelerator.is_main_process:
                    with ema_weights(accelerator.unwrap_model(unet, keep_torch_compile=False), ema) as model:
                        run["best_fid"] = track_fid(fid_tracker, model, noise_scheduler, global_step, output_dir, run.get("best_fid"),
                                                    accelerator, progress)  # fmt: skip
                accelerator.wait_for_everyone()
            stop = stop_request.received is not None
            if accelerator.num_processes > 1:  # every process must stop after the same step
                stop = accelerator.reduce(torch.tensor(float(stop), device=accelerator.device), reduction="sum").item() > 0
            if (config.checkpointing_steps and (global_step % config.checkpointing_steps == 0 or is_last)) or (stop and not is_last):
                state = TrainingState(global_step, round(train_seconds, 1), run["skipped_steps"], run.get("best_fid"))
                save_checkpoint(accelerator, config, run, state, unet, optimizer, lr_scheduler, ema,
                                stream.state() if config.streaming else None)  # fmt: skip
            window_start += time.perf_counter() - pause_start
            if stop and not is_last:
                progress.close()
                accelerator.end_training()
                name = signal.Signals(stop_request.received).name if stop_request.received else "a signal to another process"
                raise TrainingStopped(
                    f"stopped by {name} after step {global_step} of {total_steps}: checkpoint "
                    f"{output_dir / 'checkpoints' / f'{CHECKPOINT_PREFIX}{global_step}'} written. Continue with the same "
                    f"command and --resume_from_checkpoint latest.",
                    exit_code=128 + (stop_request.received or signal.SIGTERM),
                )
    progress.close()
    if config.streaming:
        skipped = accelerator.reduce(torch.tensor(sum(stream.skipped.values()), device=accelerator.device), reduction="sum")
        run["data"]["files_skipped"] = int(skipped.item())

    # ----- export: EMA weights into a stock DDPMPipeline -----
    if accelerator.is_main_process:
        export_unet = build_unet(config)
        export_unet.load_state_dict(accelerator.unwrap_model(unet, keep_fp32_wrapper=False, keep_torch_compile=False).state_dict())
        export_unet.to(accelerator.device)
        if ema is not None:
            for index, decay in enumerate(ema.max_decays[1:], start=1):  # the other EMA lengths, each a pipeline of its own
                ema.copy_to(export_unet.parameters(), index)
                export_pipeline(export_unet, noise_scheduler, output_dir / f"ema-{decay:g}")
            ema.copy_to(export_unet.parameters(), 0)
        export_pipeline(export_unet, noise_scheduler, output_dir)
        grid_path = save_sample_grid(export_unet, config, noise_scheduler, global_step, accelerator)
        run.update(
            finished=True,
            global_step=global_step,
            train_seconds=round(train_seconds, 1),
            wall_seconds=round(time.time() - started, 1),
        )
        save_config(config, output_dir / "training_config.json", run)
        write_card(output_dir, config.hub_model_id)
        accelerator.print(f"Exported the DDPMPipeline to {output_dir} (sample grid: {grid_path}) in {time.time() - started:.0f} s")
        if config.push_to_hub:
            push_to_hub(output_dir, config.hub_model_id, config.hub_private_repo)
    accelerator.end_training()
    return output_dir


# ---------------------------------------------------------------------------------------------
# Command line


def dry_run(config: TrainingConfig) -> None:
    """Print the resolved config, the UNet and the step count; decode nothing, train nothing."""
    state = PartialState(cpu=launched_on_cpus())
    if not state.is_main_process:
        return
    print(json.dumps(config.to_dict(), indent=2))
    print(describe_unet(config, build_unet(config)))
    try:
        num_images = None if config.streaming else len(open_source(config).table)
        source_note = " (streamed: the length is not known ahead)" if config.streaming else ""
    except DataError as error:
        num_images, source_note = None, f" (the data source is not readable yet: {error})"
    if config.max_train_samples is not None:
        num_images = min(num_images or config.max_train_samples, config.max_train_samples)
    if num_images is None and config.max_train_steps is None:
        print(f"training steps: unknown until the data source can be read{source_note}")
        return
    steps = count_train_steps(config, num_images or 0, state.num_processes)
    images_per_step = config.train_batch_size * state.num_processes * config.gradient_accumulation_steps
    print(f"training steps: {steps:,} of {images_per_step} images on {num_images or 'unknown'} training images{source_note}")


def main(argv: Optional[list[str]] = None) -> None:
    try:
        config = parse_config(argv)
        if config.dry_run:
            dry_run(config)
        else:
            train(config)
    except (ConfigError, DataError, EvalError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as error:
        print(f"{'error: ' if error.exit_code == 3 else ''}{error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except HubError as error:
        print(f"error: {error}\nThe trained pipeline is kept; push it later with `python -m pipeline.hub push`.", file=sys.stderr)
        sys.exit(2)
