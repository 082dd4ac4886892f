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
    # a v student whatever the teacher predicts: an epsilon student's x0 at t = T - 1 is its noise error times
    # 1 / sqrt(alpha_bar) (about 20,000 for the quickstart's cosine T = 1000), so its first step carries no image
    "prediction_type": "v_prediction",
    "snr_gamma": None,  # the consistency error weighted uniformly, as CM and LCM weight it
    # FD-cls / FD-res at 4 steps (bench/README.md, 2026-12-04): 44.0 / 10.5 at 1e-4 (65.1 / 14.2 at another training
    # seed), 113.8 / 22.7 at 1e-5 (the re-parameterisation does not take: the 1-step sample stays noise), 1e-3 breaks
    "learning_rate": 1e-4,
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


REPARAMETERISATION_SHARE = 4  # the first quarter of the budget: plain v diffusion from the teacher's weights


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
    values = {**RECIPE, "distill_teacher": str(folder), "output_dir": output_dir, "grid_inference_steps": steps}
    values["fid_inference_steps"] = steps
    if (folder / RECORD_NAME).is_file():
        saved = read_record(folder / RECORD_NAME)
        images = saved.run.global_step * saved.run.images_per_step  # half the teacher's training images
        values["max_train_steps"] = max(1, images // 2 // saved.config.global_batch_size(1))
        return ["--config", str(folder / RECORD_NAME)], values
    # a teacher without its training record (from the Hub): its UNet and scheduler configs say what it is
    schedule = {name: value for name, value in saved_schedule(folder).items() if name != "prediction_type"}
    values.update(model_config_name_or_path=str(folder / "unet"), max_train_steps=400, **schedule)
    return [], values


if __name__ == "__main__":
    from pipeline.commands import distill_main  # the command line lives in pipeline/commands.py

    distill_main()
