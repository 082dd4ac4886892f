import dataclasses
import math

import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr

from conftest import REPO
from pipeline.arguments import parse_config
from pipeline.config import TrainingConfig
from pipeline.diffusion import (
    consistency_function,
    consistency_loss,
    diffusion_loss,
    link_intervals,
    min_snr_weights,
    predicted_x0_and_noise,
    step_draws,
    teacher_ddim,
    to_model_range,
    training_target,
)
from pipeline.errors import PipelineError
from pipeline.model import build_noise_scheduler, build_unet, count_parameters
from pipeline.optim import build_optimizer, lr_schedule


PRESETS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_each_preset_builds_its_unet(preset):
    config = parse_config(["--config", str(preset), "--train_data_dir", "any"])
    unet = build_unet(config)
    assert unet.config.sample_size == config.resolution
    assert unet.config.in_channels == unet.config.out_channels == (config.image_channels or 3)
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
    # iCT's pseudo-Huber distance per image (over sqrt(d)): sqrt(mean squared error + c^2) - c, then the mean
    pair = torch.tensor([[1.0, -2.0], [0.0, 0.0]]), torch.zeros(2, 2)
    expected = ((math.sqrt(2.5 + 0.00054**2) - 0.00054) + 0.0) / 2
    assert diffusion_loss(*pair, "pseudo_huber").item() == pytest.approx(expected)
    weighted = diffusion_loss(*pair, "pseudo_huber", torch.tensor([2.0, 1.0])).item()
    assert weighted == pytest.approx(2 * expected)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_equal_the_papers_weighting_of_the_x0_error(schedule, prediction_type):
    """Hang et al. 2023: the loss is min(SNR, gamma) * ||x0_hat - x0||^2. Computed here in float64 from the betas,
    through the x0 each prediction type implies, and compared with our weight times the error on the target."""
    config = parse_config(
        ["--ddpm_num_steps", "1000", "--ddpm_beta_schedule", schedule, "--prediction_type", prediction_type]
    )
    scheduler = build_noise_scheduler(config)
    alpha_bar = scheduler.alphas_cumprod.double().numpy()  # the schedule itself is checked against float64 above
    timesteps = torch.tensor([0, 1, 10, 100, 400, 700, 999])
    snr = alpha_bar[timesteps] / (1 - alpha_bar[timesteps])
    gamma = 5.0
    weights = min_snr_weights(compute_snr(scheduler, timesteps), gamma, prediction_type).double().numpy()

    rng = np.random.default_rng(0)
    x0, noise, prediction = (rng.normal(size=(len(timesteps), 16)) for _ in range(3))
    a, sigma = np.sqrt(alpha_bar[timesteps])[:, None], np.sqrt(1 - alpha_bar[timesteps])[:, None]
    x_t = a * x0 + sigma * noise
    target = {"epsilon": noise, "v_prediction": a * noise - sigma * x0, "sample": x0}[prediction_type]
    x0_hat = {
        "epsilon": (x_t - sigma * prediction) / a,
        "v_prediction": a * x_t - sigma * prediction,
        "sample": prediction,
    }
    papers = np.minimum(snr, gamma) * ((x0_hat[prediction_type] - x0) ** 2).mean(axis=1)
    ours = weights * ((prediction - target) ** 2).mean(axis=1)
    np.testing.assert_allclose(ours, papers, rtol=1e-5)
    # and the loss function applies them per image
    loss = diffusion_loss(torch.from_numpy(prediction), torch.from_numpy(target), "l2", torch.from_numpy(weights))
    assert loss.item() == pytest.approx(ours.mean(), rel=1e-5)


def test_zero_terminal_snr_and_timestep_spacing_are_exported_for_stock_samplers(tmp_path):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    config = parse_config(
        ["--prediction_type", "v_prediction", "--rescale_betas_zero_snr", "--ddpm_timestep_spacing", "trailing"]
    )
    scheduler = build_noise_scheduler(config)
    assert compute_snr(scheduler, torch.tensor([config.ddpm_num_steps - 1])).item() == pytest.approx(0, abs=1e-6)
    scheduler.save_config(tmp_path)
    for stock in (DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler):
        loaded = stock.from_pretrained(tmp_path)
        assert loaded.config.rescale_betas_zero_snr and loaded.config.timestep_spacing == "trailing"
        loaded.set_timesteps(10)
        assert int(loaded.timesteps[0]) == config.ddpm_num_steps - 1  # trailing: the first step is the last timestep
    with pytest.raises(PipelineError, match="rescale_betas_zero_snr: .* use --prediction_type v_prediction"):
        parse_config(["--rescale_betas_zero_snr"])  # an epsilon model cannot start from pure noise


