"""Training throughput: the diffusers example's loop against ours, on the same model, data and batch.

    python bench/bench_train.py            # quickstart-size UNet, RGB 32x32, batch 32 (about 15 minutes on 2 cores)
    python bench/bench_train.py --steps 10 --skip_report

Every variant runs in its own process (so its peak memory is its own) for --steps timed steps
after 3 warm-up steps, and reports images/s, the time the loop waited for data, the time per EMA
update and the peak resident memory. Variants:

  reference, memory / jpeg   what the diffusers unconditional example does: fp32, torchvision
                             transforms on every step (from pre-decoded images in memory, or
                             decoding SFHQ-shaped 1024x1024 JPEGs), AdamW and EMAModel with their
                             defaults, `loss.item()` every step, DataLoader with 0 workers
  ours                       pipeline.train.optimizer_step, the function train() runs, on the
                             decode-once cache's batches, with train()'s own Accelerator setup:
                             flips and noise drawn on the device per global batch, bf16 autocast,
                             one foreach EMA update, the loss read back only every 10 steps
  ours, end to end           the same, with the cold decode of the JPEGs counted in
  ours without X             one optimisation off at a time (bf16, no per-step sync), and
                             channels_last / torch.compile on

and the EMA update alone: ours (one foreach lerp for every average) against diffusers' EMAModel
(one object per decay), for one and for three decays.

Also: the machine's measured matmul and 3x3-convolution peaks in fp32 and bf16, forward+backward
FLOPs per image (torch.utils.flop_counter) and the fraction of the bf16 matmul peak our step
reaches, for the quickstart-size model and for the report preset's UNet at 64x64.
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dataclasses import replace  # noqa: E402

from bench_data import example_dataloader, write_sfhq_like  # noqa: E402
from common import flops_per_image  # noqa: E402

from pipeline.arguments import load_preset  # noqa: E402
from pipeline.config import TrainingConfig  # noqa: E402
from pipeline.model import build_noise_scheduler, build_unet  # noqa: E402


REPO = Path(__file__).resolve().parent.parent


def quickstart_config(resolution: int, batch_size: int) -> TrainingConfig:
    """The quickstart's UNet (2.5M parameters at 1 channel), here on RGB images."""
    return TrainingConfig(
        resolution=resolution,
        image_channels=3,
        train_batch_size=batch_size,
        output_dir=tempfile.mkdtemp(),
        logger="none",
    )


def report_config(batch_size: int) -> TrainingConfig:
    values = load_preset(str(REPO / "configs" / "report_sfhq64.yaml"))
    return TrainingConfig(
        **{
            **values,
            "train_batch_size": batch_size,
            "mixed_precision": "bf16",
            "output_dir": tempfile.mkdtemp(),
            "logger": "none",
        }
    )


def peaks(size: int = 2048) -> dict:
    """Measured matmul and conv throughput of this machine, TFLOP/s, fp32 and bf16."""
    result = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        for _ in range(2):
            a @ b
        started = time.perf_counter()
        for _ in range(5):
            a @ b
        result[f"matmul_{name}_tflops"] = round(2 * size**3 * 5 / (time.perf_counter() - started) / 1e12, 3)
        conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(dtype)
        x = torch.randn(32, 128, 32, 32, dtype=dtype)
        with torch.no_grad():
            for _ in range(2):
                conv(x)
            started = time.perf_counter()
            for _ in range(5):
                conv(x)
        result[f"conv3x3_{name}_tflops"] = round(
            2 * 32 * 128 * 32 * 32 * 128 * 9 * 5 / (time.perf_counter() - started) / 1e12, 3
        )
    return result


# ---------------------------------------------------------------------------------------------
# The two loops (each variant runs in a fresh process: `--variant NAME`)


