"""Nothing lost, nothing silently wrong: a run owns its folder, a resume says what it changes, every file and size
is checked before work, and every refusal is one `error:` line. Each test is one probe of a hostile user's."""

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file

from conftest import FINISHED_RUN, REPO, copy_checkpoint, resume
from pipeline import evaluate as ev
from pipeline import inception, metrics
from pipeline.arguments import parse_config
from pipeline.commands import hub_main, sample_main
from pipeline.config import TrainingConfig
from pipeline.errors import PipelineError
from pipeline.train import train


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each run makes its own Accelerator


def rewrite(checkpoint, name, content) -> None:
    """Replace one checkpoint file and record its new size, so that only the content checks can tell."""
    path = checkpoint / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    if name == "training_state.json":  # the manifest itself: no size of its own
        return
    state = json.loads((checkpoint / "training_state.json").read_text())
    state["files"][name] = path.stat().st_size
    (checkpoint / "training_state.json").write_text(json.dumps(state))


def edit_json(checkpoint, name, change) -> None:
    value = json.loads((checkpoint / name).read_text())
    change(value)
    rewrite(checkpoint, name, json.dumps(value))


def deeply_nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# ---------------------------------------------------------------------------------------------
# A run owns its folder (items 1, 2, 13)


def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_was(tmp_path):
    folder = tmp_path / "mine"
    for name in ("README.md", "model_index.json", "unet/notes.txt", "samples/step-4.png", "training_config.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"my own {name}\n")
    before = {path: path.read_text() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(PipelineError, match="output_dir: .* holds files that are not a run's of this pipeline"):
        train(TrainingConfig(**{**FINISHED_RUN, "output_dir": str(folder)}))
    assert {path: path.read_text() for path in folder.rglob("*") if path.is_file()} == before


def test_a_finished_run_is_replaced_only_when_asked_and_then_whole(finished_run, tmp_path):
    """Probe: training over a finished run used to keep its samples/ and eval/metrics.json, which the new card then
    showed as its own (and a kill mid-run left the old weights beside the new record)."""
    folder = tmp_path / "ours"
    shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "samples" / "step-999.png").write_bytes((folder / "samples" / "step-6.png").read_bytes())
    (folder / "eval").mkdir()
    (folder / "eval" / "metrics.json").write_text('{"results": []}')
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    values = {**FINISHED_RUN, "output_dir": str(folder), "max_train_steps": 1, "checkpointing_steps": 0}
    with pytest.raises(PipelineError, match="holds an earlier run .*--overwrite_output_dir to replace it"):
        train(TrainingConfig(**values))
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    AcceleratorState._reset_state(reset_partial_state=True)
    train(TrainingConfig(**{**values, "overwrite_output_dir": True}))
    assert sorted(path.name for path in (folder / "samples").iterdir()) == ["step-1.png"]
    assert not (folder / "eval").exists()
    assert json.loads((folder / "training_config.json").read_text())["run"]["global_step"] == 1


@pytest.mark.parametrize(
    "foreign",
    ["my_notes.txt", ".env", "checkpoints/my_best_model.ckpt", "unet/notes.txt", "samples/favourite.png", "logs2/x"],
)
def test_a_file_the_pipeline_never_writes_stops_every_run_even_with_overwrite(finished_run, tmp_path, foreign):
    """Probe: --overwrite_output_dir used to delete a user's checkpoints/my_best_model.ckpt, unet/notes.txt and
    README.md, and a folder of only dot-files counted as empty."""
    folder = tmp_path / "ours"
    shutil.copytree(finished_run, folder)
    (folder / foreign).parent.mkdir(parents=True, exist_ok=True)
    (folder / foreign).write_text("mine\n")
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    for asked in ({"overwrite_output_dir": True}, {"resume_from_checkpoint": "latest"}):
        values = {**FINISHED_RUN, "output_dir": str(folder), "max_train_steps": 8, **asked}
        with pytest.raises(PipelineError, match=f"not a run's of this pipeline \\({foreign.split('/')[0]}"):
            train(TrainingConfig(**values))
        AcceleratorState._reset_state(reset_partial_state=True)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_only_dot_files_or_the_repository_itself_are_not_an_empty_folder(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("# mine\n")
    for folder in (tmp_path / "home", REPO):
        with pytest.raises(PipelineError, match="not a run's of this pipeline"):
            train(TrainingConfig(**{**FINISHED_RUN, "output_dir": str(folder), "overwrite_output_dir": True}))
        AcceleratorState._reset_state(reset_partial_state=True)
    assert (tmp_path / "home" / ".bashrc").read_text() == "# mine\n"


HOLD_LOCK = """
import fcntl, json, os, socket, sys, time
descriptor = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o644)
fcntl.flock(descriptor, fcntl.LOCK_EX)
holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-12-01 10:00"}
os.write(descriptor, json.dumps(holder).encode())
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("left_behind", ['{"pid": "1", "host": "x"}', "42", "not json"])
def test_a_folder_in_use_is_refused_and_a_lock_its_holder_left_is_taken_over(tmp_path, left_behind):
    """Probes: a .lock holding 42 (a traceback), a pid that is a string (taken over from a live process), and two
    processes that both found a stale lock (both held it): the kernel's lock decides, the file only names."""
    folder = tmp_path / "busy"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(folder / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError, match=f"is in use by process {holder.pid} on .* since 2026-12-01 10:00"):
            train(TrainingConfig(**{**FINISHED_RUN, "output_dir": str(folder)}))
        assert json.loads((folder / ".lock").read_text())["pid"] == holder.pid  # the holder's lock is untouched
    finally:
        holder.kill()
        holder.wait()
    (folder / ".lock").write_text(left_behind)  # its process gone, whatever the file says
    with pytest.warns(UserWarning, match="which no longer holds it; taking it over"):
        train(
            TrainingConfig(
                **{**FINISHED_RUN, "output_dir": str(folder), "max_train_steps": 2, "checkpointing_steps": 0}
            )
        )
    assert (folder / "model_index.json").is_file() and not (folder / ".lock").exists()


def test_two_runs_started_together_into_one_folder_one_is_refused(tmp_path):
    values = {**FINISHED_RUN, "max_train_steps": 100, "checkpointing_steps": 50, "logging_steps": 10}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(values))
    command = [
        sys.executable,
        "train_ddpm.py",
        "--config",
        str(tmp_path / "tiny.yaml"),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    runs = [
        subprocess.Popen([*command, "--seed", str(seed)], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "error: output_dir: " in refused and "is in use by process" in refused
    seed = json.loads((tmp_path / "out" / "training_config.json").read_text())["config"]["seed"]
    winner = next(index for index, (code, _) in enumerate(results) if code == 0)
    assert seed == (1, 2)[winner]  # the folder holds the run that finished, whole


def test_checkpoints_as_a_link_with_overwrite_is_refused_and_nothing_outside_is_deleted(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep\n")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PipelineError, match=r"not a run's of this pipeline \(checkpoints \(a symbolic link\)\)"):
        train(TrainingConfig(**{**FINISHED_RUN, "output_dir": str(folder), "overwrite_output_dir": True}))
    assert (elsewhere / "precious.txt").read_text() == "keep\n"


# ---------------------------------------------------------------------------------------------
# A resume says what it changes (items 3, 4)


def test_a_resume_with_dropout_reaches_the_uninterrupted_runs_weights(tmp_path):
    """No generator state is saved: dropout is reseeded from (seed, micro-batch, process) at every step."""
    values = {
        **FINISHED_RUN,
        "dropout": 0.3,
        "max_train_steps": 4,
        "checkpointing_steps": 2,
        "output_dir": str(tmp_path / "a"),
    }
    train(TrainingConfig(**values))
    AcceleratorState._reset_state(reset_partial_state=True)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-2", tmp_path / "b" / "checkpoints" / "checkpoint-2")
    train(TrainingConfig(**{**values, "output_dir": str(tmp_path / "b"), "resume_from_checkpoint": "latest"}))
    weights = [load_file(tmp_path / run / "unet" / "diffusion_pytorch_model.safetensors") for run in ("a", "b")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    values["dropout"], values["output_dir"] = 0.0, str(tmp_path / "c")  # and the dropout took part
    AcceleratorState._reset_state(reset_partial_state=True)
    train(TrainingConfig(**values))
    without = load_file(tmp_path / "c" / "unet" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(weights[0][name], without[name]) for name in without)


def test_a_resume_applies_and_reports_a_new_learning_rate_and_schedule(finished_run, tmp_path):
    output_dir, _ = copy_checkpoint(finished_run, tmp_path)
    resume(output_dir, learning_rate=0.05, lr_scheduler="constant")
    record = json.loads((output_dir / "training_config.json").read_text())
    changes = record["run"]["resumed_changes"]
    assert any(change.startswith("learning_rate: 0.001 in the checkpoint, 0.05 now") for change in changes), changes
    assert any(
        change.startswith("lr_scheduler: 'cosine_with_min_lr' in the checkpoint, 'constant' now") for change in changes
    )
    groups = json.loads((output_dir / "checkpoints" / "checkpoint-6" / "optimizer.json").read_text())["param_groups"]
    assert [group["lr"] for group in groups] == [0.05]  # what was really used, as the record says
    assert record["config"]["learning_rate"] == 0.05


def test_a_resume_reports_changed_images_by_count_and_fingerprint(tmp_path):
    """Probe: 32 images -> 64 in --train_data_dir between a run and its resume used to go unreported."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)

    def add(count):
        for _ in range(count):
            pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{len(list(images.iterdir())):03d}.png")

    add(32)
    values = {**FINISHED_RUN, "dataset_name": None, "train_data_dir": str(images), "max_train_samples": None,
              "output_dir": str(tmp_path / "out"), "max_train_steps": 3}  # fmt: skip
    train(TrainingConfig(**values))
    AcceleratorState._reset_state(reset_partial_state=True)
    before = json.loads((tmp_path / "out" / "training_config.json").read_text())["run"]["data"]
    assert before["images_kept"] == 32 and len(before["fingerprint"]) == 16
    add(32)
    train(TrainingConfig(**{**values, "max_train_steps": 6, "resume_from_checkpoint": "latest"}))
    changes = json.loads((tmp_path / "out" / "training_config.json").read_text())["run"]["resumed_changes"]
    data_changes = [change for change in changes if change.startswith("data: ")]
    assert data_changes and data_changes[0].startswith(f"data: 32 images (fingerprint {before['fingerprint']}) in the")
    assert " 64 (" in data_changes[0]


def test_a_resume_that_changes_the_noise_schedule_is_refused_with_both_values(finished_run, tmp_path):
    output_dir, _ = copy_checkpoint(finished_run, tmp_path)
    refused = "cannot resume .*rescale_betas_zero_snr \\(False in the checkpoint, True now\\)"
    with pytest.raises(PipelineError, match=refused):
        resume(output_dir, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    with pytest.raises(PipelineError, match="prediction_type: cannot resume"):
        resume(output_dir, prediction_type="v_prediction")


# ---------------------------------------------------------------------------------------------
# Every checkpoint file checked whole before use (items 6, 10, 11)


def _optimizer_tensor_of_another_shape(checkpoint):
    tensors = load_file(checkpoint / "optimizer.safetensors")
    tensors["0.exp_avg"] = torch.zeros(3)
    save_file(tensors, checkpoint / "optimizer.safetensors")
    rewrite(checkpoint, "optimizer.safetensors", (checkpoint / "optimizer.safetensors").read_bytes())


def _nan_weights(checkpoint):
    path = checkpoint / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = {name: torch.full_like(tensor, float("nan")) for name, tensor in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def _group(key, value):
    return lambda c: edit_json(c, "optimizer.json", lambda v: v["param_groups"][0].__setitem__(key, value))


def _state(key, value):
    return lambda c: edit_json(c, "training_state.json", lambda v: v.__setitem__(key, value))


NESTED = deeply_nested(200_000)
CHECKPOINT_PROBES = {
    "NaN weights": (_nan_weights, "diffusion_pytorch_model.safetensors: tensor .* holds NaN or infinite values"),
    "optimizer tensor shape": (_optimizer_tensor_of_another_shape, "optimizer.safetensors: does not fit the model"),
    "lr of the wrong type": (_group("lr", "fast"), "optimizer.json: does not fit the optimizer .*lr: expected a"),
    "betas of the wrong type": (_group("betas", ["a", 0.9]), "optimizer.json: does not fit the optimizer .*betas"),
    "nested optimizer.json": (lambda c: rewrite(c, "optimizer.json", NESTED), "optimizer.json: not valid JSON"),
    "nested training_state.json": (
        lambda c: (c / "training_state.json").write_text(NESTED),
        "training_state.json: not valid JSON \\(nested too deeply\\)",
    ),
    "ema a list": (_state("ema", [1]), "training_state.json: ema must be an object"),
    "step of 10**20": (_state("global_step", 10**20), "training_state.json: global_step must be at most"),
}


@pytest.mark.parametrize("probe", list(CHECKPOINT_PROBES))
def test_a_checkpoint_file_that_would_crash_later_is_refused_before_the_resume(finished_run, tmp_path, probe):
    output_dir, checkpoint = copy_checkpoint(finished_run, tmp_path)
    change, message = CHECKPOINT_PROBES[probe]
    change(checkpoint)
    with pytest.raises(PipelineError, match=message):
        resume(output_dir)
    assert not (output_dir / "model_index.json").exists() and not (output_dir / "training_config.json").exists()


def test_a_deeply_nested_training_config_in_a_checkpoint_is_one_error(finished_run, tmp_path):
    output_dir, checkpoint = copy_checkpoint(finished_run, tmp_path)
    rewrite(checkpoint, "training_config.json", deeply_nested(200_000))
    with pytest.raises(PipelineError, match="training_config.json: not valid JSON \\(nested too deeply\\)"):
        resume(output_dir)


# ---------------------------------------------------------------------------------------------
# Model folders, sizes and presets checked before work (items 5, 7, 8, 9, 12, 14)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"beta_start": -0.01}, "beta_start: must be positive"),
        ({"num_train_timesteps": 10**9}, "num_train_timesteps: must lie in \\[1, 10000\\]"),
        ({"beta_schedule": "evil"}, "beta_schedule: unknown value 'evil'"),
    ],
)
def test_a_model_folder_with_an_absurd_scheduler_config_is_refused_before_loading(
    finished_run, tmp_path, capsys, change, message
):
    model = tmp_path / "model"
    shutil.copytree(finished_run, model, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    path = model / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    started = time.perf_counter()
    with pytest.raises(SystemExit) as stopped:
        sample_main(["--model", str(model), "--output_dir", str(tmp_path / "s"), "--num_images", "2"])
    assert stopped.value.code == 2 and time.perf_counter() - started < 60
    assert f"error: {path}: " in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num_grid_images", "1000000000"], "num_grid_images: must lie in \\[1, 1024\\]"),
        (["--resolution", "100000"], "resolution: must lie in \\[1, 2048\\]"),
        (["--train_batch_size", "100000"], "train_batch_size: must lie in \\[1, 4096\\]"),
        (["--ddpm_num_steps", "1000000000"], "ddpm_num_steps: must lie in \\[1, 10000\\]"),
        (["--config", "configs"], "config: configs is a folder, not a preset file"),
        (["--logging_dir", "."], "logging_dir: must be a folder inside --output_dir, got '.'"),
        # was a traceback from Adam's fp32 step ("value cannot be converted to type float without overflow")
        (["--learning_rate", "1e308"], "learning_rate: must lie in \\(0, 1e\\+30\\]"),
    ],
)
def test_sizes_are_bounded_before_any_work(flags, message):
    with pytest.raises(PipelineError, match=message):
        parse_config(flags)


def test_a_distillation_field_never_refuses_a_plain_run():
    """Probe: --ddpm_num_steps 40 was refused for a plain run by distill_grid_steps (50), which it never uses."""
    assert parse_config(["--ddpm_num_steps", "40", "--grid_inference_steps", "20"]).ddpm_num_steps == 40
    with pytest.raises(PipelineError, match="distill_grid_steps: 50 is more than ddpm_num_steps=40"):
        parse_config(["--ddpm_num_steps", "40", "--distill_teacher", "t", "--grid_sampler", "lcm",
                      "--grid_inference_steps", "4"])  # fmt: skip


def test_a_unet_bounded_per_field_is_bounded_in_total_before_anything_is_allocated(tmp_path):
    """Probe: every field within its bounds, 503 billion parameters in all, used to pass."""
    channels = ["--block_out_channels", "8192", "8192", "8192", "8192", "8192", "8192", "8192", "8192"]
    blocks = ["--down_block_types", *["DownBlock2D"] * 8, "--up_block_types", *["UpBlock2D"] * 8]
    config = parse_config([*channels, *blocks, "--layers_per_block", "16", "--resolution", "256",
                           "--output_dir", str(tmp_path / "huge")])  # fmt: skip
    with pytest.raises(PipelineError, match="block_out_channels: this UNet has [0-9,]+ parameters, more than the"):
        train(config)
    assert not (tmp_path / "huge").exists()


def test_sampling_a_billion_images_is_refused_at_once(finished_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        sample_main(["--model", str(finished_run), "--output_dir", str(tmp_path / "s"), "--num_images", "1000000000"])
    assert "error: argument --num_images: must be at least 1 and at most 1,000,000" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"learning_rate: 0.001\n" + b"# padding\n" * 300_000, "is 3,000,021 bytes; a preset holds at most 1,048,576"),
        (b"a: " + b"[" * 50_000 + b"]" * 50_000, "not valid YAML"),
        (b"learning_rate: 0.001 # caf\xe9\n", "is not UTF-8 text"),
        (b"seed: " + b"9" * 5000 + b"\n", "not valid YAML"),
        (b"seed: 1\nlearning_rate: 0.01\nseed: 2\n", "not valid YAML: the key 'seed' is given twice"),
    ],
    ids=["huge", "nested", "not utf-8", "5000 digits", "a key twice"],
)
def test_a_hostile_preset_is_one_error_and_fast(tmp_path, content, message):
    path = tmp_path / "preset.yaml"
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(PipelineError, match=f"config: .*{message}"):
        parse_config(["--config", str(path)])
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize("defect", ["nested", "not JSON", "no num_images"])
def test_a_broken_samples_folder_is_one_error(tmp_path, defect):
    folder = tmp_path / "samples"
    folder.mkdir()
    text = {
        "nested": deeply_nested(200_000),
        "not JSON": "{",
        "no num_images": '{"model": "m", "sampler": "ddpm", "steps": 2}',
    }
    (folder / "samples.json").write_text(text[defect])
    with pytest.raises(ev.PipelineError, match="samples.json: (not valid JSON|has no 'num_images')"):
        ev.read_samples(folder)


def test_a_statistics_file_whose_header_claims_a_billion_rows_is_refused_without_allocating(tmp_path):
    path = tmp_path / "reference.npz"
    np.savez(path, mu=np.zeros(4), sigma=np.eye(4), meta=json.dumps({}))
    member = io.BytesIO()  # a valid header claiming 10^9 x 2048 float32 (8 TB), followed by 48 bytes
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 2048)})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("features.npy", member.getvalue() + bytes(48))
    with pytest.raises(ev.PipelineError, match="is not a statistics file .*claims"):
        metrics.load_reference(path)


def test_a_statistics_file_that_inflates_far_beyond_its_size_is_refused_before_inflating(tmp_path):
    """Probe: a 2.3 MB .npz of deflated zeros inflated to 2.3 GiB, its declared sizes being honest."""
    path = tmp_path / "reference.npz"
    features = io.BytesIO()
    np.save(features, np.zeros((2000, 2048), dtype=np.float32))  # 16 MB of zeros: a few KB deflated
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("features.npy", features.getvalue())
    assert path.stat().st_size < 100_000
    with pytest.raises(ev.PipelineError, match="is not a statistics file .*inflates from [0-9,]+ to 16,384,128 bytes"):
        metrics.load_reference(path)


# ---------------------------------------------------------------------------------------------
# The smaller ones (item 15)


def test_the_push_listing_names_what_is_not_a_regular_file_and_sends_no_hard_link_or_odd_name(
    finished_run, tmp_path, capsys
):
    folder = tmp_path / "listed"
    shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    os.mkfifo(folder / "samples" / "pipe.png")
    (tmp_path / "secret.txt").write_text("outside\n")
    (folder / "samples").joinpath("hard.png").hardlink_to(tmp_path / "secret.txt")
    (folder / "samples" / "two\nlines.png").write_bytes(b"x")
    hub_main(["push", "--output_dir", str(folder), "--dry_run"])
    out, err = capsys.readouterr()
    assert "samples/pipe.png (not a regular file)" in err and "samples/hard.png (hard link)" in err
    assert "samples/two\\nlines.png (control characters in the name)" in err
    assert not [
        line for line in out.splitlines() if "pipe" in line or "hard" in line or "lines" in line or "two" in line
    ]


def test_missing_inception_weights_offline_are_named_without_trying_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        started = time.perf_counter()
        with pytest.raises(ev.PipelineError, match="no download was tried.*--inception_weights"):
            inception.find_weights(
                "legacy_pytorch", url="http://10.255.255.1/never.pth"
            )  # would hang for 30 s if tried
        assert time.perf_counter() - started < 5
    finally:
        torch.hub.set_dir(previous)