def test_clip_sample_reaches_every_stock_sampler_and_leaves_the_ddpm_chain_as_it_was(tmp_path):
    """DPM-Solver++ and UniPC ignore clip_sample: the export also sets thresholding with sample_max_value 1, so a
    solver swapped in from the saved config clips x0 to [-1, 1] on its own; the DDPM chain gives the same numbers
    as with clip_sample alone, and a config without clipping gets none."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    build_noise_scheduler(parse_config([])).save_config(tmp_path)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 1, 4, 4, generator=generator)
    wild = 50 * torch.randn(2, 1, 4, 4, generator=generator)  # a noise prediction far off: x0 leaves [-1, 1]
    solvers = [
        DPMSolverMultistepScheduler.from_pretrained(tmp_path, algorithm_type="dpmsolver++"),
        DPMSolverMultistepScheduler.from_pretrained(tmp_path, algorithm_type="sde-dpmsolver++"),
        UniPCMultistepScheduler.from_pretrained(tmp_path),
    ]
    for solver in solvers:
        solver.set_timesteps(5)
        solver.step(wild, solver.timesteps[0], sample)
        assert solver.model_outputs[-1].abs().max() <= 1.0  # the x0 the solver goes on from
    steps = []
    for scheduler in (
        DDPMScheduler.from_pretrained(tmp_path, thresholding=False),
        DDPMScheduler.from_pretrained(tmp_path),
    ):
        scheduler.set_timesteps(5)
        generator = torch.Generator().manual_seed(1)
        steps.append(scheduler.step(wild, scheduler.timesteps[0], sample, generator=generator).prev_sample)
    assert torch.equal(steps[0], steps[1])
    assert not build_noise_scheduler(parse_config(["--ddpm_clip_sample", "false"])).config.thresholding


def test_cosine_with_min_lr_schedule():
    """transformers' cosine with a floor, as the optimizer sees it: a linear warmup from 0, then a half cosine."""
    config = parse_config(["--learning_rate", "1e-3", "--min_learning_rate", "1e-5", "--lr_warmup_steps", "10"])
    optimizer = build_optimizer(config, [torch.nn.Parameter(torch.zeros(1))])
    values = [lr_schedule(config, optimizer, total_steps=110)(step) for step in range(111)]

    def cosine(step):
        return 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100))

    expected = [1e-3 * step / 10 if step < 10 else cosine(step) for step in range(111)]
    assert values == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert values[60] == pytest.approx((1e-3 + 1e-5) / 2) and values[110] == pytest.approx(1e-5)


def test_ema_max_decays_that_the_warmup_never_reaches_are_found():
    """With the warmup, a max decay binds only once 1 - (1 + n)^-power exceeds it: decays above the value at the
    last step give identical averages, which training warns about."""
    from pipeline.ema import ema_decay, unreached_decays

    reached, unreached = unreached_decays([0.999, 0.99, 0.9995, 0.9999], 800, 1.0, 0.75)
    assert reached == pytest.approx(1 - 800**-0.75) and reached == ema_decay(800, 1.0, 1.0, 0.75)
    assert unreached == [0.999, 0.9995, 0.9999]  # bench row ema-lengths: these three scored the same
    assert unreached_decays([0.999, 0.9995], 78_125, 1.0, 0.75)[1] == []


def test_lognormal_timesteps_are_the_nearest_in_log_sigma_and_leave_the_other_draws_alone():
    """EDM's density mapped to discrete timesteps, against a float64 NumPy search; flips and noise unchanged."""
    from pipeline.diffusion import lognormal_timesteps

    config = TrainingConfig(image_channels=1, train_batch_size=4096)
    alphas = build_noise_scheduler(config).alphas_cumprod
    log_sigmas = torch.linspace(-8, 8, 2001)
    table = 0.5 * np.log((1 - alphas.double().numpy()) / alphas.double().numpy())
    expected = np.abs(table[None, :] - log_sigmas.double().numpy()[:, None]).argmin(axis=1)
    assert (lognormal_timesteps(alphas, log_sigmas).numpy() == expected).all()

    uniform = step_draws(config, 7, 0, 1, "cpu", alphas)
    lognormal = dataclasses.replace(config, timestep_density="lognormal", timestep_uniform_share=0.1)
    flips, timesteps, noise = step_draws(lognormal, 7, 0, 1, "cpu", alphas)
    assert torch.equal(flips, uniform[0]) and torch.equal(noise, uniform[2])
    kept = (timesteps == uniform[1]).float().mean().item()
    assert 0.1 <= kept < 0.2  # the uniform share, plus chance agreement
    median = torch.tensor(table)[timesteps].median().item()
    assert abs(median - (-1.2)) < 0.15  # EDM's P_mean, within the uniform share's pull


