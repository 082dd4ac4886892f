"""The Frechet distance at 2048 dimensions, idle and with the cores oversubscribed by another job.

    python bench/bench_frechet.py              # about 2 minutes on 2 cores
    python bench/bench_frechet.py --sqrtm      # also scipy's sqrtm (clean-fid's formula): about a minute more

FID during training runs while the training process keeps every core busy, which is where an
eigendecomposition with eigenvectors slowed down tenfold. Methods, all in float64 on the same
statistics (1,000 samples against 5,000 reference features, so the sample covariance is rank
deficient, as in FID during training):

  ours, all BLAS threads  pipeline.evaluate.frechet_distance: pivoted Cholesky + eigenvalues only, OpenBLAS's
                          own thread count (one per core; the default)
  ours, one BLAS thread   the same limited to one BLAS thread (threadpoolctl)
  eigh            the previous formula: sqrt(S1) by an eigendecomposition with eigenvectors
  sqrtm           scipy.linalg.sqrtm(S1 S2), clean-fid's formula

Conditions: idle; "loaded", a second process running convolutions with 4 OpenMP threads on the 2 cores, as an
oversubscribed training job does; "after torch", this process's own torch convolutions run just before each
distance, as FID during training does (torch's OpenMP threads keep spinning for a while after their work).
`--isa avx2` runs it all again with OpenBLAS's Haswell (AVX2) kernels (OPENBLAS_CORETYPE=Haswell) and torch capped
at AVX2, the kernels of an AVX2-only CPU.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (the repository on the import path)
import numpy as np
import scipy.linalg
from common import RESULTS, machine

from pipeline.metrics import frechet_distance


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


def after_torch(function):
    """`function` timed right after this process's torch convolutions (their timing is left out)."""
    import torch

    conv, x = torch.nn.Conv2d(64, 64, 3, padding=1), torch.randn(16, 64, 32, 32)

    def run(*stats):
        for _ in range(3):
            conv(x).sum().backward()
        return function(*stats)

    return run


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
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--output", default=None, help="Default: bench/results/frechet_<isa>.json.")
    args = parser.parse_args()
    if args.isa == "avx2" and os.environ.get("OPENBLAS_CORETYPE") != "Haswell":  # the kernels are chosen at start-up
        caps = {"OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **caps})
    args.output = args.output or RESULTS / f"frechet_{args.isa}.json"
    stats = statistics()
    methods = {
        "ours, one BLAS thread": lambda *stats: frechet_distance(*stats, blas_threads=1),
        "ours, all BLAS threads": frechet_distance,  # the default
        "eigh": eigh_formula,
    }
    if args.sqrtm:
        methods["sqrtm"] = sqrtm_formula
    rows = {}
    for condition in ("idle", "after torch", "loaded"):
        load = None
        if condition == "after torch":
            methods_now = {name: after_torch(function) for name, function in methods.items()}
        else:
            methods_now = methods
        if condition == "loaded":
            load = subprocess.Popen([sys.executable, "-c", LOAD], env={**os.environ, "OMP_NUM_THREADS": "4"})
            time.sleep(3)
        try:
            for name, row in time_methods(methods_now, stats, args.repeats).items():
                rows.setdefault(name, {})[condition] = row
                print(
                    f"{name:<24} {condition:<12} median {row['median_seconds']:7.2f} s  worst "
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
        "machine": machine(),
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
