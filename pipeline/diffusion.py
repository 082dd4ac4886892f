"""The training objective: the random draws of a step, what the UNet is asked to predict, and the loss on it."""

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from .config import TrainingConfig


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


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights per timestep (Hang et al. 2023, arXiv:2303.09556).

    The paper weights the squared x0 error by min(SNR, gamma). The squared error on the network's own
    target is a multiple of it (SNR times for an epsilon target, SNR + 1 times for a v target), so the
    same weighting reads min(SNR, gamma) / SNR on an epsilon target, min(SNR, gamma) / (SNR + 1) on a
    v target and min(SNR, gamma) on a sample target. At SNR = 0 (zero terminal SNR) the v and sample
    weights are 0; an epsilon target is refused there by the config.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def diffusion_loss(
    model_output: torch.Tensor, target: torch.Tensor, loss_type: str, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean L1 or L2 error, in float32 whatever the autocast precision; with `weights` (one per image), the
    mean over images of each image's mean error times its weight."""
    model_output, target = model_output.float(), target.float()
    if loss_type not in ("l1", "l2"):
        raise ValueError(f"unknown loss_type {loss_type!r}")
    if weights is None:
        return F.l1_loss(model_output, target) if loss_type == "l1" else F.mse_loss(model_output, target)
    errors = (model_output - target).abs() if loss_type == "l1" else (model_output - target) ** 2
    return (errors.mean(dim=tuple(range(1, errors.ndim))) * weights).mean()


def random_flip(
    images: torch.Tensor, generator: Optional[torch.Generator] = None, flip: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Flip each image of a (B, C, H, W) batch left-right with probability 1/2 (or where `flip` is True)."""
    if flip is None:
        flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0


def step_draws(
    config: TrainingConfig, micro_batch_index: int, process_index: int, num_processes: int, device
) -> tuple:
    """Flips, timesteps and noise of this process's share of global micro-batch `micro_batch_index`.

    They come from a generator seeded by the micro-batch index alone and are drawn for the whole
    global batch, then sliced: a pure function of the step, whatever the process count, so a resumed
    run and an N-process run draw exactly what an uninterrupted single-process run draws.
    """
    seed = int(np.random.SeedSequence([config.seed, micro_batch_index]).generate_state(1, dtype=np.uint64)[0] >> 1)
    generator = torch.Generator(device=device).manual_seed(seed)
    size, batch = config.resolution, config.train_batch_size
    total = batch * num_processes
    share = slice(process_index * batch, (process_index + 1) * batch)
    flip = torch.rand(total, generator=generator, device=device)[share] < 0.5
    timesteps = torch.randint(0, config.ddpm_num_steps, (total,), generator=generator, device=device)[share]
    noise = torch.randn((total, config.image_channels, size, size), generator=generator, device=device)[share]
    return flip, timesteps, noise


def step_loss(
    unet,
    noise_scheduler: DDPMScheduler,
    config: TrainingConfig,
    batch: torch.Tensor,
    micro_batch_index: int,
    process_index: int = 0,
    num_processes: int = 1,
) -> torch.Tensor:
    """The loss of one micro-batch: (B, C, H, W) uint8 images -> flipped, scaled, noised, predicted, compared."""
    flip, timesteps, noise = step_draws(config, micro_batch_index, process_index, num_processes, batch.device)
    if config.random_flip:
        batch = random_flip(batch, flip=flip)
    clean_images = to_model_range(batch)
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
    model_output = unet(noisy_images, timesteps).sample
    target = training_target(noise_scheduler, clean_images, noise, timesteps)
    weights = None
    if config.snr_gamma is not None:
        weights = min_snr_weights(compute_snr(noise_scheduler, timesteps), config.snr_gamma, config.prediction_type)
    return diffusion_loss(model_output, target, config.loss_type, weights)
