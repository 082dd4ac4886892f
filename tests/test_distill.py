"""Distillation into a few-step student, and exports whose plain call samples well or cannot go wrong, at tiny size."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import LCMScheduler
from safetensors.torch import load_file

from conftest import TINY, train
from pipeline.commands import distill_config
from pipeline.config import TrainingConfig
from pipeline.errors import PipelineError


# T = 1000, as DDPMPipeline's default call assumes; the grids (and so the export) use SDE-DPM-Solver++
TEACHER = {
    **TINY,
    "ddpm_num_steps": 1000,
    "grid_sampler": "sde-dpmsolver++",
    "mixed_precision": "no",
    "logger": "none",
}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each run makes its own Accelerator


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("teacher") / "out"
    train(TrainingConfig(**{**TEACHER, "output_dir": str(output_dir), "save_images_steps": 0}))
    return output_dir


def distill(teacher, output_dir, *flags, steps=2):
    return train(distill_config(str(teacher), str(output_dir), steps, ["--logger", "none", *flags]))


STOCK = """
import sys, torch
from diffusers import DDPMPipeline
pipeline = DDPMPipeline.from_pretrained(sys.argv[1])
pipeline.set_progress_bar_config(disable=True)
steps = int(sys.argv[2]) if len(sys.argv) > 2 else None
try:
    options = {"num_inference_steps": steps} if steps else {}
    out = pipeline(batch_size=2, generator=torch.manual_seed(0), output_type="np", **options)
    images = out.images
    print(type(pipeline.scheduler).__name__, images.shape, bool(images.min() >= 0), bool(images.max() <= 1))
except ValueError as error:
    print("refused:", error)