def reference_loop(config: TrainingConfig, loader_factory, steps: int) -> dict:
    """What the diffusers unconditional example does per step, on our model and batch."""
    from diffusers.training_utils import EMAModel

    unet, scheduler = build_unet(config), build_noise_scheduler(config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    ema = EMAModel(
        unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4
    )  # the example's defaults
    timings = {"data": 0.0, "ema": 0.0}
    iterator = iter(loader_factory())
    for index in range(steps + 3):
        if index == 3:
            started, timings = time.perf_counter(), {"data": 0.0, "ema": 0.0}
        fetch = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:  # a new epoch
            iterator = iter(loader_factory())
            batch = next(iterator)
        timings["data"] += time.perf_counter() - fetch
        clean_images = batch["input"]
        noise = torch.randn(clean_images.shape)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (clean_images.shape[0],)).long()
        noisy_images = scheduler.add_noise(clean_images, noise, timesteps)
        model_output = unet(noisy_images, timesteps).sample
        loss = torch.nn.functional.mse_loss(model_output.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        ema_started = time.perf_counter()
        ema.step(unet.parameters())
        timings["ema"] += time.perf_counter() - ema_started
        loss.item()  # the example logs the loss every step
    seconds = time.perf_counter() - started
    return {
        "images_per_second": steps * config.train_batch_size / seconds,
        "data_wait_s": timings["data"],
        "ema_ms": 1000 * timings["ema"] / steps,
    }


def our_loop(
    config: TrainingConfig, pixels: np.ndarray, steps: int, sync_every_step=False, channels_last=False
) -> dict:
    """train()'s own step (pipeline.train.optimizer_step) with train()'s Accelerator setup, on the cache's batches."""
    from pipeline.batches import CachedBatches
    from pipeline.train import build_training, optimizer_step, setup_accelerator

    accelerator = setup_accelerator(config)
    batches = CachedBatches.from_pixels(pixels, accelerator.device, config.train_batch_size, config.seed)
    unet = build_unet(config)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    parts = build_training(config, accelerator, unet, total_steps=steps + 3)
    timings = {"data": 0.0}
    for index in range(steps + 3):
        if index == 3:
            started, timings = time.perf_counter(), {"data": 0.0}
        fetch = time.perf_counter()
        micro_batches = [batches.batch(index)]
        timings["data"] += time.perf_counter() - fetch
        outcome = optimizer_step(accelerator, parts, micro_batches, index)
        if sync_every_step or index % 10 == 0:
            outcome.loss.item()
    seconds = time.perf_counter() - started
    return {
        "images_per_second": steps * config.train_batch_size / seconds,
        "data_wait_s": timings["data"],
        "ema_ms": ema_update_ms(parts.unet, [config.ema_max_decay])["ours"],
    }


def ema_update_ms(unet, decays: list[float], repeats: int = 20) -> dict:
    """Milliseconds per EMA update of `unet`'s parameters at `decays`: ours (one foreach lerp), diffusers' EMAModel."""
    from diffusers.training_utils import EMAModel

    from pipeline.ema import EMA

    parameters = list(unet.parameters())
    ours = EMA(unet, decays)
    theirs = [EMAModel(parameters, decay=decay, use_ema_warmup=True, foreach=True) for decay in decays]

    def timed(update) -> float:
        update()
        started = time.perf_counter()
        for _ in range(repeats):
            update()
        return 1000 * (time.perf_counter() - started) / repeats

    return {
        "ours": timed(lambda: ours.update(parameters)),
        "diffusers_ema_model": timed(lambda: [ema.step(parameters) for ema in theirs]),
    }


def decoded_images(folder: Path, config: TrainingConfig, cache_dir: Path) -> tuple[torch.Tensor, float]:
    """The JPEG folder through our decode-once path; returns (N, C, H, W) uint8 and the seconds it took."""
    from pipeline.data import prepare_training_images

    started = time.perf_counter()
    prepared = prepare_training_images(
        replace(config, dataset_name=None, train_data_dir=str(folder), cache_dir=str(cache_dir))
    )
    return np.array(prepared.pixels), time.perf_counter() - started


def run_variant(args) -> dict:
    config = (
        quickstart_config(args.resolution, args.batch_size)
        if args.model == "quickstart"
        else report_config(args.batch_size)
    )
    folder = Path(args.data)
    if args.variant.startswith("reference"):
        if args.variant == "reference-jpeg":

            def factory():
                return example_dataloader(folder, config.resolution, config.train_batch_size, 0)

        else:
            pixels, _ = decoded_images(folder, config, Path(args.cache))
            memory = torch.utils.data.TensorDataset(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())

            def collate(items):
                images = torch.stack([item[0] for item in items]).float() / 255
                flip = torch.rand(len(items)) < 0.5  # RandomHorizontalFlip + Normalize, per step as the example does
                return {"input": (torch.where(flip[:, None, None, None], images.flip(-1), images) - 0.5) / 0.5}

            def factory():
                return torch.utils.data.DataLoader(
                    memory, batch_size=config.train_batch_size, shuffle=True, collate_fn=collate
                )

        result = reference_loop(config, factory, args.steps)
    else:
        pixels, decode_seconds = decoded_images(folder, config, Path(args.cache))
        if args.variant == "ours-fp32":
            config = replace(config, mixed_precision="no")
        if args.variant == "ours-compile":
            config = replace(config, torch_compile=True)
        options = {
            "ours-sync-every-step": {"sync_every_step": True},
            "ours-channels-last": {"channels_last": True},
        }.get(args.variant, {})
        result = our_loop(config, pixels, args.steps, **options)
        if args.variant == "ours-end-to-end":  # the cold decode, spread over the timed steps
            seconds = args.steps * config.train_batch_size / result["images_per_second"] + decode_seconds
            result["images_per_second"] = args.steps * config.train_batch_size / seconds
            result["decode_seconds"] = decode_seconds
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


VARIANTS = [
    "reference-memory",
    "reference-jpeg",
    "ours",
    "ours-end-to-end",
    "ours-fp32",
    "ours-sync-every-step",
    "ours-channels-last",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num_images", type=int, default=300, help="SFHQ-shaped JPEGs to make (1024x1024).")
    parser.add_argument(
        "--compile", action="store_true", help="Also time torch.compile (minutes of compile on a CPU)."
    )
    parser.add_argument("--skip_report", action="store_true", help="Skip the report preset's UNet at 64x64.")
    parser.add_argument("--output", default="bench/results/training.json")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="quickstart", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.variant:  # a child process: one variant, JSON on the last line
        print(json.dumps(run_variant(args)))
        return

    work = Path(tempfile.mkdtemp())
    write_sfhq_like(work / "sfhq", args.num_images)
    measured = peaks()
    print("peaks (TFLOP/s):", measured, flush=True)

    def child(variant: str, model: str = "quickstart", cache: str = "cache", **extra) -> dict:
        command = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--model",
            model,
            "--data",
            str(work / "sfhq"),
            "--cache",
            str(work / cache),
            "--resolution",
            str(args.resolution),
            "--batch_size",
            str(extra.get("batch", args.batch_size)),
            "--steps",
            str(extra.get("steps", args.steps)),
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
        return json.loads(output.strip().splitlines()[-1])

    rows = {}
    variants = VARIANTS + (["ours-compile"] if args.compile else [])
    for variant in variants:
        cache = f"cold-{variant}" if variant == "ours-end-to-end" else "cache"  # a fresh cache: the decode is counted
        rows[variant] = child(variant, cache=cache)
        print(
            f"{variant:<24}{rows[variant]['images_per_second']:>9.1f} img/s  data wait "
            f"{rows[variant]['data_wait_s']:.2f} s  "
            f"EMA {rows[variant]['ema_ms']:.1f} ms  peak RSS {rows[variant]['peak_rss_gib']:.2f} GiB",
            flush=True,
        )

    config = quickstart_config(args.resolution, args.batch_size)
    flops = flops_per_image(config)
    achieved = flops * rows["ours"]["images_per_second"]
    utilisation = {
        "quickstart": {
            "gflops_per_image": round(flops / 1e9, 3),
            "achieved_tflops": round(achieved / 1e12, 4),
            "fraction_of_bf16_matmul_peak": round(achieved / 1e12 / measured["matmul_bf16_tflops"], 3),
            "reference_fraction_of_fp32_matmul_peak": round(
                flops * rows["reference-memory"]["images_per_second"] / 1e12 / measured["matmul_fp32_tflops"], 3
            ),
        }
    }
    if not args.skip_report:
        report = report_config(8)
        report_flops = flops_per_image(report)
        row = child("ours", model="report", cache="cache-report", batch=8, steps=3)
        utilisation["report_64px"] = {
            "batch_size": 8,
            "images_per_second": round(row["images_per_second"], 2),
            "gflops_per_image": round(report_flops / 1e9, 2),
            "achieved_tflops": round(report_flops * row["images_per_second"] / 1e12, 4),
            "fraction_of_bf16_matmul_peak": round(
                report_flops * row["images_per_second"] / 1e12 / measured["matmul_bf16_tflops"], 3
            ),
            "peak_rss_gib": round(row["peak_rss_gib"], 2),
        }
    unet = build_unet(config)
    ema = {"one_decay": ema_update_ms(unet, [0.999]), "three_decays": ema_update_ms(unet, [0.999, 0.9999, 0.99])}
    print("EMA update (ms):", json.dumps(ema), flush=True)
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "peaks_tflops": measured,
        "variants": {name: {key: round(value, 3) for key, value in row.items()} for name, row in rows.items()},
        "speedups": {
            "ours_vs_reference_predecoded": round(
                rows["ours"]["images_per_second"] / rows["reference-memory"]["images_per_second"], 2
            ),
            "ours_end_to_end_vs_reference_jpeg": round(
                rows["ours-end-to-end"]["images_per_second"] / rows["reference-jpeg"]["images_per_second"], 2
            ),
        },
        "utilisation": utilisation,
        "ema_update_ms": ema,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"speedups": result["speedups"], "utilisation": utilisation}, indent=2))


if __name__ == "__main__":
    main()
