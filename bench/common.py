"""What the benchmarks share: the import path, the machine they ran on, FLOP counts and the machine's peaks.

`import common` first in a benchmark (run as `python bench/<name>.py`, bench/ is on the path) puts the
repository on the path, so `pipeline` imports without a `sys.path` line in every script.
"""

import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.device import describe_device, device_facts  # noqa: E402


def machine(device: str = "cpu") -> dict:
    """The machine a result was measured on: for a CPU its model, cores and which of bf16 / AMX / AVX-512 are
    native (and any instruction-set cap in force); for a GPU its name. Every results JSON holds it."""
    facts = device_facts(device)
    return {
        "description": describe_device(facts),
        **facts,
        "architecture": platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def flops_per_image(config) -> float:
    """Forward + backward FLOPs of one training image of `config` (torch.utils.flop_counter), batch of 4."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.diffusion import step_loss
    from pipeline.model import build_noise_scheduler, build_unet

    config = dataclasses.replace(config, train_batch_size=4)
    unet, scheduler = build_unet(config), build_noise_scheduler(config)
    shape = (4, config.image_channels or 3, config.resolution, config.resolution)
    with FlopCounterMode(display=False) as counter:
        step_loss(unet, scheduler, config, torch.randint(0, 256, shape, dtype=torch.uint8), 0).backward()
    return counter.get_total_flops() / 4


def cores() -> int:
    return len(os.sched_getaffinity(0))
