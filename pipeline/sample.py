"""Sampling from a UNet with any of diffusers' samplers, built from the training scheduler's config."""

import math
from typing import Optional

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler
from PIL import Image


def make_sampler(name: str, scheduler_config: dict):
    """A sampler by name, sharing the training scheduler's betas and prediction type."""
    if name == "ddpm":
        return DDPMScheduler.from_config(scheduler_config)
    if name == "ddim":
        return DDIMScheduler.from_config(scheduler_config)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler {name!r}")


@torch.no_grad()
def generate(unet, sampler, num_images: int, num_inference_steps: int, seed: int, batch_size: Optional[int] = None) -> np.ndarray:
    """Sample images as (N, H, W, C) float in [0, 1]; the same seed gives the same images."""
    pipeline = DDPMPipeline(unet=unet, scheduler=sampler)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batch_size = batch_size or num_images
    batches = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        # "pt", not "np": under bf16 autocast some samplers return bf16, which numpy cannot hold
        output = pipeline(batch_size=count, generator=generator, num_inference_steps=num_inference_steps, output_type="pt")
        batches.append(output.images.float().permute(0, 2, 3, 1).cpu().numpy())  # (B, C, H, W) -> (B, H, W, C)
    return np.concatenate(batches)


def image_grid(images: np.ndarray) -> Image.Image:
    """(N, H, W, C) floats in [0, 1] -> one PIL image, as square as the count allows, 2-pixel gaps."""
    count, height, width, channels = images.shape
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    pad = 2
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), dtype=np.uint8)
    pixels = (images * 255).round().clip(0, 255).astype(np.uint8)
    for index, image in enumerate(pixels):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        grid[top : top + height, left : left + width] = image
    return Image.fromarray(grid[..., 0] if channels == 1 else grid)
