"""GPU efficiency in one prepared call: the levers of train()'s step, the real loop compiled, sampling on the
device, and the diffusers example side by side on the same GPU.

    python bench/gpu_efficiency.py --example_script bench/work/diffusers/train_unconditional.py --out gpu.json
    python bench/gpu_efficiency.py --smoke --out smoke.json     # every part at toy size on the CPU (checks the script)

The example script is diffusers' examples/unconditional_image_generation/train_unconditional.py at a
pinned commit, fetched into the ignored bench/work/ and carried to the GPU machine; it is a
reference, never committed. Parts (the JSON is rewritten after each, so a run cut short keeps what
it measured):

 1. Levers on train()'s own step (pipeline.train.optimizer_step with train()'s Accelerator), report
    and improved presets, batch 128 at 64x64, bf16: eager, then one lever at a time: torch.compile
    in each mode (compile seconds and the break-even step count), TF32 off, fused AdamW off,
    channels_last, batch 256. Images/s and the fraction of the measured bf16 matmul peak (MFU).
 2. The real train() loop eager and compiled (the given mode), N steps each on a folder of PNGs:
    images/s (median logging window) and the two loss curves side by side.
 3. Sampling 128 images, the report preset: the 300-step DDPM chain and DPM-Solver++ 20, noise
    drawn on the CPU or on the GPU, the UNet eager or compiled.
 4. The diffusers example against train_ddpm.py on the same SFHQ-shaped 1024x1024 JPEGs, the same
    UNet (the report preset's, through --model_config_name_or_path) and batch: the example with
    its defaults and with its best flags (bf16, --dataloader_num_workers = cores), ours end to end
    (the decode included): images/s, mean GPU utilisation (nvidia-smi), wall time.
 5. The data for a multi-GPU estimate: gradient bytes all-reduced per step and the step time.
 6. What `--mixed_precision auto` picks there, the quickstart's main job (`accelerate launch
    train_ddpm.py`, as a user runs it) end to end, and a few-step student's sampling (128 images,
    LCMScheduler at 4 steps, the quickstart's UNet: a student has its teacher's architecture).

A device lease is short, so the parts run in order of value under `--budget_seconds`: a part whose
estimated cost no longer fits is recorded as skipped, not started.
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import write_sfhq_like  # noqa: E402
from gpu_check import (  # noqa: E402
    DATASHEET_BF16_TFLOPS,
    ceilings,
    flops_per_image,
    logged_scalars,
    preset_config,
    write_image_folder,
)

from pipeline.model import build_noise_scheduler, build_unet, count_parameters, unet_config  # noqa: E402
from pipeline.sample import generate, make_sampler  # noqa: E402


REPO = Path(__file__).resolve().parent.parent
# --smoke: toy sizes on the CPU, the same code paths
SMOKE = {
    "resolution": 16,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "train_batch_size": 4,
    "intermediate_resolution": None,
    "mixed_precision": "bf16",
}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def config_for(name: str, smoke: bool, **overrides):
    """A preset at its real size, or at toy size with --smoke; trackers off unless asked for."""
    return preset_config(name, **{**(SMOKE if smoke else {}), "logger": "none", **overrides})


# ---------------------------------------------------------------------------------------------
# 1. Levers on the step


def step_lever(name: str, lever: str, steps: int, peak: float, smoke: bool) -> dict:
    """train()'s step with one lever changed; images/s, MFU, compile seconds and break-even steps."""
    from accelerate.state import AcceleratorState

    from pipeline.batches import CachedBatches
    from pipeline.train import build_training, optimizer_step, setup_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    changes = {
        "eager": {},
        "compile-default": {"torch_compile": True, "torch_compile_mode": "default"},
        "compile-max-autotune-no-cudagraphs": {
            "torch_compile": True,
            "torch_compile_mode": "max-autotune-no-cudagraphs",
        },
        "compile-reduce-overhead": {"torch_compile": True, "torch_compile_mode": "reduce-overhead"},
        "tf32-off": {"allow_tf32": False},
        "fused-adamw-off": {"fused_optimizer": False},
        "channels-last": {},
        "batch-256": {"train_batch_size": 256},  # the LR would scale linearly with the batch (x2); timing only here
    }[lever]
    config = config_for(name, smoke, **changes)
    if smoke and lever == "batch-256":
        config = dataclasses.replace(config, train_batch_size=8)
    if not config.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    accelerator, _ = setup_accelerator(config)
    device = accelerator.device.type
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    unet = build_unet(config)
    if lever == "channels-last":
        unet = unet.to(memory_format=torch.channels_last)
    parts = build_training(config, accelerator, unet, total_steps=steps + 3)
    size = config.resolution
    pixels = np.random.default_rng(0).integers(
        0, 256, (max(512, 4 * config.train_batch_size), size, size, 3), dtype=np.uint8
    )
    batches = CachedBatches.from_pixels(pixels, accelerator.device, config.train_batch_size, config.seed)

    def step(index: int) -> None:
        optimizer_step(accelerator, parts, [batches.batch(index)], index)

    started = time.perf_counter()
    step(0)  # compiles (or autotunes cuDNN)
    synchronize(device)
    first_step = time.perf_counter() - started
    for index in range(1, 3):
        step(index)
    synchronize(device)
    started = time.perf_counter()
    for index in range(3, 3 + steps):
        step(index)
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    flops = flops_per_image(dataclasses.replace(config, torch_compile=False)) if device == "cuda" else None
    images_per_second = config.train_batch_size / seconds
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    row = {
        "preset": name,
        "lever": lever,
        "batch_size": config.train_batch_size,
        "images_per_second": round(images_per_second, 1),
        "step_ms": round(1000 * seconds, 2),
        "first_step_seconds": round(first_step, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }
    if flops is not None:
        row["mfu_vs_measured_matmul"] = round(flops * images_per_second / 1e12 / peak, 3)
        row["mfu_vs_datasheet"] = round(flops * images_per_second / 1e12 / DATASHEET_BF16_TFLOPS, 3)
    return row


def break_even(rows: list[dict]) -> None:
    """For each compiled lever: the steps after which its compile time is paid back against eager."""
    eager = {row["preset"]: row for row in rows if row.get("lever") == "eager"}
    for row in rows:
        base = eager.get(row.get("preset"))
        if base and row.get("lever", "").startswith("compile") and row["step_ms"] < base["step_ms"]:
            extra = row["first_step_seconds"] - base["first_step_seconds"]
            row["break_even_steps"] = int(1000 * extra / (base["step_ms"] - row["step_ms"])) + 1


# ---------------------------------------------------------------------------------------------
# 2. The real loop, eager and compiled


def real_loop(name: str, mode: str, steps: int, folder: Path, smoke: bool, peak: Optional[float]) -> dict:
    from accelerate.state import AcceleratorState

    from pipeline.train import train

    AcceleratorState._reset_state(reset_partial_state=True)
    output_dir = Path(tempfile.mkdtemp()) / "run"
    compiled = mode != "eager"
    config = config_for(
        name,
        smoke,
        train_data_dir=str(folder),
        num_epochs=None,
        max_train_steps=steps,
        logging_steps=10,
        save_images_steps=0,
        checkpointing_steps=0,
        num_grid_images=4,
        grid_sampler="dpmsolver++",
        grid_inference_steps=5,
        output_dir=str(output_dir),
        lr_warmup_steps=0,
        logger="tensorboard",
        torch_compile=compiled,
        torch_compile_mode=mode if compiled else "default",
        image_channels=3,
    )
    started = time.perf_counter()
    train(config)
    wall = time.perf_counter() - started
    windows = logged_scalars(output_dir / "logs", "images_per_second")[1:]  # the first holds compilation
    losses = [round(value, 5) for value in logged_scalars(output_dir / "logs", "loss")]
    shutil.rmtree(output_dir.parent, ignore_errors=True)
    row = {
        "preset": name,
        "mode": mode,
        "steps": steps,
        "wall_seconds": round(wall, 1),
        "losses": losses,
        "images_per_second_median_window": round(statistics.median(windows), 1) if windows else None,
    }
    if peak and windows:
        flops = flops_per_image(dataclasses.replace(config, torch_compile=False))
        row["mfu_vs_measured_matmul"] = round(flops * row["images_per_second_median_window"] / 1e12 / peak, 3)
    return row


# ---------------------------------------------------------------------------------------------
# 3. Sampling on the device


def sampling_rows(unet, scheduler, name, compiled, samplers, *, count, smoke, device, rows) -> None:
    """One row per sampler and noise source, appended to `rows` as each is measured."""
    model = torch.compile(unet, mode="reduce-overhead") if compiled else unet  # config, device: delegated
    for sampler_name, steps in samplers:
        steps = min(steps, 5) if smoke else steps
        options = {"original_inference_steps": 50 if not smoke else 10} if sampler_name == "lcm" else {}
        images = {}
        for on_device in (False, True):
            with torch.autocast(device, dtype=torch.bfloat16):
                sampler = make_sampler(sampler_name, scheduler.config, **options)
                generate(model, sampler, count, 2, seed=1, noise_on_device=on_device)  # warm-up (and compilation)
                synchronize(device)
                started = time.perf_counter()
                sampler = make_sampler(sampler_name, scheduler.config, **options)
                images[on_device] = generate(model, sampler, count, steps, seed=0, noise_on_device=on_device)
                synchronize(device)
            seconds = time.perf_counter() - started
            rows.append(
                {
                    "preset": name,
                    "sampler": sampler_name,
                    "steps": steps,
                    "images": count,
                    "compiled": compiled,
                    "noise_on_device": on_device,
                    "seconds": round(seconds, 3),
                }
            )
        # the two noise sources give other images of the same quality; on the CPU they are the same numbers
        rows[-1]["mean_abs_difference_to_cpu_noise"] = round(float(np.abs(images[True] - images[False]).mean()), 4)


def sampling(name: str, smoke: bool, device: str, samplers: tuple, compiled: bool) -> list[dict]:
    """128 images (8 with --smoke) per sampler and step count, noise from CPU or device generators, the UNet eager
    or compiled with CUDA graphs (reduce-overhead); bf16 autocast, random weights (they do not change the time)."""
    if name == "quickstart":  # the student of the quickstart has its teacher's UNet
        from pipeline.config import TrainingConfig

        config = TrainingConfig(output_dir=tempfile.mkdtemp(), **({"ddpm_num_steps": 20} if smoke else {}))
    else:
        config = config_for(name, smoke)
    unet = build_unet(config).to(device).eval()
    scheduler = build_noise_scheduler(config)
    count = 8 if smoke else 128
    rows = []
    try:
        sampling_rows(unet, scheduler, name, compiled, samplers, count=count, smoke=smoke, device=device, rows=rows)
    except Exception as error:  # the rows measured so far stay
        traceback.print_exc()
        rows.append({"preset": name, "compiled": compiled, "error": f"{type(error).__name__}: {error}"})
    return rows


# ---------------------------------------------------------------------------------------------
# 6. What a user gets: the precision auto picks, the quickstart's main job


def precision(device: str) -> dict:
    from pipeline.device import choose_precision, device_facts

    facts = device_facts(device)
    chosen, why = choose_precision("auto", facts)
    return {"facts": facts, "auto_picks": chosen, "why": why}


def quickstart_job(smoke: bool) -> dict:
    """`accelerate launch train_ddpm.py` from the repository root, as the README's main job runs it."""
    output_dir = Path(tempfile.mkdtemp()) / "ddpm-quickstart"
    tiny = ["--max_train_steps", "2", "--num_grid_images", "4", "--grid_inference_steps", "2", "--cpu_threads", "2"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *(["--cpu"] if smoke else []),
        "train_ddpm.py",
        "--output_dir",
        str(output_dir),
        *(tiny if smoke else []),
    ]
    result, wall, utilisation = run_measured(command)
    if result.returncode != 0:
        return {"error": result.stderr[-2000:], "returncode": result.returncode}
    run = json.loads((output_dir / "training_config.json").read_text())["run"]
    shutil.rmtree(output_dir.parent, ignore_errors=True)
    return {
        "run": "accelerate launch train_ddpm.py (the quickstart)",
        "wall_seconds": round(wall, 1),
        "train_seconds": run["train_seconds"],
        "run_wall_seconds": run["wall_seconds"],
        "images_per_second": run["images_per_second"],
        "mixed_precision": run["mixed_precision"],
        "precision_reason": run["precision_reason"],
        "gpu_utilisation_percent": utilisation.mean,
        "log_head": [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line][:12],
    }


# ---------------------------------------------------------------------------------------------
# 4. The diffusers example side by side


def run_measured(command: list[str]) -> tuple[subprocess.CompletedProcess, float, "GpuUtilisation"]:
    """Run a command from the repository root; its result, wall seconds and the GPU utilisation meanwhile."""
    started = time.perf_counter()
    with GpuUtilisation() as utilisation:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    return result, time.perf_counter() - started, utilisation


class GpuUtilisation:
    """Mean GPU utilisation over a block, from `nvidia-smi` sampled every 200 ms (None without nvidia-smi)."""

    def __enter__(self):
        self.samples = []
        self.process = None
        if shutil.which("nvidia-smi"):
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE,
                text=True,
            )
        return self

    def __exit__(self, *exc):
        if self.process is not None:
            self.process.terminate()
            output, _ = self.process.communicate()
            self.samples = [float(line) for line in output.split() if line.strip().replace(".", "").isdigit()]

    @property
    def mean(self):
        return round(statistics.mean(self.samples), 1) if self.samples else None


