"""The precision `auto` picks, for every kind of device, from the facts torch reports (no hardware needed), and the
facts a run records."""

import json
import os
import subprocess
import sys

import pytest
import torch

import pipeline.train
from conftest import REPO, TINY, train
from pipeline.arguments import parse_config
from pipeline.config import TrainingConfig
from pipeline.device import choose_precision, describe_device, device_facts, native_bf16
from pipeline.train import start_notes


def cpu(**flags):
    facts = {"type": "cpu", "name": "Some CPU", "cores": 2, "isa": "AVX2", "avx512": False}
    return {**facts, "avx512_bf16": False, "amx": False, "onednn_bf16": False, **flags}


AMX = cpu(isa="AVX512", avx512=True, avx512_bf16=True, amx=True, onednn_bf16=True)
AVX512_BF16 = cpu(isa="AVX512", avx512=True, avx512_bf16=True, onednn_bf16=True)
AVX2 = cpu()
CAPPED_AMX = cpu(amx=True, avx512_bf16=True, isa_capped_by={"ONEDNN_MAX_CPU_ISA": "AVX2"})  # oneDNN's bf16 off
AMPERE = {"type": "cuda", "name": "NVIDIA A100", "bf16": True}
TURING = {"type": "cuda", "name": "Tesla T4", "bf16": False}


@pytest.mark.parametrize(
    "facts, expected",
    [(AMX, "bf16"), (AVX512_BF16, "bf16"), (AVX2, "no"), (CAPPED_AMX, "no"), (AMPERE, "bf16"), (TURING, "fp16")],
    ids=["amx", "avx512-bf16", "avx2", "capped-amx", "ampere", "turing"],
)
def test_auto_picks_bf16_only_where_the_device_computes_it(facts, expected):
    precision, reason = choose_precision("auto", facts)
    assert precision == expected and reason.startswith("auto: ")
    assert native_bf16(facts) == (expected == "bf16")


def test_an_explicit_choice_is_kept_and_emulated_bf16_is_named():
    assert choose_precision("no", AMX) == ("no", "as asked")
    assert choose_precision("bf16", AMX) == ("bf16", "as asked")
    precision, reason = choose_precision("bf16", AVX2)
    assert precision == "bf16"
    assert "Some CPU, 2 cores, AVX2 kernels, no bf16 instructions has no native bf16" in reason
    assert "pass --mixed_precision no (or auto)" in reason
    assert describe_device(CAPPED_AMX).endswith("AMX + AVX512-BF16, capped at AVX2")
    assert describe_device(TURING) == "Tesla T4 (no bf16)"


def test_the_quickstart_on_a_cpu_without_native_bf16_points_to_the_fast_preset(tmp_path):
    def slow_cpu_notes(config, facts):
        return [note for note in start_notes(config, facts) if "native bf16" in note]

    quickstart = parse_config([])
    assert "configs/quickstart_fast.yaml" in slow_cpu_notes(quickstart, AVX2)[0]
    assert slow_cpu_notes(parse_config(["--config", "configs/quickstart.yaml"]), CAPPED_AMX)
    assert not slow_cpu_notes(quickstart, AMX) and not slow_cpu_notes(quickstart, TURING)
    assert not slow_cpu_notes(parse_config(["--train_data_dir", str(tmp_path)]), AVX2)  # not the quickstart
    assert not slow_cpu_notes(parse_config(["--config", "configs/quickstart_fast.yaml"]), AVX2)
    other_data = start_notes(parse_config(["--train_data_dir", str(tmp_path)]), AMX)
    assert len(other_data) == 1 and "no --config, so the quickstart's defaults apply" in other_data[0]
    assert start_notes(quickstart, AMX) == []


def test_the_recorded_device_facts_follow_an_instruction_set_cap():
    here = device_facts()
    assert here["type"] == "cpu" and here["cores"] == len(os.sched_getaffinity(0)) and here["name"]
    assert {"isa", "avx512", "avx512_bf16", "amx", "onednn_bf16"} <= set(here)
    script = "import json; from pipeline.device import device_facts, native_bf16 as n; d = device_facts(); "
    script += "print(json.dumps([d, n(d)]))"
    caps = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**os.environ, **caps}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    capped, native = json.loads(result.stdout)
    assert capped["isa"] == "AVX2" and capped["isa_capped_by"] == caps and native is False


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_a_run_computes_in_the_precision_it_records_through_every_step_and_checkpoint(
    tmp_path, fresh_accelerate_state, monkeypatch, precision, dtype
):
    """Accelerate wraps the UNet's forward in autocast; unwrapping it without that wrapper (keep_fp32_wrapper=False)
    restores the plain forward in place, and a run that records bf16 trains in fp32 (as every run did until
    2026-12-06)."""
    dtypes, build = [], pipeline.train.build_training

    def watched(*args, **kwargs):
        parts = build(*args, **kwargs)
        parts.model.conv_in.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        return parts

    monkeypatch.setattr(pipeline.train, "build_training", watched)
    config = {**TINY, "mixed_precision": precision, "save_images_steps": 0, "logger": "none"}
    output_dir = train(TrainingConfig(**config, output_dir=str(tmp_path / "out")))  # a checkpoint at step 3 of 6
    assert json.loads((output_dir / "training_config.json").read_text())["run"]["mixed_precision"] == precision
    assert len(dtypes) >= 6 and set(dtypes) == {dtype}  # the 6 steps and the last grid


def test_a_run_records_its_device_its_precision_and_why_and_its_speed(tmp_path, fresh_accelerate_state):
    output_dir = train(TrainingConfig(**{**TINY, "output_dir": str(tmp_path / "out"), "logger": "none"}))
    run = json.loads((output_dir / "training_config.json").read_text())["run"]
    expected, reason = choose_precision("auto", device_facts())
    assert run["device"] == device_facts() and run["precision_reason"] == reason
    assert run["mixed_precision"] == expected and run["images_per_second"] > 0
