"""End to end: real `accelerate launch train_ddpm.py` runs of the tiny config, and what they leave."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, TWO_PROCESSES, launch, train_arguments
from pipeline.config import TrainingConfig


PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


def unet_weights(folder: Path) -> dict:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One complete tiny run; several tests read what it leaves."""
    import yaml

    folder = tmp_path_factory.mktemp("tiny_run")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = launch(*train_arguments(folder / "tiny.yaml", folder / "out"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return folder / "out", result


def test_export_is_a_stock_pipeline_in_safetensors_only(tiny_run):
    out, _ = tiny_run
    assert (out / "model_index.json").is_file()
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["num_train_timesteps"] == 50
    export_files = [
        path for name in ("model_index.json", "unet", "scheduler") for path in [out / name, *(out / name).rglob("*")]
    ]
    assert not [path for path in export_files if path.suffix in PICKLE_SUFFIXES]
    assert not (out / ".export.tmp").exists()


def test_stock_diffusers_loads_and_samples_without_this_repository(tiny_run):
    out, _ = tiny_run
    script = (
        "import sys, torch; from diffusers import DDPMPipeline;"
        "pipe = DDPMPipeline.from_pretrained(sys.argv[1]);"
        "images = pipe(batch_size=3, num_inference_steps=2, generator=torch.manual_seed(0), output_type='np').images;"
        "print(images.shape, images.min() >= 0, images.max() <= 1)"
    )
    # -I: isolated mode, neither the current folder nor PYTHONPATH is on sys.path
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(out)], cwd=out, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 16, 16, 1) True True"


def test_run_leaves_config_grids_checkpoints_and_logs(tiny_run):
    out, result = tiny_run
    saved = json.loads((out / "training_config.json").read_text())
    assert TrainingConfig(**saved["config"]).block_out_channels == [8, 16]
    run = saved["run"]
    assert run["finished"] is True and run["global_step"] == 6 and run["num_train_images"] == 64
    assert run["versions"]["diffusers"] and run["hardware"]
    # `accelerate launch` without --cpu exports OMP_NUM_THREADS=1; the run still uses every core
    assert run["cpu_threads_per_process"] == len(os.sched_getaffinity(0))
    assert sorted(path.name for path in (out / "samples").iterdir()) == ["step-3.png", "step-6.png"]
    from PIL import Image

    grid = Image.open(out / "samples" / "step-6.png")
    assert grid.mode == "L" and grid.size == (2 + 2 * 18, 2 + 2 * 18)  # 2x2 images of 16 px, 2 px gaps
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    checkpoint = out / "checkpoints" / "checkpoint-6"
    state = json.loads((checkpoint / "training_state.json").read_text())
    assert state["global_step"] == 6 and state["train_seconds"] > 0
    assert (checkpoint / "training_config.json").is_file() and (
        checkpoint / "unet" / "diffusion_pytorch_model.safetensors"
    ).is_file()
    assert not [
        path for path in checkpoint.rglob("*") if path.suffix in PICKLE_SUFFIXES
    ]  # nothing a resume would unpickle
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    assert "Exported the DDPMPipeline" in result.stdout


def test_checkpoints_load_with_stock_diffusers_and_the_export_holds_the_ema_weights(tiny_run):
    """Each checkpoint's unet/ and unet_ema/ are diffusers folders; the final EMA is what was exported."""
    out, _ = tiny_run
    from diffusers import UNet2DModel

    checkpoint = out / "checkpoints" / "checkpoint-6"
    trained = UNet2DModel.from_pretrained(checkpoint / "unet").state_dict()
    ema = UNet2DModel.from_pretrained(checkpoint / "unet_ema").state_dict()
    exported = unet_weights(out)
    for name in exported:
        torch.testing.assert_close(exported[name], ema[name], rtol=0, atol=0)
    assert any(not torch.equal(trained[name], exported[name]) for name in exported)  # EMA differs from the raw weights


def test_resume_from_a_checkpoint_reaches_the_same_final_weights(tiny_run, tmp_path):
    """Stop after checkpoint-3 (here: keep only it), resume, and end where the uninterrupted run ended."""
    out, _ = tiny_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    config_file = tmp_path / "tiny.json"
    config_file.write_text((out / "training_config.json").read_text())
    result = launch(*train_arguments(config_file, resumed, "--resume_from_checkpoint", "latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resumed from" in result.stdout and "at step 3" in result.stdout
    assert json.loads((resumed / "training_config.json").read_text())["run"]["global_step"] == 6
    expected, actual = unet_weights(out), unet_weights(resumed)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)


def test_existing_checkpoints_are_never_overwritten_by_a_new_run(tiny_run, tmp_path):
    out, _ = tiny_run
    before = sorted(path.name for path in (out / "checkpoints").iterdir())
    result = launch(*train_arguments(out / "training_config.json", out))
    assert result.returncode != 0  # the script exits 2; `accelerate launch` reports any failure as 1
    assert "error: resume_from_checkpoint:" in result.stderr and "--resume_from_checkpoint latest" in result.stderr
    assert 'train.py", line' not in result.stderr  # a message, not a traceback from our code
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == before


def test_two_processes_on_cpu_train_as_one_group(tmp_path):
    """`--multi_gpu` starts the processes with torchrun; on a CPU machine they join one gloo group."""
    import yaml

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "save_images_steps": 0, "checkpointing_steps": 6}))
    result = launch(*train_arguments(tmp_path / "tiny.yaml", tmp_path / "out", launcher=TWO_PROCESSES))
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((tmp_path / "out" / "training_config.json").read_text())["run"]
    assert run["num_processes"] == 2 and run["images_per_step"] == 16  # the batch is per process
    checkpoint = tmp_path / "out" / "checkpoints" / "checkpoint-6"
    assert (checkpoint / "training_state.json").is_file() and not list(checkpoint.glob("rng_state*"))  # reseeded
    assert result.stdout.count("Exported the DDPMPipeline") == 1  # only the main process exports
    assert all(torch.isfinite(tensor).all() for tensor in unet_weights(tmp_path / "out").values())