"""


def stock(folder, *steps) -> str:
    """Stock diffusers in a clean interpreter (-I: neither this repository nor PYTHONPATH on its path)."""
    command = [sys.executable, "-I", "-c", STOCK, str(folder), *map(str, steps)]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_the_plain_call_of_an_exported_pipeline_samples_with_the_measured_sampler(teacher):
    scheduler = json.loads((teacher / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["algorithm_type"] == "sde-dpmsolver++"
    assert stock(teacher) == "DPMSolverMultistepScheduler (2, 16, 16, 1) True True"  # 1000 steps: T of them
    assert "runs it\nfor 1000 steps, one per timestep: it works" in (teacher / "README.md").read_text()


def test_a_tiny_teacher_distils_into_a_student_that_stock_diffusers_samples_in_2_steps(teacher, tmp_path):
    student = distill(teacher, tmp_path / "student")
    record = json.loads((student / "training_config.json").read_text())
    assert record["config"]["distill_teacher"] == str(teacher) and record["config"]["grid_sampler"] == "lcm"
    assert record["run"]["global_step"] * record["run"]["images_per_step"] == 24  # half the teacher's 48 images
    recipe = [record["config"][name] for name in ("snr_gamma", "learning_rate", "loss_type")]
    assert recipe == [5.0, 4e-4, "l2"]  # the bench's recipe for 2 steps
    assert record["config"]["distill_reparam_steps"] == 0  # it predicts what its teacher predicts: nothing to relearn
    scheduler = json.loads((student / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["original_inference_steps"] == 28
    sampler = LCMScheduler.from_pretrained(student / "scheduler")
    sampler.set_timesteps(2)
    assert sampler.timesteps.tolist() == [979, 489]  # the grid's top, where alpha_bar is 9.7e-4, not 999's 2.4e-9
    assert scheduler["prediction_type"] == "epsilon" and scheduler["num_train_timesteps"] == 1000  # the teacher's
    assert stock(student, 2) == "LCMScheduler (2, 16, 16, 1) True True"
    refusal = stock(student)  # the pipeline's default of 1000 steps: refused by LCMScheduler, naming the fix
    assert refusal.startswith("refused: ") and "`num_inference_steps`: 1000" in refusal
    card = (student / "README.md").read_text()
    assert "distilled from the DDPM `out` (a local training folder)" in card and "num_inference_steps=2" in card
    assert "arxiv.org/abs/2310.04378" in card  # LCM
    assert "| loss | L2 between the consistency function at a grid point and its own value (no gradient) one" in card
    # the student moved away from the teacher it started from
    moved = load_file(student / "unet" / "diffusion_pytorch_model.safetensors")
    start = load_file(teacher / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(moved[name], start[name]) for name in start)


def test_the_distance_rate_and_weights_follow_the_steps_distilled_for_unless_a_flag_sets_them(teacher, tmp_path):
    def recipe(steps, *flags):
        config = distill_config(str(teacher), str(tmp_path / "student"), steps, list(flags))
        names = ("distill_target", "distill_halving_steps", "loss_type", "learning_rate", "snr_gamma")
        return *(getattr(config, name) for name in names), config.distill_grid_steps

    distilled = ("teacher", 0, "l2", 4e-4)  # the teacher's ODE, one interval a link
    tuned = ("data", 40, "l2", 4e-4)  # consistency tuning on ECT's curriculum
    measured = [(*distilled, 1.0, 49), (*distilled, 5.0, 28), (*tuned, 5.0, 28), (*tuned, 5.0, 28)]  # 1, 3, 4, 8
    assert [recipe(steps) for steps in (1, 3, 4, 8)] == measured  # the bench's choices
    assert recipe(4, "--distill_target", "teacher")[:2] == ("teacher", 0)  # the target brings its curriculum
    assert recipe(2, "--distill_target", "data")[:2] == ("data", 40)
    assert recipe(4, "--distill_target", "teacher", "--distill_halving_steps", "40")[:2] == ("teacher", 40)
    assert recipe(4, "--loss_type", "pseudo_huber")[2:4] == ("pseudo_huber", 4e-4)
    assert recipe(2, "--learning_rate", "1e-4")[3] == 1e-4 and recipe(1, "--snr_gamma", "5")[4:] == (5.0, 49)
    assert recipe(2, "--distill_grid_steps", "49")[5] == 49 and recipe(2, "--distill_halving_steps", "8")[1] == 8


def test_a_4_step_student_is_tuned_on_the_images_not_the_teachers_ode_and_says_so(teacher, tmp_path):
    student = distill(teacher, tmp_path / "student", steps=4)
    config = json.loads((student / "training_config.json").read_text())["config"]
    assert (config["distill_target"], config["distill_halving_steps"]) == ("data", 40)
    assert (config["ema_power"], config["ema_inv_gamma"]) == (1.0, 4.0)  # a power EMA: the same share of any budget
    card = " ".join((student / "README.md").read_text().split())
    assert "distilled from the DDPM `out` (a local training folder) by consistency tuning in DDPM time" in card
    assert "the training images' own noise giving each target; ECT's curriculum" in card
    assert stock(student, 4) == "LCMScheduler (2, 16, 16, 1) True True"


def test_a_resumed_distillation_equals_an_uninterrupted_one(teacher, tmp_path):
    """Across the change from the re-parameterisation phase (steps 1-2 of 6 here) to the consistency loss, for a v
    student of the epsilon teacher (the recipe's other prediction type) whose targets take four teacher steps, on
    ECT's curriculum (links of 32 grid intervals, reaching the data, at steps 3-4, then 16: the resume at 3 within)."""
    flags = ["--checkpointing_steps", "3", "--save_images_steps", "0", "--distill_reparam_steps", "2"]
    flags += ["--prediction_type", "v_prediction", "--distill_teacher_substeps", "4"]  # k = 35 (the grid of 28)
    flags += ["--distill_halving_steps", "2"]
    whole = distill(teacher, tmp_path / "whole", "--max_train_steps", "6", *flags)
    part = tmp_path / "part"
    distill(teacher, part, "--max_train_steps", "3", *flags)
    distill(teacher, part, "--max_train_steps", "6", "--resume_from_checkpoint", "latest", *flags)
    changes = json.loads((part / "training_config.json").read_text())["run"]["resumed_changes"]
    assert changes == [
        "max_train_steps: 3 in the checkpoint, 6 now: the LR schedule is rebuilt and continues from the resumed step"
    ]
    expected = load_file(whole / "unet" / "diffusion_pytorch_model.safetensors")
    actual = load_file(part / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(actual[name], expected[name]) for name in expected)
    card = " ".join((whole / "README.md").read_text().split())
    assert "grid of 28 timesteps, 4 DDIM steps of the teacher giving each target; ECT's curriculum: the links " in card
    assert "then halved every 2 steps down to one interval)" in card and "arxiv.org/abs/2406.14548" in card


def test_what_cannot_be_distilled_is_refused_before_any_work(teacher, tmp_path):
    (tmp_path / "not_a_pipeline" / "unet").mkdir(parents=True)
    (tmp_path / "not_a_pipeline" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    values = {**TEACHER, "distill_teacher": str(tmp_path / "not_a_pipeline"), "output_dir": str(tmp_path / "a")}
    with pytest.raises(PipelineError, match="distill_teacher: .* is not a DDPMPipeline .*'StableDiffusionPipeline'"):
        train(TrainingConfig(**values))
    with pytest.raises(PipelineError, match="grid_inference_steps: 60 steps, but the consistency sampler .*at most"):
        distill(teacher, tmp_path / "b", steps=60)
    with pytest.raises(PipelineError, match="distill_teacher: its images are 16 px, the data's resolution is 32 px"):
        distill(teacher, tmp_path / "c", "--resolution", "32")
    assert not [path for path in tmp_path.iterdir() if path.name in ("a", "b", "c")]


def test_a_student_never_writes_into_its_teachers_folder(teacher, tmp_path):
    """Probe: --output_dir T with T the teacher (no checkpoints left) used to replace the teacher's UNet and record."""
    import shutil

    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy, ignore=shutil.ignore_patterns("checkpoints"))
    before = {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()}
    for output_dir in (copy, copy / "student"):
        with pytest.raises(PipelineError, match="output_dir: .* would write into the teacher's folder"):
            distill(copy, output_dir)
    assert {path: path.read_bytes() for path in copy.rglob("*") if path.is_file()} == before


def test_a_teacher_without_its_record_gets_its_own_schedule_and_a_record_that_disagrees_is_refused(teacher, tmp_path):
    """Probe: a teacher without training_config.json used to get the quickstart's schedule, not its scheduler's."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(teacher, bare, ignore=shutil.ignore_patterns("checkpoints", "training_config.json"))
    path = bare / "scheduler" / "scheduler_config.json"
    path.write_text(
        json.dumps({**json.loads(path.read_text()), "num_train_timesteps": 500, "beta_schedule": "linear"})
    )
    config = distill_config(str(bare), str(tmp_path / "s"), 2, ["--logger", "none"])
    assert (config.ddpm_num_steps, config.ddpm_beta_schedule) == (500, "linear")
    assert config.prediction_type == "epsilon"  # the teacher's, from its scheduler
    assert (config.max_train_steps, config.distill_reparam_steps) == (400, 0)
    v_student = ["--prediction_type", "v_prediction"]  # another prediction type: a quarter of the budget relearns it
    assert distill_config(str(bare), str(tmp_path / "s"), 2, v_student).distill_reparam_steps == 100
    flags = ["--logger", "none", "--max_train_steps", "8", *v_student]  # a budget of the user's: a quarter of it
    assert distill_config(str(bare), str(tmp_path / "s"), 2, flags).distill_reparam_steps == 2
    assert (
        distill_config(
            str(bare), str(tmp_path / "s"), 2, [*flags, "--distill_reparam_steps", "3"]
        ).distill_reparam_steps
        == 3
    )

    lying = tmp_path / "lying"
    shutil.copytree(teacher, lying, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copy(path, lying / "scheduler" / "scheduler_config.json")  # the record still says T = 1000, cosine
    with pytest.raises(PipelineError, match="distill_teacher: its scheduler_config.json says ddpm_num_steps 500"):
        distill(lying, tmp_path / "t")
    assert not (tmp_path / "t").exists()
