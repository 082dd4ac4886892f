"""Hostile and broken input: nothing we load runs code, nothing leaves the folder it should not,
every bad input ends in one `error:` line (or a skipped, counted file) instead of a traceback, a
hang or lost work.

The "malicious" files are real pickles whose loading with `weights_only=False` creates a marker
file; each test first shows that the payload does fire when unpickled, so that its absence proves
the file was never unpickled.
"""

import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import FINISHED_RUN, REPO, TINY, copy_checkpoint, resume
from pipeline import evaluate as ev
from pipeline import inception, metrics
from pipeline.arguments import parse_config
from pipeline.batches import MAX_UNUSABLE_ROWS_IN_A_ROW, StreamedBatches
from pipeline.config import TrainingConfig
from pipeline.data import prepare_training_images
from pipeline.errors import PipelineError
from pipeline.train import train


class Payload:
    """Unpickling this touches `marker`: a stand-in for any code a crafted file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": Payload(marker)}, path)


def assert_payload_is_live(tmp_path: Path) -> None:
    probe, marker = tmp_path / "probe.pkl", tmp_path / "probe-fired"
    plant(probe, marker)
    torch.load(probe, weights_only=False)
    assert marker.exists(), "the payload must fire when unpickled, or the tests below prove nothing"


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each run makes its own Accelerator


# ---------------------------------------------------------------------------------------------
# Nothing we load runs code


def test_resume_never_unpickles_files_planted_in_a_checkpoint(finished_run, tmp_path):
    assert_payload_is_live(tmp_path)
    output_dir, _ = copy_checkpoint(finished_run, tmp_path)
    checkpoint = output_dir / "checkpoints" / "checkpoint-3"
    marker = tmp_path / "fired"
    # every name Accelerate's save_state uses, and the pickle names of a diffusers checkpoint
    for name in (
        "custom_checkpoint_0.pkl",
        "random_states_0.pkl",
        "optimizer.bin",
        "scheduler.bin",
        "scaler.pt",
        "pytorch_model.bin",
        "model.safetensors.pkl",
        "unet/diffusion_pytorch_model.bin",
        "unet_ema/diffusion_pytorch_model.bin",
    ):
        plant(checkpoint / name, marker)
    resume(output_dir)
    assert not marker.exists()
    expected = load_file(finished_run / "unet" / "diffusion_pytorch_model.safetensors")
    actual = load_file(output_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(actual[name], expected[name]) for name in expected)  # and the resume is still exact


@pytest.mark.parametrize("where", ["given", "default"])
def test_legacy_inception_weights_are_never_unpickled(tmp_path, where):
    assert_payload_is_live(tmp_path)
    marker = tmp_path / "fired"
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        path = inception.default_weights_path("legacy_pytorch") if where == "default" else tmp_path / "weights.pth"
        plant(path, marker)
        with pytest.raises(ev.PipelineError, match="is not a usable pt_inception-2015-12-05-6726825d.pth"):
            inception.inception_extractor("legacy_pytorch", None if where == "default" else str(path))
    finally:
        torch.hub.set_dir(previous)
    assert not marker.exists()


def test_legacy_inception_weights_that_are_not_the_published_file_are_named(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(3)}, path)  # a plain state dict: loads safely, but is not Inception
    with (
        pytest.warns(UserWarning, match="is not the published pt_inception"),
        pytest.raises(ev.PipelineError, match="not a usable"),
    ):
        inception.build_inception("legacy_pytorch", path)


# ---------------------------------------------------------------------------------------------
# Tampered and truncated checkpoints: `error: <file>: <what is wrong>`


def _set_state(checkpoint: Path, **changes):
    path = checkpoint / "training_state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _scramble(path: Path):  # same size, so only the parser can tell
    path.write_bytes(bytes(reversed(path.read_bytes())))


TAMPERINGS = {
    "negative step": (
        lambda c: _set_state(c, global_step=-5),
        "training_state.json: global_step must be a non-negative integer, got -5",
    ),
    "string step": (
        lambda c: _set_state(c, global_step="3"),
        "training_state.json: global_step must be a non-negative integer, got '3'",
    ),
    "step of another folder": (
        lambda c: _set_state(c, global_step=2),
        "global_step 2 does not match the folder name checkpoint-3",
    ),
    "not JSON": (lambda c: (c / "training_state.json").write_text("{"), "training_state.json: not valid JSON"),
    "truncated weights": (
        lambda c: _truncate(c / "unet" / "diffusion_pytorch_model.safetensors"),
        "unet/diffusion_pytorch_model.safetensors: .* bytes, the checkpoint recorded",
    ),
    "scrambled weights": (
        lambda c: _scramble(c / "unet" / "diffusion_pytorch_model.safetensors"),
        "unet/diffusion_pytorch_model.safetensors: not a readable safetensors file",
    ),
    "scrambled EMA": (
        lambda c: _scramble(c / "unet_ema" / "diffusion_pytorch_model.safetensors"),
        "unet_ema/diffusion_pytorch_model.safetensors: not a readable safetensors file",
    ),
    "missing optimizer": (lambda c: (c / "optimizer.safetensors").unlink(), "optimizer.safetensors: missing"),
    "file outside": (lambda c: _set_state(c, files={"../../../etc/passwd": 1}), "names a file outside the checkpoint"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_checkpoint_stops_the_resume_naming_the_file(finished_run, tmp_path, tampering):
    output_dir, _ = copy_checkpoint(finished_run, tmp_path)
    change, message = TAMPERINGS[tampering]
    change(output_dir / "checkpoints" / "checkpoint-3")
    with pytest.raises(PipelineError, match=message):
        resume(output_dir)
    assert not (output_dir / "model_index.json").exists()


def test_a_tampered_checkpoint_from_the_command_line_is_one_error_line(finished_run, tmp_path):
    output_dir, _ = copy_checkpoint(finished_run, tmp_path)
    _set_state(output_dir / "checkpoints" / "checkpoint-3", global_step=-5)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(FINISHED_RUN))
    result = subprocess.run(
        [
            sys.executable,
            "train_ddpm.py",
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--output_dir",
            str(output_dir),
            "--resume_from_checkpoint",
            "checkpoint-3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1].startswith("error: ")
        and "global_step must be a non-negative integer" in result.stderr
    )
    assert "Traceback" not in result.stderr


def _train_with_file_size_limit(config: Path, limit: int, *flags: str) -> subprocess.CompletedProcess:
    """train_ddpm.py under a file size limit (RLIMIT_FSIZE): a write past it fails as a full disk or a quota would."""

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "train_ddpm.py", "--config", str(config), *flags]
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size
    )  # fmt: skip


def test_a_write_failure_at_export_or_in_the_data_cache_is_an_error_that_says_what_to_do(tmp_path):
    """The export's weights (194 KB) past a 100 KB limit: exit 2, no traceback, no model_index.json (so nothing
    loads as a pipeline), and the way out; then a data cache that cannot be written: exit 2, naming the cache."""
    values = {**TINY, "logger": "none", "save_images_steps": 0, "checkpointing_steps": 0}
    prepare_training_images(TrainingConfig(**values))  # decoded first: only the export should hit the limit
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(values))
    result = _train_with_file_size_limit(tmp_path / "tiny.yaml", 100_000, "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'out'}: cannot write the export (File too large"), last
    assert "no checkpoint holds the last step's weights" in last and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "model_index.json").exists()

    result = _train_with_file_size_limit(
        tmp_path / "tiny.yaml", 100_000, "--output_dir", str(tmp_path / "out2"), "--cache_dir", str(tmp_path / "c")
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cache_dir: cannot write the data cache under {tmp_path / 'c'} (File too large")
    assert "Traceback" not in result.stderr and not list((tmp_path / "c").rglob("pixels.npy"))


def test_a_failed_checkpoint_write_removes_the_partial_folder_and_says_so(tmp_path):
    """A real write failure: the file size limit (RLIMIT_FSIZE, as a quota or a full disk would) lets the weights
    (194 KB) through and stops the optimizer state (392 KB)."""
    values = {**TINY, "logger": "none", "save_images_steps": 0, "checkpointing_steps": 3}
    prepare_training_images(
        TrainingConfig(**values)
    )  # decode the data first: only the checkpoint should hit the limit
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(values))

    result = _train_with_file_size_limit(tmp_path / "tiny.yaml", 300_000, "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert re.search(
        r"cannot write the checkpoint of step 3 \(.*File too large.*\); the partial checkpoint was removed",
        result.stderr,
    )
    assert "No complete checkpoint exists yet" in result.stderr and "Traceback" not in result.stderr
    assert list((tmp_path / "out" / "checkpoints").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Archives, folders and rows that cannot be used are skipped and counted


def _png(value: int = 128, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


def _patch_member(archive: Path, name: str, patch) -> None:
    """Apply `patch(data: bytearray, local_header_offset, central_entry_offset)` to the archive's bytes."""
    with zipfile.ZipFile(archive) as opened:
        info = opened.getinfo(name)
    content = bytearray(archive.read_bytes())
    central = content.index(b"PK\x01\x02")  # the central directory entries; the file name starts 46 bytes in
    while content[central + 46 : central + 46 + len(name)] != name.encode():
        central = content.index(b"PK\x01\x02", central + 4)
    patch(content, info.header_offset, central)
    archive.write_bytes(bytes(content))


