import numpy as np
import pytest
import torch

from conftest import REPO
from pipeline.config import parse_config
from pipeline.diffusion import diffusion_loss, training_target
from pipeline.model import build_noise_scheduler, build_unet, count_parameters
from pipeline.optim import cosine_with_min_lr


PRESETS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_each_preset_builds_its_unet(preset):
    config = parse_config(["--config", str(preset)])
    unet = build_unet(config)
    assert unet.config.sample_size == config.resolution
    assert unet.config.in_channels == unet.config.out_channels == config.image_channels
    assert len(unet.down_blocks) == len(config.block_out_channels)


def test_report_preset_mirrors_the_simple_unet():
    config = parse_config(["--config", "configs/report_sfhq64.yaml"])
    unet = build_unet(config)
    assert [block.resnets[0].out_channels for block in unet.down_blocks] == [64, 128, 256, 512, 1024]
    assert [len(block.resnets) for block in unet.down_blocks] == [1, 1, 1, 1, 1]
    assert all(type(block).__name__ == "DownBlock2D" for block in unet.down_blocks)
    assert all(type(block).__name__ == "UpBlock2D" for block in unet.up_blocks)
    assert unet.mid_block is None
    assert not any("attn" in name or "attention" in name for name, _ in unet.named_modules())
    assert (unet.config.flip_sin_to_cos, unet.config.freq_shift, unet.config.act_fn) == (False, 1, "silu")
    assert count_parameters(unet) == 114_433_219
    # 64 -> 4 pixels across the four downsamplings, and back
    assert unet(torch.zeros(1, 3, 64, 64), torch.tensor([5])).sample.shape == (1, 3, 64, 64)


def test_report_time_embedding_matches_the_simple_unet_formula():
    """SimpleUnet: freq_i = exp(-log(10000) * i / (half - 1)), embedding = [sin(t f), cos(t f)]."""
    unet = build_unet(parse_config(["--config", "configs/report_sfhq64.yaml"]))
    timesteps = torch.tensor([0, 1, 17, 299])
    half = unet.config.block_out_channels[0] // 2
    frequencies = np.exp(-np.log(10000) * np.arange(half) / (half - 1))
    angles = timesteps.numpy()[:, None].astype(np.float64) * frequencies[None]
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    np.testing.assert_allclose(unet.time_proj(timesteps).numpy(), expected, atol=1e-4)


def test_improved_preset_has_attention_at_16_and_8_pixels():
    config = parse_config(["--config", "configs/sfhq64_improved.yaml"])
    unet = build_unet(config)
    with_attention = [
        config.resolution // 2**level for level, block in enumerate(unet.down_blocks) if hasattr(block, "attentions")
    ]
    assert with_attention == [16, 8]
    assert unet.mid_block.attentions[0] is not None


def test_linear_betas_equal_the_reports_formula():
    scheduler = build_noise_scheduler(parse_config(["--config", "configs/report_sfhq64.yaml"]))
    expected = np.linspace(1e-4, 0.02, 300, dtype=np.float64)
    np.testing.assert_allclose(scheduler.betas.numpy(), expected, rtol=1e-6, atol=1e-9)
    assert scheduler.config.variance_type == "fixed_small" and scheduler.config.clip_sample is False


def test_cosine_betas_equal_the_reports_formula():
    """Nichol & Dhariwal: alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), beta clipped at 0.999."""
    config = parse_config(["--config", "configs/report_sfhq64.yaml", "--ddpm_beta_schedule", "squaredcos_cap_v2"])
    scheduler = build_noise_scheduler(config)
    T, s = 300, 0.008
    alpha_bar = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1 + s) * np.pi / 2) ** 2
    expected = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    np.testing.assert_allclose(scheduler.betas.numpy(), expected, rtol=1e-5, atol=1e-8)
    assert expected[-1] == 0.999


def test_training_targets_follow_the_prediction_type():
    config = parse_config(["--ddpm_num_steps", "100"])
    clean, noise = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    timesteps = torch.tensor([0, 10, 50, 99])
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        config.prediction_type = prediction_type
        scheduler = build_noise_scheduler(config)
        alpha_bar = scheduler.alphas_cumprod.double()[timesteps][:, None, None, None]
        expected = {
            "epsilon": noise,
            "sample": clean,
            "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean,  # Salimans & Ho 2022
        }[prediction_type]
        torch.testing.assert_close(
            training_target(scheduler, clean, noise, timesteps).double(), expected, rtol=1e-5, atol=1e-6
        )


def test_losses():
    output, target = torch.tensor([[1.0, -2.0]], dtype=torch.bfloat16), torch.tensor([[0.0, 0.0]])
    assert diffusion_loss(output, target, "l1").item() == pytest.approx(1.5)
    assert diffusion_loss(output, target, "l2").item() == pytest.approx(2.5)
    assert diffusion_loss(output, target, "l2").dtype == torch.float32


def test_cosine_with_min_lr_schedule():
    values = [cosine_with_min_lr(step, warmup_steps=10, total_steps=110, min_ratio=0.01) for step in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)  # linear warmup
    assert values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.505)  # half way down the cosine: (1 + 0.01) / 2
    assert values[110] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