def example_run(
    script: Path, folder: Path, unet_folder: Path, batch: int, resolution: int, best: bool, smoke: bool
) -> dict:
    output_dir = Path(tempfile.mkdtemp()) / "example"
    workers = len(os.sched_getaffinity(0)) if best else 0
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--mixed_precision",
        "bf16" if best else "no",
        *(["--cpu"] if smoke else []),
        str(script),
        "--train_data_dir",
        str(folder),
        "--resolution",
        str(resolution),
        "--train_batch_size",
        str(batch),
        "--num_epochs",
        "2",
        "--dataloader_num_workers",
        str(workers),
        "--model_config_name_or_path",
        str(unet_folder),
        "--output_dir",
        str(output_dir),
        "--save_images_epochs",
        "1000",
        "--save_model_epochs",
        "1000",
        "--checkpointing_steps",
        "100000",
        "--logger",
        "tensorboard",
        "--ddpm_num_steps",
        "300",
        "--ddpm_num_inference_steps",  # its end-of-run grid: its default 1000 exceeds T = 300
        "50",
    ]
    result, wall, utilisation = run_measured(command)
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    times = logged_scalars(output_dir, "loss", wall_time=True)
    steady = (len(times) - 3) * batch / (times[-1] - times[2]) if len(times) > 4 else None  # after 2 warm-up steps
    images = len(list(folder.rglob("*.jpg")))
    shutil.rmtree(output_dir.parent, ignore_errors=True)
    return {
        "run": "example, best flags" if best else "example, defaults",
        "wall_seconds": round(wall, 1),
        "images_per_second_end_to_end": round(2 * images / wall, 1),
        "images_per_second_steady": round(steady, 1) if steady else None,
        "gpu_utilisation_percent": utilisation.mean,
    }


