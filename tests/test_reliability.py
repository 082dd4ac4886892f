"""Interruption, divergence and multi-process runs, against real `accelerate launch` processes.

Signals are real (SIGTERM, SIGINT, SIGKILL) and sent at chosen moments: after a given checkpoint
appears, or while a checkpoint is being written. Resumed runs are compared weight for weight with
an uninterrupted run of the same configuration.
"""

import dataclasses
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import LAUNCH, REPO, TINY, TWO_PROCESSES, launch, logged_scalars, train, train_arguments
from pipeline.config import TrainingConfig
from pipeline.record import RunRecord
from pipeline.train import TrainingStopped, run_problems


# Long enough that a signal sent after the first checkpoint lands well before the end.
LONG = {
    **TINY,
    "timestep_density": "lognormal",  # so exact resume covers its draws and the learned weighting's state
    "loss_weighting": "learned",
    "max_train_steps": 48,
    "checkpointing_steps": 16,
    "checkpoints_total_limit": 3,
    "save_images_steps": 0,
    "logging_steps": 4,
}


def run_to_end(config_file: Path, output_dir: Path, *extra) -> subprocess.CompletedProcess:
    result = launch(*train_arguments(config_file, output_dir, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def unet_weights(folder: Path) -> dict:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def assert_same_weights(actual: dict, expected: dict, atol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=atol, msg=name)


def training_process(launcher: subprocess.Popen, timeout: float = 60) -> int:
    """The PID of the training script that `accelerate launch` started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{launcher.pid}/task").glob("*"):
            for child in (task / "children").read_text().split():
                try:
                    arguments = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                    if len(arguments) > 1 and arguments[1] == b"train_ddpm.py":  # not a fork of the launcher itself
                        return int(child)
                except FileNotFoundError:  # a short-lived helper the launcher ran
                    continue
        time.sleep(0.01)
    raise AssertionError("accelerate launch started no training process")


def start_run(config_file: Path, output_dir: Path, own_group: bool = False) -> tuple[subprocess.Popen, int]:
    """`accelerate launch` in the background (in a process group of its own if asked); it and the trainer's PID."""
    launcher = subprocess.Popen(
        [*LAUNCH, *train_arguments(config_file, output_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=own_group,
    )
    return launcher, training_process(launcher)


def wait_for(predicate, launcher: subprocess.Popen, timeout: float = 300, interval: float = 0.002) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert launcher.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


def wait_gone(pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (FileNotFoundError, IndexError):
        return "zombie"


@pytest.fixture(scope="module")
def long_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    (folder / "long.yaml").write_text(yaml.safe_dump(LONG))
    return folder / "long.yaml"


@pytest.fixture(scope="module")
def uninterrupted(long_config, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "out"
    run_to_end(long_config, output_dir)
    return output_dir


def test_sigterm_checkpoints_and_exits_and_the_resumed_run_equals_an_uninterrupted_one(
    long_config, uninterrupted, tmp_path
):
    output_dir = tmp_path / "out"
    launcher, trainer = start_run(long_config, output_dir)
    wait_for(lambda: (output_dir / "checkpoints" / "checkpoint-16").is_dir(), launcher)
    os.kill(trainer, signal.SIGTERM)  # a preemption notice, mid-way between checkpoints
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode != 0
    assert "stopped by SIGTERM after step" in stderr and "--resume_from_checkpoint latest" in stderr
    stopped_at = int(stderr.split("stopped by SIGTERM after step ")[1].split()[0])
    assert 16 <= stopped_at < 48
    assert (output_dir / "checkpoints" / f"checkpoint-{stopped_at}" / "training_state.json").is_file()
    assert json.loads((output_dir / "training_config.json").read_text())["run"]["finished"] is False
    assert not (output_dir / "model_index.json").exists()

    resumed = run_to_end(output_dir / "training_config.json", output_dir, "--resume_from_checkpoint", "latest")
    assert f"at step {stopped_at}" in resumed.stdout
    assert_same_weights(unet_weights(output_dir), unet_weights(uninterrupted))
    run = json.loads((output_dir / "training_config.json").read_text())["run"]
    assert run["finished"] is True and run["global_step"] == 48


def test_ctrl_c_to_the_process_group_checkpoints_and_exits(long_config, tmp_path):
    """SIGINT to the whole group, as a terminal's Ctrl-C sends it: the launcher gives up, the trainer checkpoints."""
    output_dir = tmp_path / "out"
    launcher, trainer = start_run(long_config, output_dir, own_group=True)
    wait_for(lambda: (output_dir / "checkpoints" / "checkpoint-16").is_dir(), launcher)
    os.killpg(launcher.pid, signal.SIGINT)
    _, stderr = launcher.communicate(timeout=300)  # the pipes close once the trainer has exited too
    wait_gone(trainer)
    assert "stopped by SIGINT after step" in stderr
    stopped_at = int(stderr.split("stopped by SIGINT after step ")[1].split()[0])
    assert (output_dir / "checkpoints" / f"checkpoint-{stopped_at}" / "training_state.json").is_file()


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_usable(long_config, uninterrupted, tmp_path):
    output_dir = tmp_path / "out"
    checkpoints = output_dir / "checkpoints"
    launcher, trainer = start_run(long_config, output_dir, own_group=True)
    staging = lambda: list(checkpoints.glob(".checkpoint-32.*.tmp"))  # noqa: E731 (staging names carry the pid)
    wait_for(lambda: bool(staging()), launcher, interval=0)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.communicate(timeout=60)
    wait_gone(trainer)
    assert staging() and not (checkpoints / "checkpoint-32").exists()
    assert (checkpoints / "checkpoint-16" / "training_state.json").is_file()

    resumed = run_to_end(output_dir / "training_config.json", output_dir, "--resume_from_checkpoint", "latest")
    assert "ignoring the incomplete checkpoint" in resumed.stderr and "at step 16" in resumed.stdout
    assert_same_weights(unet_weights(output_dir), unet_weights(uninterrupted))
    assert not staging()  # rewritten whole this time
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-16", "checkpoint-32", "checkpoint-48"]


def test_divergence_skips_bad_steps_then_stops_naming_the_last_good_checkpoint(tmp_path):
    """A learning rate of 1e30 makes the first update finite but every later loss infinite."""
    output_dir = tmp_path / "out"
    config = TrainingConfig(
        **{
            **TINY,
            "output_dir": str(output_dir),
            "learning_rate": 1e30,
            "lr_scheduler": "constant",
            "lr_warmup_steps": 0,
            "mixed_precision": "no",
            "max_grad_norm": 0.0,
            "checkpointing_steps": 1,
            "checkpoints_total_limit": None,
            "max_bad_steps": 3,
            "max_train_steps": 20,
            "save_images_steps": 0,
            "logging_steps": 1,
        }
    )
    with pytest.raises(TrainingStopped) as stopped:
        train(config)
    message = str(stopped.value)
    assert stopped.value.exit_code == 3
    assert "training diverged: 3 steps in a row (up to step 4)" in message
    assert f"the last good checkpoint is {output_dir / 'checkpoints' / 'checkpoint-1'}" in message
    state = json.loads((output_dir / "checkpoints" / "checkpoint-3" / "training_state.json").read_text())
    assert state["skipped_steps"] == 2  # steps 2 and 3; step 4 stopped the run before its checkpoint
    weights = load_file(output_dir / "checkpoints" / "checkpoint-3" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())  # skipped steps never wrote NaN
    assert not (output_dir / "model_index.json").exists()


def test_a_finished_run_that_skipped_steps_or_whose_weights_blew_up_is_marked_and_exits_3(tmp_path):
    """Probe: lr 1e30 with max_bad_steps above the streak used to finish with rc 0, finished: true, a silent card."""
    output_dir = tmp_path / "out"
    values = {**TINY, "output_dir": str(output_dir), "learning_rate": 1e30, "lr_scheduler": "constant",
              "lr_warmup_steps": 0, "mixed_precision": "no", "max_bad_steps": 100, "max_train_steps": 4,
              "save_images_steps": 0, "checkpointing_steps": 0, "logger": "none"}  # fmt: skip
    with pytest.raises(TrainingStopped) as stopped:
        train(TrainingConfig(**values))
    assert stopped.value.exit_code == 3 and "training diverged: " in str(stopped.value)
    run = json.loads((output_dir / "training_config.json").read_text())["run"]
    assert run["problems"] and any("steps were skipped" in problem for problem in run["problems"])
    assert "Warning: this run did not train properly" in (output_dir / "README.md").read_text()

    config = TrainingConfig(**values)
    healthy = run_problems(RunRecord(global_step=100, skipped_steps=1), torch.nn.Linear(2, 2), config)
    assert healthy == []  # 1% of the steps is the documented limit
    grown = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(grown.weight, 1e5)
    assert "the weights grew to 1e+05" in run_problems(RunRecord(global_step=100), grown, config)[0]


@pytest.mark.parametrize("loss_type", ["l1", "l2"])
def test_a_run_whose_loss_went_back_to_a_zero_outputs_is_marked_collapsed(loss_type):
    """Seen on an H200 (bench/README.md, GPU efficiency): the report preset's L1 loss fell to 0.60 and then sat at
    0.798 = sqrt(2 / pi), the L1 loss of a UNet that outputs zero for its unit-Gaussian epsilon target."""
    zero = {"l1": math.sqrt(2 / math.pi), "l2": 1.0}[loss_type]
    config = TrainingConfig(output_dir="unused", loss_type=loss_type)
    weights = torch.nn.Linear(2, 2)

    def problems(lowest, last, **changes):
        record = RunRecord(global_step=150, losses={"lowest": lowest, "last": last})
        return run_problems(record, weights, dataclasses.replace(config, **changes))

    collapsed = problems(0.75 * zero, 1.0004 * zero)
    assert len(collapsed) == 1 and "outputs zero" in collapsed[0] and "--lr_warmup_steps" in collapsed[0]
    assert problems(0.75 * zero, 0.9 * zero) == []  # still learning, or plateaued below the constant
    assert problems(0.95 * zero, zero) == []  # never left the start: a short run, not a collapse
    assert problems(0.75 * zero, zero, prediction_type="v_prediction") == []  # v's zero loss depends on the data
    assert problems(0.75 * zero, zero, snr_gamma=5.0) == []


def test_divergence_exits_with_a_message_from_the_command_line(tmp_path):
    config_file = tmp_path / "diverge.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "learning_rate": 1e30,
                "lr_scheduler": "constant",
                "lr_warmup_steps": 0,
                "mixed_precision": "no",
                "max_grad_norm": 0.0,
                "max_bad_steps": 2,
                "save_images_steps": 0,
            }
        )
    )
    result = launch(*train_arguments(config_file, tmp_path / "out"))
    assert result.returncode != 0
    assert (
        "error: training diverged: 2 steps in a row" in result.stderr and "there is no checkpoint yet" in result.stderr
    )


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 processes x 4 images against 1 process x 8: same images, same noise, same schedules.

    fp32, so the only difference is the order of floating-point sums (DDP averages two half-batch
    gradients, one process averages eight). Adam divides each gradient by its running RMS, so an
    element whose true gradient is (nearly) zero, such as the attention key biases (softmax ignores
    a shift shared by all keys), turns that rounding noise into steps of about the learning rate:
    measured on two machines, most weights agree within 6e-6 and a few elements up to 4.4e-5.
    Different images or draws would move nearly every element by ~lr x steps = 6e-3 instead.
    """
    common = {**TINY, "mixed_precision": "no", "save_images_steps": 0, "checkpointing_steps": 6}
    common.update(timestep_density="lognormal", loss_weighting="learned")  # their draws and gradients, shared too
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({**common, "train_batch_size": 4}))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump({**common, "train_batch_size": 8}))
    result = launch(*train_arguments(tmp_path / "two.yaml", tmp_path / "two", launcher=TWO_PROCESSES))
    assert result.returncode == 0, result.stderr[-3000:]
    run_to_end(tmp_path / "one.yaml", tmp_path / "one")

    two_run = json.loads((tmp_path / "two" / "training_config.json").read_text())["run"]
    one_run = json.loads((tmp_path / "one" / "training_config.json").read_text())["run"]
    assert two_run["num_processes"] == 2 and two_run["images_per_step"] == one_run["images_per_step"] == 8
    two_weights, one_weights = unet_weights(tmp_path / "two"), unet_weights(tmp_path / "one")
    assert two_weights.keys() == one_weights.keys()
    differences = torch.cat([(two_weights[name] - one_weights[name]).abs().flatten() for name in one_weights])
    assert differences.max() < 2e-4  # no element moved by a different batch (that would be ~6e-3)
    assert torch.quantile(differences, 0.999) < 1e-5  # and rounding noise alone, nearly everywhere
    # only the main process writes the export, the card and the logs
    assert result.stdout.count("Exported the DDPMPipeline") == 1
    assert len(list((tmp_path / "two" / "logs").rglob("events.out.tfevents.*"))) == len(
        list((tmp_path / "one" / "logs").rglob("events.out.tfevents.*"))
    )


def test_fid_during_training_is_logged_and_keeps_the_best_weights(tmp_path, monkeypatch):
    """--fid_steps with saved reference statistics, scoring each EMA length; the small test network stands in for
    Inception. The best (step, EMA) pair is exported."""
    from conftest import TinyFeatures
    from pipeline import commands, metrics
    from pipeline import evaluate as ev

    for module in (ev, metrics):  # the reference command's extractor and the training FID's
        monkeypatch.setattr(
            module,
            "inception_extractor",
            lambda mode, weights=None, device="cpu": (TinyFeatures(), "tiny test network"),
        )
    stats = tmp_path / "reference.npz"
    ev.make_reference(
        commands.parse_evaluate_args(
            [
                "reference",
                "--resolution",
                "16",
                "--channels",
                "1",
                "--reference_dataset",
                "data/fashion_mnist",
                "--reference_max_images",
                "64",
                "--output",
                str(stats),
                "--device",
                "cpu",
            ]
        )
    )
    output_dir = tmp_path / "out"
    train(
        TrainingConfig(
            **{
                **TINY,
                "output_dir": str(output_dir),
                "fid_steps": 3,
                "fid_reference": str(stats),
                "fid_num_images": 8,
                "fid_inference_steps": 2,
                "save_images_steps": 0,
                "ema_extra_decays": [0.5],
            }
        )
    )
    logged = {
        (event.step, decay): event.value
        for tag, decay in (("fid", 0.999), ("fid_ema_0.5", 0.5))
        for event in logged_scalars(output_dir, tag)
    }
    assert sorted(logged) == [(3, 0.5), (3, 0.999), (6, 0.5), (6, 0.999)] and all(
        value > 0 for value in logged.values()
    )
    best = json.loads((output_dir / "best-fid" / "fid.json").read_text())
    assert best["fid"] == pytest.approx(min(logged.values()), rel=1e-4)
    assert (best["step"], best["ema_decay"]) == min(logged, key=logged.get)
    assert (output_dir / "best-fid" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((output_dir / "training_config.json").read_text())["run"]["best_fid"]["step"] == best["step"]


def test_fid_during_training_with_a_bad_reference_stops_before_any_work(tmp_path):
    stats = tmp_path / "reference.npz"
    stats.write_bytes(b"")
    config_file = tmp_path / "fid.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "fid_steps": 3,
                "fid_reference": str(stats),
                "fid_mode": "legacy_pytorch",
                "inception_weights": str(tmp_path / "missing.pth"),
            }
        )
    )
    result = launch(*train_arguments(config_file, tmp_path / "out"))
    assert result.returncode != 0
    assert f"error: reference: {stats} is not a statistics file" in result.stderr
    assert not (tmp_path / "out").exists()