def test_learned_uncertainty_weighting_is_minimised_at_the_log_of_each_bins_loss():
    """EDM2's loss / exp(u) + u: its gradient in u vanishes where u = log(loss) for each bin of timesteps."""
    from pipeline.diffusion import UncertaintyWeights

    weights = UncertaintyWeights(1000, bins=10)
    timesteps = torch.arange(0, 1000, 50)  # two per bin
    losses = torch.rand(20) + 0.5
    per_bin = losses.view(10, 2).mean(1)
    with torch.no_grad():
        weights.logvars.copy_(per_bin.log())
    logvars = weights(timesteps)
    (losses / logvars.exp() + logvars).mean().backward()
    assert weights.logvars.grad.abs().max() < 1e-6
    assert torch.equal(weights(torch.tensor([0, 99, 100, 999])), weights.logvars[[0, 0, 1, 9]])


@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_consistency_function_is_what_lcmscheduler_denoises_to(prediction_type, clip_sample):
    """Training and sampling agree: consistency_function(x, t) equals LCMScheduler.step(...).denoised at every step
    of a 4-step sample, for each prediction type, with the x0 clipping the export's LCMScheduler gets."""
    from pipeline.model import make_sampler

    config = TrainingConfig(
        output_dir="unused", resolution=8, image_channels=1, block_out_channels=[8, 16], norm_num_groups=4,
        down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
        prediction_type=prediction_type, ddpm_clip_sample=clip_sample,
    )  # fmt: skip
    torch.manual_seed(0)
    unet, scheduler = build_unet(config).eval(), build_noise_scheduler(config)
    sampler = make_sampler("lcm", scheduler.config, original_inference_steps=50)
    sampler.set_timesteps(4)
    sample = torch.randn(3, 1, 8, 8) * 3  # far from the data range, so that the clipping acts
    clipping_acted = False
    with torch.no_grad():
        for timestep in sampler.timesteps:
            output = unet(sample, timestep).sample
            step = sampler.step(output, timestep, sample, generator=torch.manual_seed(1))
            timesteps = timestep.repeat(3)
            torch.testing.assert_close(
                consistency_function(unet, scheduler, sample, timesteps), step.denoised, rtol=1e-5, atol=1e-5
            )
            x0, _ = predicted_x0_and_noise(scheduler.alphas_cumprod, prediction_type, output, sample, timesteps)
            clipping_acted |= bool(x0.abs().max() > 1)
            sample = step.prev_sample
    assert clipping_acted or prediction_type == "sample"  # an untrained UNet's "sample" output stays small


def test_a_distillation_trains_plain_diffusion_first_then_the_consistency_loss():
    """The re-parameterisation phase: for its steps a v student of an epsilon teacher gets the plain v loss (the same
    draws as a training run's), then the consistency loss, whose teacher reads its own (epsilon) outputs."""
    from pipeline.diffusion import step_loss
    from pipeline.model import Teacher

    values = {
        "output_dir": "unused", "resolution": 8, "image_channels": 1, "block_out_channels": [8, 16],
        "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"], "prediction_type": "v_prediction", "ddpm_num_steps": 100,
        "distill_grid_steps": 10, "train_batch_size": 4,
    }  # fmt: skip
    plain = TrainingConfig(**values)
    student = TrainingConfig(**values, distill_teacher="teacher", distill_reparam_steps=2)
    torch.manual_seed(0)
    unet, scheduler = build_unet(plain), build_noise_scheduler(plain)
    teacher = Teacher(build_unet(plain).requires_grad_(False), "epsilon")
    batch = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    for index in (0, 1):
        assert torch.equal(
            step_loss(unet, scheduler, student, batch, index, teacher=teacher),
            step_loss(unet, scheduler, plain, batch, index),
        )
    options = {"micro_batch_index": 2, "process_index": 0, "num_processes": 1}
    consistency = consistency_loss(unet, teacher, scheduler, student, batch, **options)
    assert torch.equal(step_loss(unet, scheduler, student, batch, 2, teacher=teacher), consistency)
    assert not torch.equal(consistency, step_loss(unet, scheduler, plain, batch, 2))
    as_v = teacher._replace(prediction_type="v_prediction")  # the teacher's outputs are read as what it predicts
    assert not torch.equal(consistency, consistency_loss(unet, as_v, scheduler, student, batch, **options))


