"""GPU check: training throughput, model FLOP utilisation, peak memory and sampling time on one NVIDIA GPU.

    python bench/gpu_check.py --out gpu_check.json        # under 5 minutes on an H200, 3 of them compiling
    python bench/gpu_check.py --channels_last --fp16      # also channels_last and an fp16 run (about 7 minutes)

One call, nothing installed, nothing downloaded. For the report preset and the improved preset at
64x64 and their batch of 128, bf16 autocast:
  - the measured ceilings: a large bf16 matrix product and a bf16 3x3 convolution;
  - train()'s own optimizer step (pipeline.train.optimizer_step: step_loss, fused AdamW, the foreach
    EMA, gradient clipping, the non-finite check), eager and under torch.compile: images/s, forward+backward FLOPs per
    image (torch.utils.flop_counter), model FLOP utilisation against the measured matmul ceiling
    and against the datasheet's 989 TFLOP/s, peak memory, time per EMA update;
  - the real `train()` loop for 40 steps on a folder of images (decode cache, Accelerate,
    checkpoint, export) in bf16, and with --fp16 in fp16 (grad scaler), so the CUDA path runs end to end;
  - sampling time for 128 images per sampler (random weights: the time does not depend on them).
The JSON is rewritten after each part, so a run cut short keeps what it measured.
"""

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import flops_per_image  # noqa: E402, F401  (gpu_efficiency imports it from here too)

from pipeline.arguments import load_preset  # noqa: E402
from pipeline.config import TrainingConfig  # noqa: E402
from pipeline.model import build_noise_scheduler, build_unet, count_parameters  # noqa: E402
from pipeline.sample import generate, make_sampler  # noqa: E402


REPO = Path(__file__).resolve().parent.parent
PRESETS = {"report": REPO / "configs" / "report_sfhq64.yaml", "improved": REPO / "configs" / "sfhq64_improved.yaml"}
DATASHEET_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16


