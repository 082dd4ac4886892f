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


# iCT's pseudo-Huber constant (Song & Dhariwal 2023: c = 0.00054 sqrt(d)), per pixel: the loss is theirs / sqrt(d)
PSEUDO_HUBER_C = 0.00054


def diffusion_loss(
    model_output: torch.Tensor, target: torch.Tensor, loss_type: str, weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean L1 or L2 error, or the pseudo-Huber distance of each image (sqrt(mean squared error + c^2) - c), in
    float32 whatever the autocast precision; with `weights` (one per image), the mean over images of each image's
    error times its weight."""
    model_output, target = model_output.float(), target.float()
    if loss_type not in ("l1", "l2", "pseudo_huber"):
        raise ValueError(f"unknown loss_type {loss_type!r}")
    if weights is None and loss_type != "pseudo_huber":
        return F.l1_loss(model_output, target) if loss_type == "l1" else F.mse_loss(model_output, target)
    errors = (model_output - target).abs() if loss_type == "l1" else (model_output - target) ** 2
    errors = errors.mean(dim=tuple(range(1, errors.ndim)))
    if loss_type == "pseudo_huber":
        errors = (errors + PSEUDO_HUBER_C**2).sqrt() - PSEUDO_HUBER_C
    return (errors * (1 if weights is None else weights)).mean()


class UncertaintyWeights(torch.nn.Module):
    """EDM2's learned uncertainty weighting (Karras et al. 2024, eq. 21): loss(t) / exp(u(t)) + u(t), with u one
    log-variance per bin of timesteps, trained with the UNet. The minimum over u is u(t) = log E[loss | t], so the
    weighting evens out every noise level's share of the gradient as the losses change. Training only: a checkpoint
    holds it, the export does not."""

    def __init__(self, num_train_timesteps: int, bins: int = 50):
        super().__init__()
        self.num_train_timesteps, self.bins = num_train_timesteps, min(bins, num_train_timesteps)
        self.logvars = torch.nn.Parameter(torch.zeros(self.bins))

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.logvars[timesteps * self.bins // self.num_train_timesteps]  # (B,) -> (B,)


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


def lognormal_timesteps(alphas_cumprod: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """The discrete timesteps nearest (in log sigma, sigma = sqrt((1 - a) / a), a = alpha_bar_t) to the noise levels
    `log_sigmas`: EDM's training density ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, section 5) on a DDPM's
    timesteps. A level beyond either end takes that end's timestep."""
    alphas = alphas_cumprod.double().clamp(min=1e-300)
    table = 0.5 * (torch.log1p(-alphas.clamp(max=1 - 1e-16)) - torch.log(alphas))  # increasing in t
    boundaries = (table[1:] + table[:-1]) / 2
    return torch.searchsorted(boundaries.to(log_sigmas.device), log_sigmas.double().contiguous())


def draw_seed(seed: int, micro_batch_index: int, *spawn_key: int) -> int:
    """A generator seed that is a pure function of the run's seed, the global micro-batch and `spawn_key` (the step's
    draws use none; dropout, drawn from torch's global generator, uses (1, process)): what makes a resume exact
    without any generator state in the checkpoint."""
    sequence = np.random.SeedSequence([seed, micro_batch_index], spawn_key=spawn_key)
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def step_draws(
    config: TrainingConfig,
    micro_batch_index: int,
    process_index: int,
    num_processes: int,
    device,
    alphas_cumprod: Optional[torch.Tensor] = None,
) -> tuple:
    """Flips, timesteps and noise of this process's share of global micro-batch `micro_batch_index`.

    They come from a generator seeded by the micro-batch index alone and are drawn for the whole
    global batch, then sliced: a pure function of the step, whatever the process count, so a resumed
    run and an N-process run draw exactly what an uninterrupted single-process run draws. With
    timestep_density lognormal (which needs the schedule's `alphas_cumprod`), two more draws follow the
    uniform ones: a noise level for each image and whether it keeps its uniform timestep instead
    (timestep_uniform_share), so the uniform draws, and the noise, stay what they are.
    """
    generator = torch.Generator(device=device).manual_seed(draw_seed(config.seed, micro_batch_index))
    size, total = config.resolution, config.train_batch_size * num_processes
    flip = torch.rand(total, generator=generator, device=device) < 0.5
    timesteps = torch.randint(0, config.ddpm_num_steps, (total,), generator=generator, device=device)
    noise = torch.randn((total, config.image_channels, size, size), generator=generator, device=device)
    if config.timestep_density == "lognormal":
        normal = torch.randn(total, generator=generator, device=device)
        uniform = torch.rand(total, generator=generator, device=device) < config.timestep_uniform_share
        log_sigmas = config.timestep_lognormal_mean + config.timestep_lognormal_std * normal
        timesteps = torch.where(uniform, timesteps, lognormal_timesteps(alphas_cumprod, log_sigmas))
    share = slice(process_index * config.train_batch_size, (process_index + 1) * config.train_batch_size)
    return flip[share], timesteps[share], noise[share]


def step_loss(
    unet,
    noise_scheduler: DDPMScheduler,
    config: TrainingConfig,
    batch: torch.Tensor,
    micro_batch_index: int,
    *,
    process_index: int = 0,
    num_processes: int = 1,
    teacher=None,
    uncertainty: Optional[UncertaintyWeights] = None,
) -> torch.Tensor:
    """The loss of one micro-batch: (B, C, H, W) uint8 images -> flipped, scaled, noised, predicted, compared (for a
    distillation past its re-parameterisation steps, the consistency loss below); with `uncertainty` (loss_weighting
    learned), EDM2's weighting of it."""
    if config.distill_teacher is not None and micro_batch_index >= reparameterisation_micro_batches(config):
        return consistency_loss(
            unet, teacher, noise_scheduler, config, batch,
            micro_batch_index=micro_batch_index, process_index=process_index, num_processes=num_processes,
        )  # fmt: skip
    flip, timesteps, noise = step_draws(
        config, micro_batch_index, process_index, num_processes, batch.device, noise_scheduler.alphas_cumprod
    )
    if config.random_flip:
        batch = random_flip(batch, flip=flip)
    clean_images = to_model_range(batch)
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
    model_output = unet(noisy_images, timesteps).sample
    target = training_target(noise_scheduler, clean_images, noise, timesteps)
    weights = None
    if config.snr_gamma is not None:
        weights = min_snr_weights(compute_snr(noise_scheduler, timesteps), config.snr_gamma, config.prediction_type)
    if uncertainty is None:
        return diffusion_loss(model_output, target, config.loss_type, weights)
    logvars = uncertainty(timesteps)
    weights = torch.exp(-logvars) * (1 if weights is None else weights)
    return diffusion_loss(model_output, target, config.loss_type, weights) + logvars.mean()


# ---------------------------------------------------------------------------------------------
# Consistency distillation and tuning in DDPM time (Song et al. 2023; Luo et al. 2023, LCM; Geng et al. 2024, ECT),
# for LCMScheduler


def reparameterisation_micro_batches(config: TrainingConfig) -> int:
    """The micro-batches of a distillation's first phase, plain diffusion in the student's own prediction type (a v
    student of an epsilon teacher learns what v is there before the consistency loss starts; ECT's stage 0)."""
    return config.distill_reparam_steps * config.gradient_accumulation_steps


def link_intervals(config: TrainingConfig, micro_batch_index: int) -> int:
    """How many grid intervals a consistency link spans at this micro-batch: one, or with distill_halving_steps n
    (ECT's curriculum, Geng et al. 2024) the smallest power of two that reaches the data from every grid point (the
    target is the teacher's or the image's end point: diffusion fine-tuning), halved every n optimizer steps after
    the re-parameterisation phase, down to one."""
    if not config.distill_halving_steps:
        return 1
    steps = max(0, micro_batch_index - reparameterisation_micro_batches(config)) // config.gradient_accumulation_steps
    start = 1 << (config.distill_grid_steps - 1).bit_length()
    return max(1, start >> (steps // config.distill_halving_steps))


def predicted_x0_and_noise(
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    clip_range: Optional[float] = None,
):
    """The clean image and the noise that a model output implies at `timesteps` (x_t = sqrt(a) x0 + sqrt(1 - a) eps,
    v = sqrt(a) eps - sqrt(1 - a) x0, a = alpha_bar_t); with `clip_range` x0 is clipped first and the noise is the
    one that the clipped x0 implies (DPM-Solver++'s step; DDIMScheduler's with use_clipped_model_output)."""
    alpha = alphas_cumprod.to(sample.device)[timesteps].float().view(-1, 1, 1, 1)
    a, b = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        x0 = a * sample - b * model_output
    elif prediction_type == "epsilon":
        x0 = (sample - b * model_output) / a
    else:
        x0 = model_output
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    return x0, (sample - a * x0) / b.clamp(min=1e-6)


def clip_range(scheduler) -> Optional[float]:
    """How far the model's samplers clip x0 (its DDPMScheduler's clip_sample; LCMScheduler's thresholding at
    sample_max_value 1 clips the same, model.x0_clipping), or None."""
    return scheduler.config.clip_sample_range if scheduler.config.clip_sample else None


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """c_skip and c_out of the consistency function f(x, t) = c_skip x + c_out x0(x, t), exactly as LCMScheduler
    computes them (its get_scalings_for_boundary_condition_discrete): f(x, 0) = x, f ~ x0 beyond the first steps."""
    scaled = (timesteps.float() * timestep_scaling).view(-1, 1, 1, 1)
    return sigma_data**2 / (scaled**2 + sigma_data**2), scaled / (scaled**2 + sigma_data**2).sqrt()


def consistency_function(unet, scheduler, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """LCMScheduler's `denoised` for the UNet's output: x0 in the scheduler's prediction type, clipped as it clips.
    A clipped pixel gets no gradient (straight through, it lost at 1 and 2 steps: bench/README.md, 2026-12-07)."""
    output = unet(sample, timesteps).sample.float()
    x0, _ = predicted_x0_and_noise(
        scheduler.alphas_cumprod, scheduler.config.prediction_type, output, sample, timesteps,
        clip_range=clip_range(scheduler),
    )  # fmt: skip
    c_skip, c_out = boundary_scalings(timesteps)
    return c_skip * sample + c_out * x0


def teacher_ddim(teacher, noise_scheduler, sample: torch.Tensor, t: torch.Tensor, k, substeps: int):
    """Where the teacher's DDIM (x0 clipped as its samplers clip it) takes `sample` from timesteps `t` to t - k (k:
    one span, or one per sample), in `substeps` equal steps; past timestep 0 (t - k = -1), its last x0."""
    alphas, clip = noise_scheduler.alphas_cumprod.to(sample.device), clip_range(noise_scheduler)
    for j in range(substeps):
        output = teacher.unet(sample, t).sample.float()
        x0, eps = predicted_x0_and_noise(alphas, teacher.prediction_type, output, sample, t, clip_range=clip)
        t = t + (j * k) // substeps - ((j + 1) * k) // substeps  # the next sub-step's timestep
        alpha = alphas[t.clamp(min=0)].float().view(-1, 1, 1, 1)
        sample = torch.where((t < 0).view(-1, 1, 1, 1), x0, alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps)
    return sample


def consistency_loss(
    unet, teacher, noise_scheduler, config, batch, *, micro_batch_index, process_index, num_processes
):
    """One micro-batch of consistency distillation (or tuning) on LCMScheduler's grid t_n = n k - 1 (k = T / N): the
    student's f(x_t, t) is pulled toward its own f (no gradient) at the grid point one link nearer the data
    (link_intervals: one interval, or ECT's curriculum), x_s, which the teacher (model.Teacher: its UNet and its own
    prediction type) reaches from x_t with DDIM (teacher_ddim: one step, or distill_teacher_substeps across the link)
    (distill_target teacher), or which is the same noise on the image (distill_target data); past the last point the
    target is the teacher's x0 (or the image). The consistency error is weighted uniformly, as CM and LCM weight it
    (--snr_gamma: min(SNR, gamma) on it). The draws are step_draws' (the timestep picks the grid point), so a resumed
    distillation draws what an uninterrupted one does."""
    flip, timesteps, noise = step_draws(
        config, micro_batch_index, process_index, num_processes, batch.device, noise_scheduler.alphas_cumprod
    )
    clean_images = to_model_range(random_flip(batch, flip=flip) if config.random_flip else batch)
    k = config.ddpm_num_steps // config.distill_grid_steps
    n = timesteps * config.distill_grid_steps // config.ddpm_num_steps + 1
    t = n * k - 1  # a point of the grid
    s = (n - link_intervals(config, micro_batch_index)).clamp(min=0) * k - 1  # one nearer the data; -1: the data
    noisy_images = noise_scheduler.add_noise(clean_images, noise, t)
    at_data = (s < 0).view(-1, 1, 1, 1)
    with torch.no_grad():
        if config.distill_target == "teacher":
            earlier = teacher_ddim(teacher, noise_scheduler, noisy_images, t, t - s, config.distill_teacher_substeps)
        else:
            earlier = torch.where(
                at_data, clean_images, noise_scheduler.add_noise(clean_images, noise, s.clamp(min=0))
            )
        target = torch.where(at_data, earlier, consistency_function(unet, noise_scheduler, earlier, s.clamp(min=0)))
    prediction = consistency_function(unet, noise_scheduler, noisy_images, t)
    weights = torch.clamp(compute_snr(noise_scheduler, t), max=config.snr_gamma) if config.snr_gamma else None
    return diffusion_loss(prediction, target, config.loss_type, weights)