def test_ects_curriculum_first_links_every_grid_point_to_the_data_then_halves_down_to_one_interval():
    """distill_halving_steps: after the re-parameterisation phase the links span 16 intervals of a grid of 10 (all
    reach the data: the loss is the consistency function's distance to the image, diffusion fine-tuning), then 8, 4,
    2 and 1, where the loss is the one without the curriculum; with a teacher target, its DDIM spans the link."""
    from pipeline.model import Teacher

    values = {
        "output_dir": "unused", "resolution": 8, "image_channels": 1, "block_out_channels": [8, 16],
        "norm_num_groups": 4, "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"], "ddpm_num_steps": 100, "distill_grid_steps": 10,
        "train_batch_size": 4, "distill_teacher": "teacher", "distill_reparam_steps": 2,
        "gradient_accumulation_steps": 2, "distill_halving_steps": 3, "distill_target": "data",
    }  # fmt: skip
    config = TrainingConfig(**values)
    assert [link_intervals(config, index) for index in range(4, 40, 6)] == [16, 8, 4, 2, 1, 1]
    assert link_intervals(config, 0) == 16  # inside the re-parameterisation phase: the first span, not a shift error
    assert link_intervals(dataclasses.replace(config, distill_halving_steps=0), 4) == 1
    torch.manual_seed(0)
    unet, scheduler = build_unet(config), build_noise_scheduler(config)
    batch = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    options = {"process_index": 0, "num_processes": 1}
    _, timesteps, noise = step_draws(config, 4, 0, 1, "cpu", scheduler.alphas_cumprod)
    t = (timesteps // 10 + 1) * 10 - 1
    clean = to_model_range(batch)
    reached = consistency_function(unet, scheduler, scheduler.add_noise(clean, noise, t), t)
    loss = consistency_loss(unet, None, scheduler, config, batch, micro_batch_index=4, **options)
    torch.testing.assert_close(loss, diffusion_loss(reached, clean, "l2"))
    teacher = Teacher(build_unet(config).requires_grad_(False), "epsilon")
    noisy = scheduler.add_noise(clean, noise, t)
    for substeps in (1, 2):  # with a teacher: its clipped x0, or its 2 DDIM steps from t to the data
        distilled = dataclasses.replace(config, distill_target="teacher", distill_teacher_substeps=substeps)
        with torch.no_grad():
            ends = teacher_ddim(teacher, scheduler, noisy, t, t + 1, substeps)
        x0, _ = predicted_x0_and_noise(scheduler.alphas_cumprod, "epsilon", teacher.unet(noisy, t).sample, noisy, t)
        assert torch.equal(ends, x0.clamp(-1, 1)) == (substeps == 1)
        loss = consistency_loss(unet, teacher, scheduler, distilled, batch, micro_batch_index=4, **options)
        torch.testing.assert_close(loss, diffusion_loss(reached, ends, "l2"))
        curriculum, fixed = [  # the last stage: one interval, as without the curriculum
            consistency_loss(unet, teacher, scheduler, late, batch, micro_batch_index=28, **options)
            for late in (distilled, dataclasses.replace(distilled, distill_halving_steps=0))
        ]
        assert torch.equal(curriculum, fixed)


@pytest.mark.parametrize("substeps", [1, 4])
def test_the_teachers_target_is_stock_ddims_step_across_each_interval(substeps):
    """teacher_ddim from t to t - k in `substeps` steps equals diffusers' DDIMScheduler (eta 0, x0 clipped as the
    teacher's samplers clip it, the noise the one the clipped x0 implies, as in DPM-Solver++) stepping through the
    same timesteps; at the grid's last point, its last x0."""
    from diffusers import DDIMScheduler

    from pipeline.model import Teacher

    config = TrainingConfig(
        output_dir="unused", resolution=8, image_channels=1, block_out_channels=[8, 16], norm_num_groups=4,
        down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
        ddpm_num_steps=100,
    )  # fmt: skip
    torch.manual_seed(0)
    unet, scheduler = build_unet(config).eval(), build_noise_scheduler(config)
    ddim = DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True)
    sample = torch.randn(1, 1, 8, 8) * 3  # far from the data range, so that the clipping acts
    with torch.no_grad():
        for t, k in ((59, 20), (19, 20)):
            reached = teacher_ddim(Teacher(unet, "epsilon"), scheduler, sample, torch.tensor([t]), k, substeps)
            expected = sample
            for j in range(substeps):
                now, after = t - j * k // substeps, t - (j + 1) * k // substeps
                ddim.num_inference_steps = 100 // (now - after)  # its step size: now - after timesteps
                step = ddim.step(unet(expected, now).sample, now, expected, use_clipped_model_output=True)
                expected = step.pred_original_sample if after < 0 else step.prev_sample
            torch.testing.assert_close(reached, expected, rtol=1e-5, atol=1e-5)
