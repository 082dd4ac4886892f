"""What a user arriving from the diffusers example, Accelerate or the Hub expects, typed as they would type it."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, TINY, launch, train
from pipeline.arguments import parse_config
from pipeline.config import TrainingConfig
from pipeline.errors import PipelineError


FAKE_TOKEN = "hf_ExampleFlagToken0123456789abcdefXYZ"


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each run makes its own Accelerator


def tiny(tmp_path, **changes) -> TrainingConfig:
    values = {**TINY, "output_dir": str(tmp_path / "out"), "save_images_steps": 0, "checkpointing_steps": 0, **changes}
    return TrainingConfig(**values)


# ---------------------------------------------------------------------------------------------
# Own data, right model


def grayscale_folder(folder: Path, count: int = 12) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_own_colour_images_train_an_rgb_model_and_the_banner_says_what_runs(tmp_path, sfhq_tree, capsys):
    root, _ = sfhq_tree  # colour JPEGs and one grayscale JPEG: a mixed source is RGB
    config = tiny(tmp_path, dataset_name=None, train_data_dir=str(root), image_channels=None, min_image_size=16)
    out = train(config)
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 3
    assert json.loads((out / "training_config.json").read_text())["config"]["image_channels"] == 3  # resolved
    printed = capsys.readouterr().out
    assert "UNet at 16x16 RGB (no preset: the quickstart's defaults)" in printed
    assert "for your own images start from `--config configs/images64.yaml`" in printed


def test_a_grayscale_source_gives_a_one_channel_model_and_colour_made_gray_is_said(tmp_path, sfhq_tree, capsys):
    folder = grayscale_folder(tmp_path / "gray")
    out = train(
        tiny(tmp_path, dataset_name=None, train_data_dir=str(folder), image_channels=None, max_train_samples=None)
    )
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 1
    root, _ = sfhq_tree
    forced = tiny(
        tmp_path,
        dataset_name=None,
        train_data_dir=str(root),
        image_channels=1,
        min_image_size=16,
        output_dir=str(tmp_path / "forced"),
    )
    train(forced)
    assert "colour images converted to grayscale (--image_channels 1)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Mixed precision as Accelerate users set it


PRINT_PRECISION = """
import sys
sys.path.insert(0, {repo!r})
from pipeline.arguments import parse_config
print("mixed_precision=" + parse_config(sys.argv[1:]).mixed_precision)
"""


@pytest.mark.parametrize(
    "launcher, flags, expected",
    [
        ([], [], "auto"),  # nothing said to Accelerate: the preset's (the quickstart's auto)
        (["--mixed_precision", "no"], [], "no"),  # accelerate launch --mixed_precision wins over the preset
        (["--mixed_precision", "no"], ["--mixed_precision", "bf16"], "bf16"),  # our own flag wins over all
        (["--config_file", "{no_config}"], [], "no"),  # the Accelerate config file's value
        (["--config_file", "accelerate_config.yaml"], [], "auto"),  # ours sets none: the preset's
        (["--mixed_precision", "no"], ["--config", "configs/report_sfhq64.yaml", "--max_train_steps", "1"], "no"),
    ],
    ids=["preset", "launcher-flag", "own-flag", "accelerate-config-file", "our-accelerate-config", "over-a-preset"],
)
def test_mixed_precision_follows_the_flag_then_accelerate_then_the_preset(tmp_path, launcher, flags, expected):
    script = tmp_path / "print_precision.py"
    script.write_text(PRINT_PRECISION.format(repo=str(REPO)))
    no_config = tmp_path / "accelerate_no.yaml"
    no_config.write_text(
        yaml.safe_dump(
            {
                "compute_environment": "LOCAL_MACHINE",
                "distributed_type": "NO",
                "num_processes": 1,
                "mixed_precision": "no",
            }
        )
    )
    launcher = [argument.format(no_config=no_config) for argument in launcher]
    result = launch(*launcher, str(script), *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"mixed_precision={expected}" in result.stdout


# ---------------------------------------------------------------------------------------------
# The diffusers example's command line


def test_the_examples_flags_work_and_the_token_is_never_written(tmp_path):
    unet_config = tmp_path / "unet_config.json"
    unet_config.write_text(
        json.dumps(
            {
                "_class_name": "UNet2DModel",
                "block_out_channels": [8, 16],
                "layers_per_block": 1,
                "down_block_types": ["DownBlock2D", "DownBlock2D"],
                "norm_num_groups": 4,
                "up_block_types": ["UpBlock2D", "UpBlock2D"],
                "sample_size": 64,
            }
        )
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "max_train_steps": 8, "checkpointing_steps": 0}))
    output_dir = tmp_path / "out"
    result = launch(
        "--config_file",
        "accelerate_config.yaml",
        "train_ddpm.py",
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--output_dir",
        str(output_dir),
        "--eval_batch_size",
        "4",
        "--ddpm_num_inference_steps",
        "3",
        "--save_images_epochs",
        "1",
        "--save_model_epochs",
        "1",
        "--dataloader_num_workers",
        "4",
        "--logging_dir",
        "tb",
        "--report_to",
        "tensorboard",
        "--hub_token",
        FAKE_TOKEN,
        "--local_rank",
        "0",
        "--enable_xformers_memory_efficient_attention",
        "--model_config_name_or_path",
        str(unet_config),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((output_dir / "training_config.json").read_text())
    config = record["config"]
    # aliases: same meaning
    assert config["num_grid_images"] == 4 and config["grid_inference_steps"] == 3 and config["logger"] == "tensorboard"
    # epochs of 64 images at 8 per step: every 8 steps, so one grid and one export before the final ones
    assert config["save_images_steps"] == 8 and config["save_model_steps"] == 8
    assert list((output_dir / "tb").rglob("events.out.tfevents.*")) and not (output_dir / "logs").exists()
    # the UNet is the one the config file describes, at the run's size and channels
    unet = json.loads((output_dir / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == [8, 16] and unet["sample_size"] == 16 and unet["in_channels"] == 1
    assert config["model_config_name_or_path"] == str(unet_config)
    # ignored flags are said to be ignored, with the reason
    assert "--dataloader_num_workers is accepted for compatibility" in result.stderr
    assert "--enable_xformers_memory_efficient_attention is accepted" in result.stderr
    # the token: handed to the client only, never printed or written
    assert FAKE_TOKEN not in result.stdout + result.stderr
    for path in output_dir.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_save_model_steps_exports_whole_pipelines_during_training(tmp_path):
    out = train(tiny(tmp_path, max_train_steps=6, save_model_steps=2))
    exported = sorted(path.name for path in out.glob("pipeline-*"))
    assert exported == ["pipeline-2", "pipeline-4"]  # the end of the run is the main export
    from diffusers import DDPMPipeline

    pipeline = DDPMPipeline.from_pretrained(out / "pipeline-4")
    assert pipeline.unet.config.sample_size == 16
    assert not list(out.glob(".pipeline-*"))  # staged: nothing half-written left


def test_a_tracker_that_is_not_installed_is_named_before_any_work(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: see test_wandb_runs_offline")
    with pytest.raises(PipelineError, match="logger: wandb is not installed \\(pip install wandb\\)"):
        train(tiny(tmp_path, logger="wandb"))
    assert not (tmp_path / "out").exists()


def test_wandb_runs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed; the TensorBoard path is tested instead")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    out = train(tiny(tmp_path, logger="wandb", save_images_steps=3))
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_log_level_warning_keeps_the_run_quiet(tmp_path, capsys):
    train(tiny(tmp_path, log_level="warning"))
    assert "Training a" not in capsys.readouterr().out


def test_overwrite_output_dir_starts_afresh_where_checkpoints_exist(tmp_path):
    first = train(tiny(tmp_path, checkpointing_steps=3))
    assert (first / "checkpoints" / "checkpoint-6").is_dir()
    with pytest.raises(PipelineError, match="already holds checkpoints"):
        train(tiny(tmp_path, checkpointing_steps=3))
    (first / "samples" / "step-999.png").write_bytes(b"a grid of the earlier run")
    train(tiny(tmp_path, checkpointing_steps=0, overwrite_output_dir=True))
    assert not (first / "checkpoints").exists()
    assert sorted(path.name for path in (first / "samples").iterdir()) == ["step-6.png"]  # the new run's alone


# ---------------------------------------------------------------------------------------------
# The Python API


def test_the_python_api_applies_the_pair_rules_of_the_command_line(tmp_path):
    assert TrainingConfig(num_epochs=10).max_train_steps is None  # the default budget steps aside
    assert TrainingConfig(train_data_dir="photos").dataset_name is None  # so does the default data
    with pytest.raises(PipelineError, match="max_train_steps: give the budget as exactly one"):
        TrainingConfig(num_epochs=10, max_train_steps=20)  # both given, neither a default
    assert parse_config(["--num_epochs", "10"]) == TrainingConfig(num_epochs=10)


# ---------------------------------------------------------------------------------------------
# The card, from anywhere


def test_the_card_renders_the_same_from_any_working_directory(tmp_path):
    from huggingface_hub import ModelCard

    from pipeline import hub

    out = train(tiny(tmp_path))
    here = hub.render_card(out).content
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        assert hub.render_card(out).content == here
    finally:
        os.chdir(cwd)
    card = ModelCard(here)
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    assert "https://arxiv.org/abs/2006.11239" in card.text and "https://arxiv.org/abs/2102.09672" in card.text
