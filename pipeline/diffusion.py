"""The training objective: what the UNet is asked to predict, and the loss on it (pure maths)."""

import math

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def training_target(
    noise_scheduler: DDPMScheduler, clean_images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The regression target for the scheduler's prediction type (Ho et al. 2020; Salimans & Ho 2022 for v)."""
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return clean_images
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(clean_images, noise, timesteps)
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def diffusion_loss(model_output: torch.Tensor, target: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Mean L1 or L2 error, computed in float32 whatever the autocast precision."""
    model_output, target = model_output.float(), target.float()
    if loss_type == "l1":
        return F.l1_loss(model_output, target)
    if loss_type == "l2":
        return F.mse_loss(model_output, target)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def cosine_with_min_lr(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then a half cosine from 1 down to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
