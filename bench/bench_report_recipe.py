"""Does the report preset's recipe collapse into a UNet that outputs zero, and in which precision?

    python bench/bench_report_recipe.py --train_data_dir DIR --steps 80 --batch 16 --runs fp32 bf16

The report's recipe (configs/report_sfhq64.yaml: Adam at 1e-3, no warmup, no clipping, L1 loss, fp32) is trained as a
user runs it (`python train_ddpm.py --config configs/report_sfhq64.yaml`, one process) for --steps steps of --batch
images, once per run of --runs (a precision, or a precision with one change of the recipe), same images, same seed.
A UNet whose output is zero has an L1 loss of E|noise| = sqrt(2 / pi) = 0.798 against the unit Gaussian target: a
loss that climbs to that value and stays there is the collapse seen on the H200 in bf16 (bench/README.md,
2026-12-04). Each run records its logged losses and the exported UNet's mean |output| on fresh noisy images (about
0.8 for a perfect noise predictor, near 0 for a collapsed one) in results/report_recipe.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (the repository on the import path)
import torch
from common import REPO, RESULTS, machine
from diffusers import DDPMScheduler, UNet2DModel
from gpu_check import logged_scalars

from pipeline.errors import DIVERGED_EXIT
from pipeline.record import RECORD_NAME, read_record
from pipeline.train import zero_output_loss


# run name: flags on top of the preset (the precision, then one change of the recipe)
RUNS = {
    "fp32": ["--mixed_precision", "no"],
    "bf16": ["--mixed_precision", "bf16"],
    "fp32-warmup": ["--mixed_precision", "no", "--lr_warmup_steps", "20"],
    "fp32-clip": ["--mixed_precision", "no", "--max_grad_norm", "1.0"],
    "fp32-lr1e-4": ["--mixed_precision", "no", "--learning_rate", "1e-4"],
}


def mean_abs_output(folder: Path, batch: int = 8) -> float:
    """The UNet's mean |predicted noise| on `batch` noisy versions of random images at t = T / 2."""
    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    generator = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    images = torch.rand(batch, unet.config.in_channels, size, size, generator=generator) * 2 - 1
    noise = torch.randn(images.shape, generator=generator)
    timesteps = torch.full((batch,), scheduler.config.num_train_timesteps // 2)
    with torch.no_grad():
        return unet(scheduler.add_noise(images, noise, timesteps), timesteps).sample.abs().mean().item()


def run(name: str, data: str, steps: int, batch: int, work: Path) -> dict:
    output_dir = work / name
    # python train_ddpm.py: the run `accelerate launch` makes on one device, whose launcher reports the diverged
    # run's exit code 3 as 1
    command = [sys.executable, "train_ddpm.py",
               "--config", "configs/report_sfhq64.yaml", "--train_data_dir", data, "--output_dir", str(output_dir),
               "--max_train_steps", str(steps), "--train_batch_size", str(batch), "--max_train_samples", "512",
               "--logging_steps", "5", "--save_images_steps", "0", "--checkpointing_steps", "0",
               "--num_grid_images", "4", "--grid_sampler", "dpmsolver++", "--grid_inference_steps", "10",
               "--logger", "tensorboard", *RUNS[name]]  # fmt: skip
    started = time.time()
    exit_code = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL).returncode
    if exit_code not in (0, DIVERGED_EXIT):  # a run that collapsed is exported, marked, and exits with 3
        raise SystemExit(f"[{name}] the run failed with exit code {exit_code}")
    return {**summary(name, output_dir, round(time.time() - started)), "exit_code": exit_code}


def summary(name: str, output_dir: Path, seconds) -> dict:
    """A finished run's row: its losses, the exported UNet's mean |output|, and whether it collapsed."""
    losses = [round(value, 4) for value in logged_scalars(output_dir / "logs", "loss")]
    row = {"flags": RUNS[name], "seconds": seconds, "losses_every_5_steps": losses}
    zero = zero_output_loss(read_record(output_dir / RECORD_NAME).config)  # the run's own, as its divergence check
    row.update(final_loss=losses[-1], mean_abs_output=round(mean_abs_output(output_dir), 4), zero_output_loss=zero)
    row["collapsed"] = zero is not None and abs(losses[-1] - zero) < 0.02 and row["mean_abs_output"] < 0.1
    print(f"[{name}] {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_data_dir", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", nargs="+", default=["fp32", "bf16"], choices=list(RUNS))
    args = parser.parse_args()
    path = RESULTS / "report_recipe.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    results.update(machine=machine(), steps=args.steps, batch=args.batch, date=time.strftime("%Y-%m-%d"))
    with tempfile.TemporaryDirectory() as work:
        for name in args.runs:
            results["runs"][name] = run(name, args.train_data_dir, args.steps, args.batch, Path(work))
            path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