def ours_run(folder: Path, batch: int, steps: int, smoke: bool) -> dict:
    """train_ddpm.py with the report preset on the same folder, the decode (1024 -> 256 -> 64) included."""
    import yaml

    from pipeline.arguments import load_preset

    work = Path(tempfile.mkdtemp())
    values = {
        **load_preset(REPO / "configs" / "report_sfhq64.yaml"),
        **(SMOKE if smoke else {}),
        "train_batch_size": batch,
        "max_train_steps": steps,
        "num_epochs": None,
        "logging_steps": 5,
        "save_images_steps": 0,
        "checkpointing_steps": 0,
        "num_grid_images": 4,
        "grid_sampler": "dpmsolver++",
        "grid_inference_steps": 5,
        "cache_dir": str(work / "cache"),
        "mixed_precision": "bf16",
        "train_data_dir": str(folder),
        "output_dir": str(work / "ours"),
    }
    (work / "bench.yaml").write_text(yaml.safe_dump(values))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *(["--cpu"] if smoke else []),
        "train_ddpm.py",
        "--config",
        str(work / "bench.yaml"),
    ]
    result, wall, utilisation = run_measured(command)
    if result.returncode != 0:
        return {"error": result.stderr[-2000:]}
    run = json.loads((work / "ours" / "training_config.json").read_text())["run"]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "run": "train_ddpm.py end to end",
        "wall_seconds": round(wall, 1),
        "images_per_second_end_to_end": round(steps * batch / wall, 1),
        "images_per_second_training": round(steps * batch / run["train_seconds"], 1),
        "gpu_utilisation_percent": utilisation.mean,
    }


