"""The optimizer, the learning-rate schedule and the step budget."""

import math
from typing import Callable, Optional

import torch
from diffusers.optimization import get_scheduler
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from .config import TrainingConfig


def count_train_steps(config: TrainingConfig, num_images: Optional[int], num_processes: int) -> int:
    """Optimizer steps in the run: --max_train_steps, or enough global batches for --num_epochs."""
    if config.max_train_steps is not None:
        return config.max_train_steps
    return math.ceil(config.num_epochs * num_images / config.global_batch_size(num_processes))


def build_optimizer(
    config: TrainingConfig, parameters, device: Optional[torch.device] = None
) -> torch.optim.Optimizer:
    """Adam or AdamW; the fused CUDA kernel when the parameters are on a GPU and --fused_optimizer is on."""
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=True if config.fused_optimizer and device is not None and device.type == "cuda" else None,
    )


def lr_schedule(config: TrainingConfig, optimizer, total_steps: int) -> Callable[[int], float]:
    """The learning rate of optimizer step `step` (from 0): a pure function of the step (EDM2's and nanoGPT's shape),
    set before each step, so a resume rebuilds it from the config and a checkpoint holds no schedule. The shapes are
    diffusers' schedules, and `cosine_with_min_lr` (a cosine down to --min_learning_rate) from transformers."""
    if config.lr_scheduler == "cosine_with_min_lr":
        shape = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, config.lr_warmup_steps, total_steps, min_lr=config.min_learning_rate
        )
    else:
        shape = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=total_steps
        )
    factor = shape.lr_lambdas[0]  # every schedule here is a LambdaLR: lr = base lr x factor(step)
    return lambda step: config.learning_rate * factor(step)