def test_a_zip_with_broken_encrypted_and_huge_members_skips_each_and_keeps_the_rest(tmp_path):
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
        for index in range(4):
            zipped.writestr(f"good{index}.png", _png(60 * index))
        for name in ("bad_crc.png", "bad_header.png", "encrypted.png"):
            zipped.writestr(name, _png())
        zipped.writestr(zipfile.ZipInfo("huge.png"), b"\0" * (80 * 2**20), compress_type=zipfile.ZIP_DEFLATED)

    def flip_data_byte(content, local, central):
        content[local + 30 + len("bad_crc.png") + 100] ^= 0xFF

    def break_signature(content, local, central):
        content[local : local + 4] = b"XXXX"

    def set_encrypted(content, local, central):
        content[local + 6] |= 1
        content[central + 8] |= 1

    _patch_member(archive, "bad_crc.png", flip_data_byte)
    _patch_member(archive, "bad_header.png", break_signature)
    _patch_member(archive, "encrypted.png", set_encrypted)
    started = time.perf_counter()
    prepared = prepare_training_images(
        parse_config(["--train_data_dir", str(archive), "--resolution", "16", "--image_channels", "3"])
    )
    summary = prepared.summary
    assert len(prepared.pixels) == 4 and summary["files_skipped"] == 4
    reasons = dict(example.split(": ", 1) for example in summary["skipped_examples"])
    assert reasons["bad_crc.png"].startswith("unreadable archive member (BadZipFile: Bad CRC-32")
    assert reasons["bad_header.png"].startswith("unreadable archive member (BadZipFile: Bad magic number")
    assert reasons["encrypted.png"] == "encrypted archive member"
    assert reasons["huge.png"] == f"too large ({80 * 2**20:,} bytes; --max_image_bytes {64 * 2**20:,})"
    assert time.perf_counter() - started < 30  # the 80 MB member was never inflated


