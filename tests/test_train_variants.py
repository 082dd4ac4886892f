"""In-process tiny runs of the training options that the subprocess runs do not cover."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, logged_scalars, train
from pipeline.config import TrainingConfig


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each run makes its own Accelerator


@pytest.mark.parametrize(
    "options",
    [
        {"prediction_type": "v_prediction", "loss_type": "l2", "mixed_precision": "no"},
        {"prediction_type": "sample", "loss_type": "l1", "mixed_precision": "bf16"},
        {
            "prediction_type": "v_prediction",
            "snr_gamma": 5.0,
            "rescale_betas_zero_snr": True,
            "ddpm_timestep_spacing": "trailing",
        },
        {"snr_gamma": 5.0, "loss_type": "l1", "ema_extra_decays": [0.5, 0.9]},
        {
            "prediction_type": "epsilon",
            "loss_type": "l1",
            "optimizer": "adam",
            "lr_scheduler": "cosine",
            "use_ema": False,
            "gradient_accumulation_steps": 2,
            "max_grad_norm": 0.0,
            "ddpm_beta_schedule": "linear",
        },
    ],
    ids=[
        "v_prediction",
        "sample",
        "v-minsnr-zero-snr-trailing",
        "epsilon-minsnr-l1-three-emas",
        "epsilon-adam-accumulation-no-ema",
    ],
)
def test_prediction_types_and_options_train(tmp_path, options):
    values = {
        **TINY,
        "max_train_steps": 40,
        "learning_rate": 0.005,
        "logging_steps": 5,
        "save_images_steps": 0,
        "checkpointing_steps": 0,
        "max_train_samples": 256,
        "output_dir": str(tmp_path / "out"),
        **options,
    }
    out = train(TrainingConfig(**values))
    losses = [event.value for event in logged_scalars(out, "loss")]
    assert len(losses) == 8
    assert losses[-1] < 0.8 * losses[0], losses
    run = json.loads((out / "training_config.json").read_text())["run"]
    assert run["finished"] and run["images_per_step"] == 8 * options.get("gradient_accumulation_steps", 1)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (out / "checkpoints").exists()
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["timestep_spacing"] == values.get("ddpm_timestep_spacing", "trailing")
    assert scheduler["rescale_betas_zero_snr"] == values.get("rescale_betas_zero_snr", False)
    for decay in values.get("ema_extra_decays", []):  # each other EMA length is a whole pipeline of its own
        other = load_file(out / f"ema-{decay:g}" / "unet" / "diffusion_pytorch_model.safetensors")
        main = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
        assert other.keys() == main.keys() and any(not torch.equal(other[name], main[name]) for name in main)


def test_too_few_images_for_one_batch_stops_before_training(tmp_path):

    from pipeline.errors import PipelineError

    config = TrainingConfig(**{**TINY, "max_train_samples": 5, "output_dir": str(tmp_path / "out")})
    with pytest.raises(PipelineError, match="fewer than one global batch"):
        train(config)
    assert not (tmp_path / "out").exists()


def test_trains_on_an_sfhq_shaped_zip_as_downloaded(tmp_path, sfhq_tree):
    """The Kaggle download, unconverted: bad files are skipped and reported, training goes on."""
    _, archive = sfhq_tree
    values = {
        **TINY,
        "dataset_name": None,
        "train_data_dir": str(archive),
        "image_channels": 3,
        "max_train_samples": None,
        "min_image_size": 16,
        "max_train_steps": 4,
        "save_images_steps": 0,
        "checkpointing_steps": 0,
        "output_dir": str(tmp_path / "out"),
    }
    out = train(TrainingConfig(**values))
    run = json.loads((out / "training_config.json").read_text())["run"]
    assert run["data"]["source"].startswith("archive ") and run["data"]["files_skipped"] == 5
    assert run["num_train_images"] == run["data"]["images_kept"] == 35
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 3


@pytest.mark.usefixtures("short_stream_shutdowns")
def test_streaming_run_checkpoints_its_position_and_resumes(tmp_path):
    values = {
        **TINY,
        "streaming": True,
        "max_train_samples": None,
        "max_train_steps": 6,
        "save_images_steps": 0,
        "checkpointing_steps": 3,
        "output_dir": str(tmp_path / "out"),
    }
    out = train(TrainingConfig(**values))
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "stream_state_0.json").read_text())
    assert state == {"epoch": 0, "examples_read": 24, "next_micro_batch": 3}
    run = json.loads((out / "training_config.json").read_text())["run"]
    assert run["num_train_images"] is None and run["data"]["files_skipped"] == 0

    import shutil

    from safetensors.torch import load_file

    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    train(TrainingConfig(**{**values, "output_dir": str(resumed), "resume_from_checkpoint": "latest"}))
    expected = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    actual = load_file(resumed / "unet" / "diffusion_pytorch_model.safetensors")
    for name in expected:
        assert (expected[name] == actual[name]).all(), name
