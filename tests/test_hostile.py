"""Hostile and broken input, one probe of a hostile user's each: nothing we load runs code, a run owns its folder, a
resume says what it changes, every file and size is checked before work, and every bad input ends in one `error:`
line (or a skipped, counted file) instead of a traceback, a hang or lost work. (Tampered checkpoints:
test_checkpoints.py.)

The "malicious" files are real pickles whose loading with `weights_only=False` creates a marker
file; each test first shows that the payload does fire when unpickled, so that its absence proves
the file was never unpickled.
"""

import io
import json
import os
import re
import resource
import shutil
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

from conftest import FINISHED_RUN, REPO, TINY, copy_checkpoint, deeply_nested, resume, train
from pipeline import evaluate as ev
from pipeline import inception, metrics
from pipeline.arguments import parse_config
from pipeline.batches import MAX_UNUSABLE_ROWS_IN_A_ROW, StreamedBatches
from pipeline.commands import hub_main, sample_main
from pipeline.config import TrainingConfig
from pipeline.data import prepare_training_images
from pipeline.errors import PipelineError
from pipeline.files import check_writable


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
# Writes that fail


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


@pytest.mark.usefixtures("short_stream_shutdowns")
def test_empty_rows_of_a_datasets_source_are_skipped_cached_and_streamed(tmp_path):
    rows = [{"bytes": _png(value), "path": None} for value in (0, 100, 200, 250)] + [None, None]
    source = str(_rows_parquet(tmp_path / "rows.parquet", rows))
    prepared = prepare_training_images(parse_config(["--dataset_name", source, "--resolution", "16"]))
    assert len(prepared.pixels) == 4 and prepared.summary["skipped_by_reason"] == {"empty row": 2}
    stream = StreamedBatches(
        parse_config(["--dataset_name", source, "--resolution", "16", "--streaming", "--train_batch_size", "4"])
    )
    assert stream.batch(0).shape == (4, 3, 16, 16) and stream.skipped["empty row"] >= 1  # auto: a stream is RGB


@pytest.mark.usefixtures("short_stream_shutdowns")
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
def test_flags_and_sizes_that_would_fail_later_are_refused_at_once(flags, message):
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


def test_the_write_check_makes_no_folder_so_runs_started_together_do_not_race_on_it(tmp_path, monkeypatch):
    # It used to make the missing folder, write a file in it and remove the folder again: a run started at the same
    # moment into the same folder, whose lock appeared meanwhile, made that removal fail with a traceback (or removed
    # the folder under the other run) instead of one run being refused as "in use by process".
    write_bytes = Path.write_bytes

    def another_run_starts_meanwhile(self, data):
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / ".lock").write_text("{}")
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", another_run_starts_meanwhile)
    assert check_writable(tmp_path / "run") == tmp_path
    assert [path.name for path in (tmp_path / "run").iterdir()] == [".lock"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # and no probe left


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


# ---------------------------------------------------------------------------------------------
# A run owns its folder


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
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


def test_only_dot_files_or_the_repository_itself_are_not_an_empty_folder(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".bashrc").write_text("# mine\n")
    for folder in (tmp_path / "home", REPO):
        with pytest.raises(PipelineError, match="not a run's of this pipeline"):
            train(TrainingConfig(**{**FINISHED_RUN, "output_dir": str(folder), "overwrite_output_dir": True}))
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
# A resume says what it changes


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
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-2", tmp_path / "b" / "checkpoints" / "checkpoint-2")
    train(TrainingConfig(**{**values, "output_dir": str(tmp_path / "b"), "resume_from_checkpoint": "latest"}))
    weights = [load_file(tmp_path / run / "unet" / "diffusion_pytorch_model.safetensors") for run in ("a", "b")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    values["dropout"], values["output_dir"] = 0.0, str(tmp_path / "c")  # and the dropout took part
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
# Model folders, sizes and presets checked before work


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


def test_a_distillation_field_never_refuses_a_plain_run():
    """Probe: --ddpm_num_steps 40 was refused for a plain run by distill_grid_steps (50), which it never uses."""
    assert parse_config(["--ddpm_num_steps", "40", "--grid_inference_steps", "20"]).ddpm_num_steps == 40
    with pytest.raises(PipelineError, match="distill_grid_steps: 50 is more than ddpm_num_steps=40"):
        parse_config(["--ddpm_num_steps", "40", "--distill_teacher", "t", "--grid_sampler", "lcm",
                      "--grid_inference_steps", "4"])  # fmt: skip
    assert parse_config(["--distill_teacher_substeps", "30"]).distill_teacher_substeps == 30
    with pytest.raises(PipelineError, match="distill_teacher_substeps: 30 steps across an interval of 20 timesteps"):
        parse_config(["--distill_teacher", "t", "--grid_sampler", "lcm", "--grid_inference_steps", "4",
                      "--distill_teacher_substeps", "30"])  # fmt: skip


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
# The smaller ones


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