def test_a_folder_with_dangling_and_looping_links_and_undecodable_names_is_listed(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.png").write_bytes(_png(10))
    (folder / "sub" / "also_good.png").write_bytes(_png(200))
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "sub" / "back_up").symlink_to(folder, target_is_directory=True)  # a folder loop
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.png"), "wb") as file:  # Latin-1, not UTF-8
        file.write(_png(90))
    prepared = prepare_training_images(
        parse_config(["--train_data_dir", str(folder), "--resolution", "16", "--image_channels", "3"])
    )
    assert len(prepared.pixels) == 2
    reasons = dict(example.split(": ", 1) for example in prepared.summary["skipped_examples"])
    assert reasons["dangling.png"].startswith("unreadable (No such file")
    assert reasons["loop_a.png"].startswith("unreadable (Too many levels of symbolic links")
    assert reasons["caf\\xe9.png"].startswith("file name is not valid UTF-8")


def _rows_parquet(path: Path, rows: list) -> Path:
    import datasets

    table = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    table.to_parquet(path)
    return path


def test_empty_rows_of_a_datasets_source_are_skipped_cached_and_streamed(tmp_path):
    rows = [{"bytes": _png(value), "path": None} for value in (0, 100, 200, 250)] + [None, None]
    source = str(_rows_parquet(tmp_path / "rows.parquet", rows))
    prepared = prepare_training_images(parse_config(["--dataset_name", source, "--resolution", "16"]))
    assert len(prepared.pixels) == 4 and prepared.summary["skipped_by_reason"] == {"empty row": 2}
    stream = StreamedBatches(
        parse_config(["--dataset_name", source, "--resolution", "16", "--streaming", "--train_batch_size", "4"])
    )
    assert stream.batch(0).shape == (4, 3, 16, 16) and stream.skipped["empty row"] >= 1  # auto: a stream is RGB


def test_a_stream_without_one_decodable_image_stops_instead_of_hanging(tmp_path):
    source = str(_rows_parquet(tmp_path / "junk.parquet", [{"bytes": b"junk", "path": None}] * 1200))  # one epoch
    stream = StreamedBatches(parse_config(["--dataset_name", source, "--streaming", "--train_batch_size", "8"]))
    with pytest.raises(
        PipelineError, match=f"the last {MAX_UNUSABLE_ROWS_IN_A_ROW:,} rows of the stream held no usable image"
    ):
        stream.batch(0)


