"""The Frechet distance at 2048 dimensions, idle and with the cores oversubscribed by another job.

    python bench/bench_frechet.py              # about 2 minutes on 2 cores
    python bench/bench_frechet.py --sqrtm      # also scipy's sqrtm (clean-fid's formula): about a minute more

FID during training runs while the training process keeps every core busy, which is where an
eigendecomposition with eigenvectors slowed down tenfold. Methods, all in float64 on the same
statistics (1,000 samples against 5,000 reference features, so the sample covariance is rank
deficient, as in FID during training):

  ours            pipeline.evaluate.frechet_distance: pivoted Cholesky + eigenvalues only
  eigh            the previous formula: sqrt(S1) by an eigendecomposition with eigenvectors
  sqrtm           scipy.linalg.sqrtm(S1 S2), clean-fid's formula

The load is a second process running convolutions with 4 OpenMP threads on the 2 cores, as an
oversubscribed training job does.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.evaluate import frechet_distance  # noqa: E402


LOAD = """
import time, torch
torch.set_num_threads(4)
conv = torch.nn.Conv2d(64, 64, 3, padding=1)
x = torch.randn(16, 64, 32, 32)
while True:
    conv(x).sum().backward()
"""


def statistics(seed: int = 0, dimensions: int = 2048):
    rng = np.random.default_rng(seed)
    samples = rng.normal(size=(1000, dimensions))
    reference = rng.normal(size=(5000, dimensions)) @ (
        np.eye(dimensions) + 0.01 * rng.normal(size=(dimensions, dimensions))
    )
    return samples.mean(0), np.cov(samples, rowvar=False), reference.mean(0), np.cov(reference, rowvar=False)


def eigh_formula(mu1, sigma1, mu2, sigma2) -> float:
    values, vectors = np.linalg.eigh(sigma1)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root @ sigma2 @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def sqrtm_formula(mu1, sigma1, mu2, sigma2) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def time_methods(methods: dict, stats, repeats: int) -> dict:
    """Each method `repeats` times, interleaved so that all see the same load; median and worst time, and the value."""
    times = {name: [] for name in methods}
    values = {}
    for repeat in range(repeats):
        for name, function in methods.items():
            if name == "sqrtm" and repeat > 0:
                continue  # tens of seconds each: once is enough
            started = time.perf_counter()
            values[name] = function(*stats)
            times[name].append(time.perf_counter() - started)
    return {
        name: {
            "median_seconds": round(float(np.median(times[name])), 3),
            "worst_seconds": round(max(times[name]), 3),
            "value": values[name],
        }
        for name in methods
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sqrtm", action="store_true")
    parser.add_argument("--output", default="bench/results/frechet.json")
    args = parser.parse_args()
    stats = statistics()
    methods = {"ours": frechet_distance, "eigh": eigh_formula}
    if args.sqrtm:
        methods["sqrtm"] = sqrtm_formula
    rows = {}
    for condition in ("idle", "loaded"):
        load = None
        if condition == "loaded":
            load = subprocess.Popen([sys.executable, "-c", LOAD], env={**os.environ, "OMP_NUM_THREADS": "4"})
            time.sleep(3)
        try:
            for name, row in time_methods(methods, stats, args.repeats).items():
                rows.setdefault(name, {})[condition] = row
                print(
                    f"{name:<6} {condition:<7} median {row['median_seconds']:7.2f} s  worst "
                    f"{row['worst_seconds']:7.2f} s   "
                    f"FD = {row['value']:.9f}",
                    flush=True,
                )
        finally:
            if load is not None:
                load.kill()
                load.wait()
    reference = rows["eigh"]["idle"]["value"]
    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dimensions": 2048,
        "rows": rows,
        "max_relative_difference_to_eigh": max(
            abs(row[c]["value"] - reference) / abs(reference) for row in rows.values() for c in row
        ),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
