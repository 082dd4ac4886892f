"""The UNet and the noise scheduler, built from the configuration."""

from diffusers import DDPMScheduler, UNet2DModel

from .config import TrainingConfig


def build_unet(config: TrainingConfig) -> UNet2DModel:
    """A freshly initialised UNet2DModel for the configured architecture."""
    return UNet2DModel(
        sample_size=config.resolution,
        in_channels=config.image_channels,
        out_channels=config.image_channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=tuple(config.down_block_types),
        up_block_types=tuple(config.up_block_types),
        mid_block_type=config.mid_block_type,
        add_attention=config.add_attention,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        act_fn=config.act_fn,
        flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=config.freq_shift,
        dropout=config.dropout,
    )


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
    )


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def describe_unet(config: TrainingConfig, unet: UNet2DModel) -> str:
    """A table of the UNet's levels: resolution, channels, blocks, resnets and attention."""
    lines = [
        f"{'level':>5}  {'resolution':>10}  {'channels':>8}  {'down block':<24}  {'up block':<22}  resnets (down/up)"
    ]
    for level, channels in enumerate(config.block_out_channels):
        size = config.resolution // 2**level
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