def side_by_side(script: Path, count: int, smoke: bool) -> list[dict]:
    folder = Path(tempfile.mkdtemp()) / "sfhq"
    count, batch, resolution = (16, 4, 16) if smoke else (count, 128, 64)
    write_sfhq_like(folder, count)
    unet_folder = Path(tempfile.mkdtemp()) / "unet"
    unet_folder.mkdir()
    config = config_for("report", smoke)
    (unet_folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **unet_config(config)}))
    rows = [example_run(script, folder, unet_folder, batch, resolution, best, smoke) for best in (False, True)]
    rows.append(ours_run(folder, batch, steps=2 * count // batch, smoke=smoke))
    return rows


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_efficiency.json")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per lever.")
    parser.add_argument("--loop_steps", type=int, default=150, help="Steps of each real loop (part 2).")
    parser.add_argument("--compile_mode", default="default", help="The mode of the compiled real loop.")
    parser.add_argument("--example_script", help="diffusers' train_unconditional.py (part 4 is skipped without it).")
    parser.add_argument("--example_images", type=int, default=768, help="SFHQ-shaped JPEGs for part 4.")
    parser.add_argument(
        "--parts",
        nargs="*",
        default=["sampling", "quickstart", "example", "sampling-compiled", "loop", "levers"],
        help="In this order.",
    )
    parser.add_argument(
        "--budget_seconds", type=float, default=480, help="Parts whose estimated cost no longer fits are skipped."
    )
    parser.add_argument(
        "--smoke", action="store_true", help="Toy sizes on the CPU: checks the script, measures nothing."
    )
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU; use --smoke to check the script on the CPU")
    began = time.perf_counter()
    result = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)

    def part(key, cost, function, *arguments):
        """Run one part if its estimated cost (seconds on an H200) fits the budget; record its result or error."""
        left = args.budget_seconds - (time.perf_counter() - began)
        if cost > left and not args.smoke:
            value = {"skipped": f"estimated {cost} s, {left:.0f} s of the budget left", "arguments": repr(arguments)}
        else:
            started = time.perf_counter()
            try:
                value = function(*arguments)
            except Exception as error:  # one failed part must not hide the others
                traceback.print_exc()
                value = {"error": f"{type(error).__name__}: {error}"}
            print(f"[{time.perf_counter() - began:6.1f} s] {key} ({time.perf_counter() - started:.1f} s)", flush=True)
        print(f"  {json.dumps(value)}", flush=True)
        result.setdefault(key, []).append(value)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return value

    part("precision", 0, precision, device)
    peak = None
    if device == "cuda":
        peak = part("ceilings", 10, ceilings).get("matmul_bf16_tflops", DATASHEET_BF16_TFLOPS)
    steps = 2 if args.smoke else args.steps
    for name in args.parts:
        if name.startswith("sampling"):  # targets: the report's chain < 3 s, DPM-Solver++ 20 < 0.2 s; the student at 4
            compiled = name == "sampling-compiled"
            if compiled and args.smoke:
                continue  # compiling on a CPU takes minutes
            report, student = (("ddpm", 300), ("dpmsolver++", 20)), (("lcm", 4), ("sde-dpmsolver++", 20))
            part("sampling", 120 if compiled else 40, sampling, "report", args.smoke, device, report, compiled)
            part("sampling", 60 if compiled else 15, sampling, "quickstart", args.smoke, device, student, compiled)
        elif name == "quickstart":
            part("quickstart", 60, quickstart_job, args.smoke)
        elif name == "example" and args.example_script:
            part("example", 150, side_by_side, Path(args.example_script), args.example_images, args.smoke)
        elif name == "loop":
            folder = write_image_folder(64 if args.smoke else 512)
            loop_steps = 4 if args.smoke else args.loop_steps
            for preset, mode, cost in (
                ("report", "eager", 40),
                ("report", args.compile_mode, 100),
                ("improved", "eager", 50),
                ("improved", args.compile_mode, 130),
            ):
                if mode == "eager" or not args.smoke:
                    part("loop", cost, real_loop, preset, mode, loop_steps, folder, args.smoke, peak)
        elif name == "levers":
            levers = [("eager", 25), ("batch-256", 25), ("fused-adamw-off", 25), ("channels-last", 25)]
            if not args.smoke:
                levers += [("compile-reduce-overhead", 90), ("compile-max-autotune-no-cudagraphs", 200)]
            for preset in ("report", "improved"):
                for lever, cost in levers:
                    part("levers", cost, step_lever, preset, lever, steps, peak, args.smoke)
            break_even([row for row in result.get("levers", []) if "images_per_second" in row])
    config = config_for("report", args.smoke)
    gradient_bytes = 4 * count_parameters(build_unet(config))
    result["multi_gpu"] = {"gradient_bytes_all_reduced_per_step": gradient_bytes}
    result["seconds"] = round(time.perf_counter() - began, 1)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
