"""The training step on this CPU: where its time goes, and which levers pay, in fp32 and bf16.

    python bench/bench_cpu.py                        # this CPU as it is
    python bench/bench_cpu.py --isa avx2             # the same CPU with oneDNN, ATen and MKL capped at AVX2
    python bench/bench_cpu.py --markdown             # the tables of bench/README.md from results/cpu_step*.json

Each variant is `pipeline.train.optimizer_step` (what train() runs: step_loss, clipping, the non-finite check, AdamW,
the foreach EMA) with train()'s own Accelerator setup, on batches of the decode-once cache's shape, in a fresh
process of its own; the variants run interleaved `--rounds` times and the median step is reported, so that
a busy shared machine slows every variant alike. A variant changes one thing against the quickstart's UNet in
fp32 (threads, memory format, optimizer kernel, EMA, loss read-back, UNet shape, batch size), or is a
candidate UNet. `--isa avx2` runs the children with ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2 and
MKL_ENABLE_INSTRUCTIONS=AVX2: on a CPU with AMX and AVX-512 this gives the kernels of an AVX2-only CPU such as an
AMD EPYC of the Zen 3 generation, but not its clock, caches or memory, nor its cost of bf16 (capped, bf16 autocast
ran as fast as fp32 here; on the EPYC it was 10x slower), so capped times are a lower bound for such a CPU. The profile
(torch.profiler) splits one variant's step into convolutions, GroupNorm, SiLU, resampling, optimizer, EMA and the
rest.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (the repository on the import path)
import torch
from common import REPO, RESULTS, flops_per_image

from pipeline.config import TrainingConfig


QUICKSTART = {"image_channels": 1, "block_out_channels": [32, 64, 128], "mixed_precision": "no"}
SMALL = {**QUICKSTART, "block_out_channels": [16, 32, 64]}
# name: (config changes, what the child does besides: threads, channels_last, optimizer kernel, no EMA, per-step sync)
VARIANTS = {
    "quickstart fp32": (QUICKSTART, {}),
    "quickstart bf16": ({**QUICKSTART, "mixed_precision": "bf16"}, {}),
    "1 thread": (QUICKSTART, {"threads": 1}),
    "channels_last": (QUICKSTART, {"channels_last": True}),
    "fused AdamW": (QUICKSTART, {"fused": True}),
    "for-loop AdamW": (QUICKSTART, {"foreach": False}),
    "no EMA": ({**QUICKSTART, "use_ema": False}, {}),
    "loss read every step": (QUICKSTART, {"sync": True}),
    "no mid block": ({**QUICKSTART, "mid_block_type": None}, {}),
    "norm groups 4": ({**QUICKSTART, "norm_num_groups": 4}, {}),
    "batch 32": ({**QUICKSTART, "train_batch_size": 32}, {}),
    "batch 128": ({**QUICKSTART, "train_batch_size": 128}, {}),
    "[16, 32, 64]": (SMALL, {}),
    "[16, 32, 64] bf16": ({**SMALL, "mixed_precision": "bf16"}, {}),
    "[16, 32, 64] channels_last": (SMALL, {"channels_last": True}),
    "[16, 32, 64] groups 4": ({**SMALL, "norm_num_groups": 4}, {}),
    "[16, 32, 64] groups 4, channels_last": ({**SMALL, "norm_num_groups": 4}, {"channels_last": True}),
    "[16, 48, 96]": ({**QUICKSTART, "block_out_channels": [16, 48, 96]}, {}),
    "[24, 48, 96]": ({**QUICKSTART, "block_out_channels": [24, 48, 96]}, {}),
}
CAP_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
CATEGORIES = (  # profiler op names -> what they are, in this order (the first match wins)
    ("convolution", ("conv",)),
    ("GroupNorm", ("group_norm",)),
    ("SiLU", ("silu",)),
    ("up/downsampling", ("upsample", "avg_pool", "interpolate")),
    ("optimizer", ("optimizer", "adam", "addcdiv", "sqrt", "_foreach_add", "_foreach_mul", "_foreach_div")),
    ("EMA", ("lerp",)),
    ("attention and linear", ("mm", "addmm", "bmm", "softmax", "linear")),
    ("elementwise and copies", ("add", "mul", "div", "cat", "copy", "sub", "to", "clone", "where", "flip", "rand")),
)


def child(name: str, steps: int, profile: bool) -> dict:
    """One variant in this process: the median time of `steps` optimizer steps after 2 warm-up steps."""
    from pipeline.batches import CachedBatches
    from pipeline.model import build_unet
    from pipeline.train import build_training, optimizer_step, setup_accelerator

    changes, extra = VARIANTS[name]
    config = TrainingConfig(
        **{**changes, "output_dir": tempfile.mkdtemp(), "logger": "none", "cpu_threads": extra.get("threads")}
    )
    accelerator, precision = setup_accelerator(config)
    pixels = torch.randint(0, 256, (512, config.resolution, config.resolution, 1), dtype=torch.uint8).numpy()
    batches = CachedBatches.from_pixels(pixels, accelerator.device, config.train_batch_size, config.seed)
    unet = build_unet(config)
    if extra.get("channels_last"):
        unet = unet.to(memory_format=torch.channels_last)
    parts = build_training(config, accelerator, unet, total_steps=steps + 2)
    for group in parts.optimizer.param_groups:
        group.update({key: extra[key] for key in ("fused", "foreach") if key in extra})
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        outcome = optimizer_step(accelerator, parts, [batches.batch(step)], step)
        if extra.get("sync") or step % 10 == 0:
            outcome.loss.item()
        times.append(time.perf_counter() - started)
    result = {"step_s": statistics.median(times[2:]), "precision": precision["mixed_precision"]}
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        with profiler(activities=[ProfilerActivity.CPU]) as recorded:
            for step in range(3):
                optimizer_step(accelerator, parts, [batches.batch(step)], step)
        shares = dict.fromkeys([category for category, _ in CATEGORIES] + ["other"], 0.0)
        for event in recorded.key_averages():
            if not event.key.startswith("aten::") and "Optimizer" not in event.key:
                continue
            key = event.key.lower()
            category = next((name for name, words in CATEGORIES if any(word in key for word in words)), "other")
            shares[category] += event.self_cpu_time_total
        total = sum(shares.values())
        result["profile"] = {category: round(100 * value / total, 1) for category, value in shares.items()}
    return result


def run(args) -> dict:
    environment = {**os.environ, **(CAP_AVX2 if args.isa == "avx2" else {})}
    names = args.variants or list(VARIANTS)
    times = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            slow = VARIANTS[name][0]["mixed_precision"] == "bf16" and args.isa == "avx2"  # emulated: ~20 s a step
            steps = 2 if slow else args.steps
            command = [sys.executable, __file__, "--child", name, "--steps", str(steps)]
            command += ["--profile"] if round_index == 0 and name in args.profile else []
            output = subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True, check=True)
            result = json.loads(output.stdout.strip().splitlines()[-1])
            times[name].append(result)
            print(f"round {round_index + 1} {name:<40} {result['step_s'] * 1000:8.0f} ms", flush=True)
    rows = {}
    for name in names:
        changes = VARIANTS[name][0]
        config = TrainingConfig(**{**changes, "output_dir": tempfile.mkdtemp(), "logger": "none"})
        step = statistics.median(result["step_s"] for result in times[name])
        gflop = flops_per_image(config) / 1e9
        rows[name] = {
            "step_ms": round(1000 * step, 1),
            "images_per_second": round(config.train_batch_size / step, 1),
            "gflop_per_image": round(gflop, 3),
            "gflops": round(gflop * config.train_batch_size / step, 1),
            "images_51200_s": round(800 * step * 64 / config.train_batch_size),
            "precision": times[name][0]["precision"],
        }
        if "profile" in times[name][0]:
            rows[name]["profile"] = times[name][0]["profile"]
    return rows


def markdown() -> str:
    lines = []
    for path in sorted(RESULTS.glob("cpu_step*.json")):
        result = json.loads(path.read_text())
        lines += [f"\n**{result['machine']['description']}** ({path.name}, {result['machine']['date']})\n"]
        lines += ["| variant | ms / step | images/s | GFLOP/image | GFLOP/s | 51,200 images (800 x 64) |"]
        lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, row in result["variants"].items():
            lines += [
                f"| {name} | {row['step_ms']:,.0f} | {row['images_per_second']:.1f} | {row['gflop_per_image']:.2f} | "
                f"{row['gflops']:.0f} | {row['images_51200_s'] / 60:.1f} min |"
            ]
        profiles = {name: row["profile"] for name, row in result["variants"].items() if "profile" in row}
        if profiles:
            categories = list(next(iter(profiles.values())))
            lines += ["", "| profile (% of CPU time) | " + " | ".join(categories) + " |"]
            lines += ["| --- | " + " | ".join("---:" for _ in categories) + " |"]
            lines += [
                f"| {name} | " + " | ".join(f"{share[c]:.1f}" for c in categories) + " |"
                for name, share in profiles.items()
            ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--variants", nargs="*", help=f"Default: all of {', '.join(VARIANTS)}.")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", nargs="*", default=["quickstart fp32", "[16, 32, 64]"])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.markdown:
        print(markdown())
        return
    if args.child:  # one variant in this process, JSON on the last line
        print(json.dumps(child(args.child, args.steps, "--profile" in sys.argv)))
        return
    started = time.time()
    rows = run(args)
    probe = subprocess.run(
        [sys.executable, "-c", "import json, common; print(json.dumps(common.machine()))"],
        env={**os.environ, **(CAP_AVX2 if args.isa == "avx2" else {})}, cwd=REPO / "bench", capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    result = {
        "machine": json.loads(probe.stdout),
        "command": " ".join(sys.argv),
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "wall_s": round(time.time() - started),
        "variants": rows,
    }
    path = RESULTS / f"cpu_step_{args.isa}.json"
    if args.variants and path.is_file():  # some variants measured again: the others stay as recorded
        earlier = json.loads(path.read_text())
        result["variants"] = {**earlier["variants"], **rows}
        result["command"] = f"{earlier['command']}; then {result['command']}"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown())


if __name__ == "__main__":
    main()
