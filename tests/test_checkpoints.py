"""Checkpoint bookkeeping and the export guard, on real folders and a real UNet, without training."""

import json

import pytest
import torch

from conftest import TINY
from pipeline.config import TrainingConfig
from pipeline.errors import PipelineError
from pipeline.model import build_noise_scheduler, build_unet
from pipeline.train import check_resume_compatible, export_pipeline, find_resume_checkpoint, list_checkpoints


def make_checkpoint(folder, step, config):
    checkpoint = folder / "checkpoints" / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "training_state.json").write_text(json.dumps({"global_step": step, "train_seconds": 1.0}))
    (checkpoint / "training_config.json").write_text(json.dumps({"config": config.to_dict(), "run": {}}))
    return checkpoint


def tiny(tmp_path, **changes):
    return TrainingConfig(**{**TINY, "output_dir": str(tmp_path), **changes})


def test_latest_skips_partial_checkpoints_with_a_warning(tmp_path):
    config = tiny(tmp_path, resume_from_checkpoint="latest")
    make_checkpoint(tmp_path, 3, config)
    make_checkpoint(tmp_path, 12, config)
    (tmp_path / "checkpoints" / ".checkpoint-15.tmp").mkdir()  # a kill during the write of step 15
    (tmp_path / "checkpoints" / "checkpoint-20").mkdir()  # no training_state.json: not complete
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert [path.name for path in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-3", "checkpoint-12"]
    with pytest.warns(UserWarning):
        assert find_resume_checkpoint(config).name == "checkpoint-12"  # numeric order, not text order


def test_latest_without_checkpoints_starts_a_new_run(tmp_path):
    with pytest.warns(UserWarning, match="no checkpoint"):
        assert find_resume_checkpoint(tiny(tmp_path, resume_from_checkpoint="latest")) is None
    with pytest.raises(PipelineError, match="resume_from_checkpoint: .* is not a complete checkpoint"):
        find_resume_checkpoint(tiny(tmp_path, resume_from_checkpoint=str(tmp_path / "nowhere")))


def test_resuming_with_a_different_architecture_is_refused(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 3, tiny(tmp_path))
    check_resume_compatible(tiny(tmp_path, learning_rate=0.01), checkpoint)  # optimisation settings may change
    with pytest.raises(
        PipelineError, match="block_out_channels: cannot resume .*\\[8, 16\\] in the checkpoint, \\[16, 32\\] now"
    ):
        check_resume_compatible(tiny(tmp_path, block_out_channels=[16, 32], norm_num_groups=4), checkpoint)


def test_export_refuses_non_finite_weights_and_keeps_the_previous_export(tmp_path):
    config = tiny(tmp_path)
    unet, scheduler = build_unet(config), build_noise_scheduler(config)
    export_pipeline(unet, scheduler, tmp_path)
    before = (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="refusing to export: parameter conv_in.weight"):
        export_pipeline(unet, scheduler, tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_resuming_an_older_checkpoint_never_overwrites_newer_ones_unasked(tmp_path):
    """Probe: --resume_from_checkpoint checkpoint-2 used to overwrite a newer checkpoint-4 without a word."""
    config = tiny(tmp_path, resume_from_checkpoint="checkpoint-2")
    make_checkpoint(tmp_path, 2, config)
    make_checkpoint(tmp_path, 4, config)
    with pytest.raises(PipelineError, match=r"holds checkpoints newer than checkpoint-2 \(checkpoint-4\)"):
        find_resume_checkpoint(config)
    asked = tiny(tmp_path, resume_from_checkpoint="checkpoint-2", overwrite_output_dir=True)
    assert find_resume_checkpoint(asked).name == "checkpoint-2"
    assert find_resume_checkpoint(tiny(tmp_path, resume_from_checkpoint="checkpoint-4")).name == "checkpoint-4"
