"""Checkpoints: the bookkeeping and the export guard on real folders and a real UNet, then every tampered, truncated
or absurd checkpoint file refused before a resume (`error: <file>: <what is wrong>`), nothing exported."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import FINISHED_RUN, REPO, TINY, copy_checkpoint, deeply_nested, resume
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


# ---------------------------------------------------------------------------------------------
# Every checkpoint file checked whole before use


def rewrite(checkpoint, name, content) -> None:
    """Replace one checkpoint file and record its new size, so that only the content checks can tell."""
    path = checkpoint / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    if name == "training_state.json":  # the manifest itself: no size of its own
        return
    state = json.loads((checkpoint / "training_state.json").read_text())
    state["files"][name] = path.stat().st_size
    (checkpoint / "training_state.json").write_text(json.dumps(state))


def edit_json(name, change):
    """A probe that changes one JSON file of the checkpoint in place (its recorded size follows)."""

    def probe(checkpoint):
        value = json.loads((checkpoint / name).read_text())
        change(value)
        rewrite(checkpoint, name, json.dumps(value))

    return probe


def set_state(**changes):
    return edit_json("training_state.json", lambda state: state.update(changes))


def set_group(key, value):
    return edit_json("optimizer.json", lambda optimizer: optimizer["param_groups"][0].__setitem__(key, value))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble(path):  # same size, so only the parser can tell
    path.write_bytes(bytes(reversed(path.read_bytes())))


def optimizer_tensor_of_another_shape(checkpoint):
    tensors = load_file(checkpoint / "optimizer.safetensors")
    tensors["0.exp_avg"] = torch.zeros(3)
    save_file(tensors, checkpoint / "optimizer.safetensors")
    rewrite(checkpoint, "optimizer.safetensors", (checkpoint / "optimizer.safetensors").read_bytes())


def nan_weights(checkpoint):
    path = checkpoint / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = {name: torch.full_like(tensor, float("nan")) for name, tensor in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
NEGATIVE = "training_state.json: global_step must be a non-negative integer, got"
NESTED = deeply_nested(200_000)
PROBES = {
    "negative step": (set_state(global_step=-5), f"{NEGATIVE} -5"),
    "string step": (set_state(global_step="3"), f"{NEGATIVE} '3'"),
    "step of 10**20": (set_state(global_step=10**20), "training_state.json: global_step must be at most"),
    "step of another folder": (set_state(global_step=2), "global_step 2 does not match the folder name checkpoint-3"),
    "ema a list": (set_state(ema=[1]), "training_state.json: ema must be an object"),
    "file outside": (set_state(files={"../../../etc/passwd": 1}), "names a file outside the checkpoint"),
    "not JSON": (lambda c: (c / "training_state.json").write_text("{"), "training_state.json: not valid JSON"),
    "nested training_state.json": (
        lambda c: (c / "training_state.json").write_text(NESTED),
        "training_state.json: not valid JSON \\(nested too deeply\\)",
    ),
    "nested training_config.json": (
        lambda c: rewrite(c, "training_config.json", NESTED),
        "training_config.json: not valid JSON \\(nested too deeply\\)",
    ),
    "truncated weights": (lambda c: truncate(c / WEIGHTS), f"{WEIGHTS}: .* bytes, the checkpoint recorded"),
    "scrambled weights": (lambda c: scramble(c / WEIGHTS), f"{WEIGHTS}: not a readable safetensors file"),
    "scrambled EMA": (
        lambda c: scramble(c / "unet_ema" / "diffusion_pytorch_model.safetensors"),
        "unet_ema/diffusion_pytorch_model.safetensors: not a readable safetensors file",
    ),
    "NaN weights": (nan_weights, "diffusion_pytorch_model.safetensors: tensor .* holds NaN or infinite values"),
    "missing optimizer": (lambda c: (c / "optimizer.safetensors").unlink(), "optimizer.safetensors: missing"),
    "optimizer tensor shape": (optimizer_tensor_of_another_shape, "optimizer.safetensors: does not fit the model"),
    "lr of the wrong type": (set_group("lr", "fast"), "optimizer.json: does not fit the optimizer .*lr: expected a"),
    "betas of the wrong type": (set_group("betas", ["a", 0.9]), "optimizer.json: does not fit the optimizer .*betas"),
    "nested optimizer.json": (lambda c: rewrite(c, "optimizer.json", NESTED), "optimizer.json: not valid JSON"),
}  # fmt: skip


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("probe", list(PROBES))
def test_a_tampered_checkpoint_is_refused_before_the_resume_naming_the_file(finished_run, tmp_path, probe):
    output_dir, checkpoint = copy_checkpoint(finished_run, tmp_path)
    change, message = PROBES[probe]
    change(checkpoint)
    with pytest.raises(PipelineError, match=message):
        resume(output_dir)
    assert not (output_dir / "model_index.json").exists() and not (output_dir / "training_config.json").exists()


def test_a_tampered_checkpoint_from_the_command_line_is_one_error_line(finished_run, tmp_path):
    output_dir, checkpoint = copy_checkpoint(finished_run, tmp_path)
    set_state(global_step=-5)(checkpoint)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(FINISHED_RUN))
    command = ["train_ddpm.py", "--config", str(tmp_path / "tiny.yaml"), "--output_dir", str(output_dir),
               "--resume_from_checkpoint", "checkpoint-3"]  # fmt: skip
    result = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "global_step must be a non-negative integer" in result.stderr