def cuda_time(function, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `function` over `repeats` runs, timed with CUDA events."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def ceilings() -> dict:
    a, b = (
        torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16),
        torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16),
    )
    matmul = 2 * 8192**3 / cuda_time(lambda: a @ b, 10, 3) / 1e12
    conv = (
        torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
        .cuda()
        .to(torch.bfloat16)
        .to(memory_format=torch.channels_last)
    )
    x = torch.randn(128, 256, 64, 64, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv_tflops = 2 * 128 * 256 * 64 * 64 * 256 * 9 / cuda_time(lambda: conv(x), 10, 3) / 1e12
    return {"matmul_bf16_tflops": round(matmul, 1), "conv3x3_bf16_tflops": round(conv_tflops, 1)}


def preset_config(name: str, **overrides) -> TrainingConfig:
    values = load_preset(str(PRESETS[name]))
    values.update({"mixed_precision": "bf16", "output_dir": tempfile.mkdtemp(), **overrides})
    return TrainingConfig(**values)


def train_step_benchmark(name: str, compile_model: bool, channels_last: bool, steps: int, peak: float) -> dict:
    """train()'s own step (pipeline.train.optimizer_step, with train()'s Accelerator setup) in isolation: uint8
    images already on the GPU, as the decode-once cache delivers them."""
    from accelerate.state import AcceleratorState

    from pipeline.batches import CachedBatches
    from pipeline.train import build_training, optimizer_step, setup_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    config = preset_config(name, torch_compile=compile_model, logger="none")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    accelerator = setup_accelerator(config)
    unet = build_unet(config)
    parameters = count_parameters(unet)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    parts = build_training(config, accelerator, unet, total_steps=steps + 3)
    pixels = np.random.default_rng(0).integers(0, 256, (4096, 64, 64, config.image_channels), dtype=np.uint8)
    batches = CachedBatches.from_pixels(pixels, accelerator.device, config.train_batch_size, config.seed)
    batch_size = config.train_batch_size

    def step(index: int) -> None:
        optimizer_step(accelerator, parts, [batches.batch(index)], index)

    started = time.perf_counter()
    for index in range(3):  # warm-up: cuDNN autotuning, or compilation
        step(index)
    torch.cuda.synchronize()
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(3, 3 + steps):
        step(index)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    images_per_second = steps * batch_size / seconds
    flops = flops_per_image(config)
    achieved = flops * images_per_second / 1e12
    return {
        "preset": name,
        "compile": compile_model,
        "channels_last": channels_last,
        "parameters": parameters,
        "batch_size": batch_size,
        "images_per_second": round(images_per_second, 1),
        "step_ms": round(1000 * seconds / steps, 2),
        "gflops_per_image_fwd_bwd": round(flops / 1e9, 2),
        "achieved_tflops": round(achieved, 1),
        "mfu_vs_measured_matmul": round(achieved / peak, 3),
        "mfu_vs_datasheet": round(achieved / DATASHEET_BF16_TFLOPS, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "ema_update_ms": round(1000 * cuda_time(lambda: parts.ema.update(parts.unet.parameters()), 10), 3)
        if parts.ema
        else None,
        "warmup_or_compile_seconds": round(warmup_seconds, 1),
    }


def sampling_benchmark(name: str, chain_steps_timed: int = 100) -> list[dict]:
    """Seconds for 128 images per sampler. The full DDPM chain is timed over its first `chain_steps_timed`
    steps and scaled to T (every step of the chain costs the same: one UNet call and one scheduler update)."""
    config = preset_config(name)
    unet = build_unet(config).cuda().eval()
    scheduler = build_noise_scheduler(config)
    rows = []
    for sampler_name, steps in (
        ("ddpm", config.ddpm_num_steps),
        ("ddim", 50),
        ("dpmsolver++", 25),
        ("dpmsolver++", 20),
    ):
        sampler = make_sampler(sampler_name, scheduler.config)
        timed = min(steps, chain_steps_timed) if sampler_name == "ddpm" else steps
        with torch.autocast("cuda", dtype=torch.bfloat16):
            generate(unet, sampler, 16, 2, seed=0)  # warm-up
            sampler.set_timesteps(steps)
            timesteps = sampler.timesteps[:timed]
            generators = [torch.Generator().manual_seed(index) for index in range(128)]
            sample = torch.randn(128, config.image_channels, 64, 64, device="cuda")
            torch.cuda.synchronize()
            started = time.perf_counter()
            with torch.no_grad():
                if sampler_name == "ddpm":  # the chain's own loop, as pipeline.sample runs it, over `timed` steps
                    for timestep in timesteps:
                        output = unet(sample, timestep).sample.float()
                        sample = sampler.step(output, timestep, sample, generator=generators).prev_sample
                else:
                    generate(unet, sampler, 128, steps, seed=0, batch_size=128)
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) * steps / timed
        rows.append(
            {
                "preset": name,
                "sampler": sampler_name,
                "steps": steps,
                "steps_timed": timed,
                "seconds_per_128_images": round(seconds, 2),
            }
        )
    return rows


def logged_scalars(logs: Path, tag: str, wall_time: bool = False) -> list[float]:
    """The values (or wall times) of one scalar that a run logged to TensorBoard under `logs`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for folder in sorted({path.parent for path in logs.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            return [event.wall_time if wall_time else event.value for event in accumulator.Scalars(tag)]
    raise KeyError(f"no scalar {tag!r} logged under {logs}")


def real_training_run(name: str, precision: str, steps: int, folder: Path) -> dict:
    """The real train(): images decoded once from a folder, Accelerate, a checkpoint, the export."""
    from accelerate.state import AcceleratorState

    from pipeline.train import train

    AcceleratorState._reset_state(reset_partial_state=True)
    output_dir = Path(tempfile.mkdtemp()) / "run"
    config = preset_config(
        name,
        train_data_dir=str(folder),
        mixed_precision=precision,
        num_epochs=None,
        max_train_steps=steps,
        logging_steps=10,
        save_images_steps=0,
        checkpointing_steps=steps // 2,
        num_grid_images=16,
        grid_sampler="dpmsolver++",
        grid_inference_steps=20,
        output_dir=str(output_dir),
        lr_warmup_steps=0,
        intermediate_resolution=None,
    )
    started = time.perf_counter()
    train(config)
    wall = time.perf_counter() - started
    windows = logged_scalars(output_dir / "logs", "images_per_second")[1:]  # the first window holds the warm-up
    losses = logged_scalars(output_dir / "logs", "loss")
    run = json.loads((output_dir / "training_config.json").read_text())["run"]
    shutil.rmtree(output_dir.parent, ignore_errors=True)
    return {
        "preset": name,
        "precision": precision,
        "steps": steps,
        "images_per_second_median_window": round(statistics.median(windows), 1) if windows else None,
        "first_loss": round(losses[0], 4),
        "last_loss": round(losses[-1], 4),
        "skipped_steps": run.get("skipped_steps"),
        "wall_seconds": round(wall, 1),
        "hardware": run["hardware"],
    }


def write_image_folder(count: int = 512) -> Path:
    from PIL import Image

    folder = Path(tempfile.mkdtemp()) / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:96] / 96
    for index in range(count):
        image = np.stack([x * rng.uniform(), y * rng.uniform(), (1 - x * y) * rng.uniform()], axis=-1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{index:05d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="Timed training steps per variant.")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--no_compile", action="store_true")
    parser.add_argument(
        "--channels_last",
        action="store_true",
        help="Also time the report preset in channels_last (slower on an H200).",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="Also run the real loop in fp16 with the grad scaler (the improved preset).",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU: this check is for a machine with one NVIDIA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    import diffusers

    result = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)

    def save():
        out.write_text(json.dumps(result, indent=2) + "\n")

    def part(key, function, *arguments):
        started = time.perf_counter()
        try:
            value = function(*arguments)
        except Exception as error:  # keep going: one failed part must not hide the others
            traceback.print_exc()
            value = {"error": f"{type(error).__name__}: {error}"}
        print(f"[{time.perf_counter() - started:6.1f} s] {key}: {json.dumps(value)}", flush=True)
        result.setdefault(key, []).append(value)
        save()
        return value

    peak = part("ceilings", ceilings)
    peak_tflops = peak.get("matmul_bf16_tflops", DATASHEET_BF16_TFLOPS)
    for name in PRESETS:
        part("train_step", train_step_benchmark, name, False, False, args.steps, peak_tflops)
    if args.channels_last:
        part("train_step", train_step_benchmark, "report", False, True, args.steps, peak_tflops)
    for name in PRESETS:
        part("sampling", sampling_benchmark, name)
    folder = write_image_folder()
    part("real_train", real_training_run, "report", "bf16", 40, folder)
    if args.fp16:
        part("real_train", real_training_run, "improved", "fp16", 20, folder)
    if not args.no_compile:
        for name in PRESETS:
            part("train_step", train_step_benchmark, name, True, False, args.steps, peak_tflops)

    print("\n" + "=" * 100)
    print(f"{result['gpu']}, torch {result['torch']}; ceilings {result['ceilings'][0]}")
    print(
        f"{'preset':<10}{'compile':>8}{'ch_last':>8}{'img/s':>9}{'ms/step':>9}{'GF/img':>8}{'TFLOP/s':>9}"
        f"{'MFU':>7}{'MFU(ds)':>8}{'GiB':>7}{'EMA ms':>8}"
    )
    for row in result.get("train_step", []):
        if "error" in row:
            print(f"error: {row['error']}")
            continue
        print(
            f"{row['preset']:<10}{row['compile']!s:>8}{row['channels_last']!s:>8}{row['images_per_second']:>9}{row['step_ms']:>9}"
            f"{row['gflops_per_image_fwd_bwd']:>8}{row['achieved_tflops']:>9}{row['mfu_vs_measured_matmul']:>7}"
            f"{row['mfu_vs_datasheet']:>8}{row['peak_memory_gib']:>7}{row['ema_update_ms']!s:>8}"
        )
    for rows in result.get("sampling", []):
        for row in rows if isinstance(rows, list) else [rows]:
            print(json.dumps(row))
    for row in result.get("real_train", []):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
