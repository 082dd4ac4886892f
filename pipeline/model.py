"""The UNet and the noise scheduler, built from the configuration."""

import json
from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel

from .config import ConfigError, TrainingConfig


def unet_config(config: TrainingConfig) -> dict:
    """The UNet2DModel config of the run: from --model_config_name_or_path (a config.json, its folder or a Hub id)
    when given, else from the architecture fields; the sample size and channels are the run's. Channels still
    to be read from the data (auto) count as 3 here."""
    channels = config.image_channels or 3
    if config.model_config_name_or_path is None:
        architecture = {
            "block_out_channels": tuple(config.block_out_channels),
            "layers_per_block": config.layers_per_block,
            "down_block_types": tuple(config.down_block_types),
            "up_block_types": tuple(config.up_block_types),
            "mid_block_type": config.mid_block_type,
            "add_attention": config.add_attention,
            "attention_head_dim": config.attention_head_dim,
            "norm_num_groups": config.norm_num_groups,
            "act_fn": config.act_fn,
            "flip_sin_to_cos": config.flip_sin_to_cos,
            "freq_shift": config.freq_shift,
            "dropout": config.dropout,
        }
    else:
        source = Path(config.model_config_name_or_path)
        try:
            if source.is_file():  # a config file of any name
                architecture = json.loads(source.read_text())
            else:  # a model folder or a Hub id, as diffusers reads them
                architecture = dict(UNet2DModel.load_config(config.model_config_name_or_path))
        except (OSError, ValueError) as error:
            raise ConfigError(
                "model_config_name_or_path: cannot read a UNet2DModel config from "
                f"{config.model_config_name_or_path!r} ({type(error).__name__}: {str(error).splitlines()[0]})"
            ) from None
        if architecture.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise ConfigError(
                f"model_config_name_or_path: holds a {architecture['_class_name']} config, not a UNet2DModel's"
            )
    return {**architecture, "sample_size": config.resolution, "in_channels": channels, "out_channels": channels}


def build_unet(config: TrainingConfig) -> UNet2DModel:
    """A freshly initialised UNet2DModel for the run's architecture."""
    architecture = unet_config(config)
    try:
        return UNet2DModel.from_config(architecture)
    except (TypeError, ValueError) as error:  # a config file whose values UNet2DModel refuses
        raise ConfigError(f"model_config_name_or_path: the UNet cannot be built ({error})") from None


def x0_clipping(clip_sample: bool) -> dict:
    """Scheduler config keys with which every diffusers sampler clips the predicted x0 to [-1, 1] when
    `clip_sample` asks for it. DDPM and DDIM read `clip_sample`; DPM-Solver++ and UniPC read only `thresholding`,
    which with `sample_max_value` 1 clips exactly as `clip_sample` does (the dynamic threshold is clamped to
    [1, sample_max_value]). Without it a cosine-schedule epsilon model sampled from t = T - 1 (trailing spacing),
    where its noise prediction is divided by sqrt(alpha_bar) ~ 0.005, sends DPM-Solver++ off the data range
    (bench/README.md, quality per compute)."""
    return {"thresholding": True, "sample_max_value": 1.0} if clip_sample else {}


def build_noise_scheduler(config: TrainingConfig) -> DDPMScheduler:
    """The training scheduler; exported with the pipeline, so it is also the default sampler."""
    return DDPMScheduler(
        num_train_timesteps=config.ddpm_num_steps,
        beta_schedule=config.ddpm_beta_schedule,
        beta_start=config.ddpm_beta_start,
        beta_end=config.ddpm_beta_end,
        variance_type=config.ddpm_variance_type,
        clip_sample=config.ddpm_clip_sample,
        prediction_type=config.prediction_type,
        rescale_betas_zero_snr=config.rescale_betas_zero_snr,
        timestep_spacing=config.ddpm_timestep_spacing,
        **x0_clipping(config.ddpm_clip_sample),
    )


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def describe_unet(unet: UNet2DModel) -> str:
    """A table of the UNet's levels: resolution, channels, blocks, resnets and attention."""
    lines = [
        f"{'level':>5}  {'resolution':>10}  {'channels':>8}  {'down block':<24}  {'up block':<22}  resnets (down/up)"
    ]
    for level, channels in enumerate(unet.config.block_out_channels):
        size = unet.config.sample_size // 2**level
        down, up = unet.down_blocks[level], unet.up_blocks[-1 - level]
        lines.append(
            f"{level:>5}  {f'{size}x{size}':>10}  {channels:>8}  {type(down).__name__:<24}  {type(up).__name__:<22}  "
            f"{len(down.resnets)}/{len(up.resnets)}"
        )
    if unet.mid_block is None:
        mid = "none"
    else:
        attention = "with" if unet.mid_block.attentions[0] is not None else "no"
        mid = f"{type(unet.mid_block).__name__} ({attention} attention)"
    lines.append(f"mid block: {mid}")
    lines.append(f"parameters: {count_parameters(unet):,}")
    return "\n".join(lines)
