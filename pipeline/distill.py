"""Distil a trained DDPMPipeline into a few-step student that stock diffusers samples.

    python -m pipeline.distill --teacher ddpm-quickstart --output_dir ddpm-quickstart-lcm          # 4 steps
    python -m pipeline.distill --teacher user/some-ddpm --output_dir student --steps 2 --train_data_dir my_photos

The student is trained by the training run itself (pipeline/train.py: Accelerate, the decode-once data, exact
resume, SIGTERM, EMA, logs, grids, the staged export and the card), with the teacher's own recipe (its
training_config.json: data, preprocessing, UNet, noise schedule) and `distill_teacher` set: the UNet starts from
the teacher's EMA weights and learns the consistency function of its sampling ODE on LCMScheduler's grid
(pipeline.diffusion.consistency_loss). It is exported as a DDPMPipeline whose scheduler is an LCMScheduler:

    DDPMPipeline.from_pretrained("ddpm-quickstart-lcm")(num_inference_steps=4)

(the pipeline's default of 1000 steps is refused by LCMScheduler with a message: pass num_inference_steps).
Any training flag replaces the recipe below or the teacher's (`--max_train_steps`, `--learning_rate`, ...).
"""

from pathlib import Path

from diffusers import DDPMPipeline

from .errors import PipelineError
from .model import saved_schedule
from .record import RECORD_NAME, read_record


# The distillation recipe on top of the teacher's, chosen with bench/bench_distill.py (bench/README.md)
RECIPE = {
    "distill_target": "teacher",
    "distill_grid_steps": 50,
    # The student predicts what its teacher predicts (the teacher's record or scheduler says), with min-SNR-5 weights.
    # Its x0 at t = T - 1, the first step of every LCM sample, is its noise error times 1 / sqrt(alpha_bar) (about
    # 20,000 for the quickstart's cosine T = 1000) and is clipped to [-1, 1] as LCMScheduler clips it. With that clip
    # and the teacher's, an epsilon student of the main job's teacher scored FD-cls / FD-res 45.1-48.3 / 8.4-8.7 at 4
    # steps (three seeds) against a v student's (uniform weights, a re-parameterisation phase) 44.8-66.4 / 10.4-14.7.
    # lr 2e-4 held: against 1e-4 better in every cell (8, 4, 2, 1 steps, both judges) at two seeds from two teachers
    # (the main job's: 42.1 / 7.8 and 44.1 / 8.1 at 4 steps against 45.1 / 8.4 and 48.3 / 8.7); decayed (cosine) it
    # was worse, and 4e-4 ties it at 4 steps (students that trained in fp32, before the precision fix); in bf16 since,
    # 2e-4 again beats 1e-4 in all 8 cells (main job's teacher, seed 0). bench/README.md, 2026-12-06.
    "snr_gamma": 5.0,
    "learning_rate": 2e-4,
    "loss_type": "pseudo_huber",  # iCT's distance (for 4 steps or more: FEW_STEP_RECIPE below)
    "lr_scheduler": "constant_with_warmup",
    "lr_warmup_steps": 20,
    "ema_max_decay": 0.99,
    "grid_sampler": "lcm",
    "fid_sampler": "lcm",
    "save_model_steps": 0,
    "hub_model_id": None,
    "push_to_hub": False,
    "resume_from_checkpoint": None,
    "overwrite_output_dir": False,
}


# A student distilled for fewer than FEW_STEPS steps (--steps 2 or 1) trains with the squared error at twice the rate.
# In bf16, two seeds from each teacher: pseudo-Huber beats the squared error at 8 and 4 steps from the 1,600-step
# teacher (4 steps 22.5 / 4.42 and 23.6 / 4.63 against 26.8 / 5.18 and 25.5 / 4.80) and ties at 4 from the main job's
# (42.3 / 8.13, 43.5 / 8.05 against 41.2 / 7.76, 44.4 / 8.09), but loses at 2 and 1 steps from both; there lr 4e-4
# beats 2e-4 at 1 step from both teachers on both judges at both seeds (the better teacher's 85.0-89.7 / 17.9-18.4
# against 97.6-99.2 / 20.9-21.0) and at 2 steps from the better one (36.0-37.4 / 8.7-9.3 against 40.5-41.7 /
# 10.6-10.9; from the main job's a tie on the means, 56.8 / 12.7 against 56.6 / 12.9). bench/README.md, 2026-12-06.
FEW_STEPS = 4
FEW_STEP_RECIPE = {"loss_type": "l2", "learning_rate": 4e-4}
REPARAMETERISATION_SHARE = 4  # a student of another prediction type: first a quarter of plain diffusion in its type


def teacher_folder(teacher: str) -> Path:
    """A local folder of the teacher: as given, or a Hub id fetched into the Hugging Face cache."""
    if Path(teacher).exists():
        return Path(teacher)
    try:
        return Path(DDPMPipeline.download(teacher))
    except (OSError, ValueError) as error:
        raise PipelineError(
            f"teacher: {teacher!r} is neither a folder nor a Hub model one can fetch ({error})"
        ) from None


def recipe(folder: Path, output_dir: str, steps: int) -> tuple[list[str], dict]:
    """The preset flags (the teacher's training record, when it has one) and the values this recipe sets over them,
    for pipeline.commands.distill_config, which puts the user's flags on top."""
    values = {**RECIPE, **(FEW_STEP_RECIPE if steps < FEW_STEPS else {}), "distill_teacher": str(folder)}
    values.update(output_dir=output_dir, grid_inference_steps=steps, fid_inference_steps=steps)
    if (folder / RECORD_NAME).is_file():
        saved = read_record(folder / RECORD_NAME)
        images = saved.run.global_step * saved.run.images_per_step  # half the teacher's training images
        values["max_train_steps"] = max(1, images // 2 // saved.config.global_batch_size(1))
        return ["--config", str(folder / RECORD_NAME)], values
    # a teacher without its training record (from the Hub): its UNet and scheduler configs say what it is
    values.update(model_config_name_or_path=str(folder / "unet"), max_train_steps=400, **saved_schedule(folder))
    return [], values


def reparameterisation_steps(folder: Path, prediction_type: str, budget: int) -> int:
    """The re-parameterisation phase a student gets unless a flag sets it: none when it predicts what its teacher
    predicts, else a quarter of the budget (the teacher's weights read as another prediction type must be retrained
    first: without the phase a v student of an epsilon teacher scored 152.8 / 30.8 at 4 steps, with it 44.0 / 10.5)."""
    if prediction_type == saved_schedule(folder)["prediction_type"]:
        return 0
    return budget // REPARAMETERISATION_SHARE


if __name__ == "__main__":
    from pipeline.commands import distill_main  # the command line lives in pipeline/commands.py

    distill_main()