def test_sigterm_during_a_long_wait_for_streamed_data_stops_the_run_at_once(tmp_path):
    """Each batch of large PNGs takes seconds to decode: the signal lands in that wait, which it ends."""
    big = io.BytesIO()
    y, x = np.mgrid[0:3000, 0:3000]
    Image.fromarray(((x + y) % 256).astype(np.uint8)).save(big, "PNG", compress_level=1)
    source = _rows_parquet(tmp_path / "big.parquet", [{"bytes": big.getvalue(), "path": None}] * 96)
    values = {
        **TINY,
        "dataset_name": str(source),
        "streaming": True,
        "max_train_samples": None,
        "train_batch_size": 32,
        "shuffle_buffer_size": 4,
        "logger": "none",
        "save_images_steps": 0,
        "checkpointing_steps": 0,
    }
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(values))
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "train_ddpm.py",
            "--config",
            str(tmp_path / "stream.yaml"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in trainer.stdout:  # the banner is printed just before the first wait for data
        if line.startswith("Training "):
            break
    time.sleep(0.5)
    trainer.send_signal(signal.SIGTERM)
    _, stderr = trainer.communicate(timeout=120)
    assert trainer.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert (
        "stopped by SIGTERM while waiting for the data of step 1" in stderr and "There is no checkpoint yet" in stderr
    )


# ---------------------------------------------------------------------------------------------
# Flags checked before any work


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--seed", "-1"], "seed: must lie in \\[0, 4294967295\\]"),
        (["--seed", str(2**32)], "seed: must lie in"),
        (
            ["--grid_inference_steps", "1500"],
            "grid_inference_steps: 1500 sampler steps, but the model has only ddpm_num_steps=1000",
        ),
        (["--fid_inference_steps", "1001"], "fid_inference_steps: 1001 sampler steps"),
        (["--max_image_bytes", "0"], "max_image_bytes: must be positive"),
    ],
)
def test_flags_that_would_fail_later_are_refused_at_once(flags, message):
    with pytest.raises(PipelineError, match=message):
        parse_config(flags)


def test_dash_spelled_budget_flag_replaces_the_presets_epochs():
    config = parse_config(["--config", "configs/report_sfhq64.yaml", "--max-train-steps", "10"])
    assert config.max_train_steps == 10 and config.num_epochs is None


@pytest.mark.parametrize("kind", ["a file", "under a file"])
def test_an_output_dir_that_cannot_be_a_folder_stops_before_decoding(tmp_path, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    output_dir = blocker if kind == "a file" else blocker / "run"
    with pytest.raises(PipelineError, match=f"output_dir: {blocker} exists and is not a folder"):
        train(TrainingConfig(**{**TINY, "output_dir": str(output_dir)}))


def test_an_output_dir_in_a_place_that_cannot_be_written_stops_before_decoding():
    with pytest.raises(
        PipelineError, match="output_dir: cannot write to /proc/ddpm-run"
    ):  # /proc takes no new folders, even from root
        train(TrainingConfig(**{**TINY, "output_dir": "/proc/ddpm-run"}))


def test_low_disk_space_is_warned_about_before_training(tmp_path, monkeypatch):
    from collections import namedtuple

    from pipeline import train as training

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(training.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100_000, 100_000))
    with pytest.warns(UserWarning, match="has 0 MiB free; one checkpoint takes about 1 MiB"):
        training.check_output_dir(TrainingConfig(**{**TINY, "output_dir": str(tmp_path / "out")}), parameters=48_000)
    assert not (tmp_path / "out").exists()  # the check leaves nothing behind


def test_sampling_more_steps_than_the_model_has_is_refused(finished_run, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.sample",
            "--model",
            str(finished_run),
            "--output_dir",
            str(tmp_path / "s"),
            "--steps",
            "51",
            "--num_images",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        result.returncode == 2
        and "error: steps: 51 sampler steps, but the model was trained with T = 50" in result.stderr
    )
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("defect", ["NaN", "one row"])
def test_reference_statistics_with_nan_or_one_row_are_refused(tmp_path, defect):
    features = np.random.default_rng(0).normal(size=(1 if defect == "one row" else 10, 32))
    if defect == "NaN":
        features[3, 5] = np.nan
    path = tmp_path / "reference.npz"
    np.savez(path, mu=features.mean(0), sigma=np.eye(32), features=features, meta=json.dumps({"mode": "clean"}))
    with pytest.raises(ev.PipelineError, match="NaN or infinite features" if defect == "NaN" else "at least 2 rows"):
        metrics.load_reference(path)
