"""Distil a trained DDPMPipeline into a few-step student that stock diffusers samples.

    python -m pipeline.distill --teacher ddpm-quickstart --output_dir ddpm-quickstart-lcm          # 4 steps
    python -m pipeline.distill --teacher user/some-ddpm --output_dir student --steps 2 --train_data_dir my_photos

The student is trained by the training run itself (pipeline/train.py: Accelerate, the decode-once data, exact
resume, SIGTERM, EMA, logs, grids, the staged export and the card), with the teacher's own recipe (its
training_config.json: data, preprocessing, UNet, noise schedule) and `distill_teacher` set: the UNet starts from
the teacher's EMA weights and learns a consistency function on LCMScheduler's grid (pipeline.diffusion.
consistency_loss): for 4 steps or more from the training images (consistency tuning), for fewer along the teacher's
sampling ODE (consistency distillation). It is exported as a DDPMPipeline whose scheduler is an LCMScheduler:

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
    # A student for 4 steps or more is tuned by consistency training from the teacher's weights (ECT, Geng et al.
    # 2024): the target is the student's own value on the image's own noise one link nearer the data, not the teacher's
    # DDIM step, so it is not bound to the teacher's ODE, which its stochastic sampler beats by 1.3-1.7x (the main
    # job's teacher: DPM-Solver++ 20 69.1 / 11.2, SDE-DPM-Solver++ 20 52.0 / 8.5). On ECT's curriculum (links first to
    # the data, halved every 40 steps) with the squared error at lr 4e-4 it scored 28.5-30.9 / 5.21-6.27 at 4 steps
    # from the main job's teacher at three seeds, against 40.0-41.1 / 7.15-7.36 for consistency distillation (three
    # seeds), and 24.9-27.7 / 4.07-5.01 at 8 (38.0-39.2 / 6.16-6.69): better than the teacher's own 20 steps; without
    # the curriculum 30.4-33.8 / 6.11-6.58. From the better teacher (24.3 / 3.95 at 20 steps) 16.0-21.4 / 2.75-3.69 at
    # 4 steps at three seeds (with the power EMA below) against 21.4-22.3 / 3.70-4.04. It needs no teacher evaluations
    # (122-129 s against 163-171 s of training). At 2 and 1 steps it is a trade or a loss (STEP_RECIPES).
    # bench/README.md, 2026-12-07.
    "distill_target": "data",
    "distill_halving_steps": 40,
    # LCMScheduler's grid is t_n = n k - 1 (k = T // N): every sample starts at its top, N k - 1. With LCM's N = 50
    # that is T - 1, where the cosine schedule's capped last beta leaves alpha_bar = 2.4e-9: an epsilon student's x0
    # there is its noise error times 20,000, clipped to [-1, 1] (its 1-step samples were speckled silhouettes). N = 49
    # and 28 end at 979 (alpha_bar 9.7e-4: x 32; Stable Diffusion's t = 999, for which LCM was built: x 15). In bf16
    # N = 49 beat 50 at 2 and 1 steps from both teachers at both seeds on both judges (the better teacher's 1 step
    # 54.4-54.8 / 14.0-14.1 against 85.0-89.7 / 17.9-18.4) and at 4 steps; N = 48 (959: x 16) lost to 49 in every
    # cell. N = 28 (k = 35: fewer, longer links carry the data's boundary to the top; measured with the teacher's
    # targets) beat 49 at 4 steps from the better teacher on both judges at three seeds (21.4-22.3 / 3.70-4.04 against
    # 23.5-23.8 / 4.34-4.37), tied it from the main job's at three (40.0-41.2 / 7.15-7.36 against 39.8-41.6 /
    # 7.2-7.4), won at 8 steps from both (the main job's 38.0-39.2 / 6.16-6.69 against 39.9-40.6 / 6.8-7.1), and lost
    # at 2 and 1, which --steps 2 and 1 train for; N = 35 tied 49 (the main job's teacher, two seeds). A gentler
    # schedule (linear, T = 300) only loses its top interval. bench/README.md, 2026-12-07.
    "distill_grid_steps": 28,
    # The student predicts what its teacher predicts (the teacher's record or scheduler says), with min-SNR-5 weights
    # (uniform ones lost in every cell, 101.2 / 18.7 at 4 steps on the grid of 48). With its x0 clipped and the
    # teacher's, an epsilon student of the main job's teacher scored FD-cls / FD-res 45.1-48.3 / 8.4-8.7 at 4 steps
    # (three seeds, grid 50) against a v student's (uniform weights, a re-parameterisation phase) 44.8-66.4 /
    # 10.4-14.7; on ECT's curriculum at lr 4e-4 the v student still lost at every step count to the grid of 49. The
    # rate and distance are those the consistency-tuning rows ran with (the --steps 2 recipe's); with the teacher's
    # targets lr 2e-4 and pseudo-Huber had won at 4 steps. bench/README.md, 2026-12-06 and 2026-12-07.
    "snr_gamma": 5.0,
    "learning_rate": 4e-4,
    "loss_type": "l2",
    "lr_scheduler": "constant_with_warmup",
    "lr_warmup_steps": 20,
    # The exported EMA makes a tuned student (its last weights scored 30.7 / 5.78 at 4 steps from the better teacher,
    # its EMA 15.7 / 2.77), so it averages the same share of any budget: EDM2's power EMA (with power 1 the warmup's
    # decay is (n - 1) / (n + 3) at step n, weights growing as n^3), which at the main job's 400 steps is the 0.99
    # warmup used before (0.990 against 0.989 at the end; measured equal, 28.7 / 5.22 against 28.5 / 5.21) and which
    # from the better teacher (800 steps) averaged twice as long: at three seeds it tied at two and won at the worst
    # (21.4 / 3.69 against 23.5 / 4.37 at 4 steps: 16.0-21.4 / 2.75-3.69 against 15.7-23.5 / 2.77-4.37); with the
    # teacher's targets it was a little better at 2 steps (the --steps 2 default 31.0-32.1 / 6.79-7.12 at three seeds
    # against 32.4-32.9 / 6.97-7.22 at two) and tied at 1 (the --steps 1 default 52.1-62.8 / 12.7-15.3 against
    # 53.7-60.9 / 13.0-14.8). Twice as long again (n^1) lost at 400 steps (31.7 / 5.35). bench/README.md, 2026-12-07.
    "ema_power": 1.0,
    "ema_inv_gamma": 4.0,
    "ema_max_decay": 0.9999,
    "grid_sampler": "lcm",
    "fid_sampler": "lcm",
    "save_model_steps": 0,
    "hub_model_id": None,
    "push_to_hub": False,
    "resume_from_checkpoint": None,
    "overwrite_output_dir": False,
}


# What a student of at most N sampler steps trains with on top of RECIPE: each entry whose N is at least the steps,
# the smaller N last (step_recipe).
STEP_RECIPES = {
    # A student distilled for at most 3 steps (--steps 2 or 1) learns the teacher's ODE (consistency distillation, one
    # DDIM step of the teacher per link): consistency tuning (RECIPE) from the main job's teacher traded FD-cls for
    # FD-res at 2 steps, or lost (43.9-49.8 / 10.39-11.68 at three seeds against 49.6-52.5 / 10.0-10.5), and lost at
    # 1 on FD-res (77.4-83.3 / 18.6-20.0 against 73.1-76.8 / 15.9-16.6). With the teacher's targets, the squared error
    # at lr 4e-4 beat pseudo-Huber at 2e-4 at 1 step on both judges and at 2 on FD-res from both teachers (on the grid
    # of 28 the main job's 49.6-52.5 / 10.0-10.5 against 54.1-58.5 / 11.9-12.5, the better one's 32.4-32.9 /
    # 6.97-7.22 against 36.6-36.7 / 8.57-8.73) and lost at 4; the grid of 28 beat 49 at 2 steps on FD-res at every seed
    # from both teachers (10.0-10.5 against 10.8-11.4; 6.97-7.22 against 7.67-7.68), FD-cls a tie. bench/README.md,
    # 2026-12-06 and 2026-12-07.
    3: {"distill_target": "teacher", "distill_halving_steps": 0},
    # A 1-step sample is the student at the grid's top alone: min-SNR 1 instead of 5 lets the consistency error below
    # SNR 1 (t < ~500 of the cosine schedule) weigh less. From the main job's teacher it won at 1 step on both judges
    # at three seeds (73.1-76.8 / 15.9-16.6 against 74.6-81.5 / 17.4-17.7; FD-cls a tie at one) and lost at 2 and 4 (2
    # steps 57.2-57.9 / 11.5-11.6 against 50.4-55.4 / 10.8-11.4), so only `--steps 1` trains with it; from the
    # 1,600-step teacher it is a trade (53.7-60.9 / 13.0-14.8 against 54.4-54.8 / 14.0-14.1), where min-SNR 2 wins
    # FD-res at three seeds (13.1-13.5, FD-cls a tie): the flag for a teacher trained longer (from the main job's, 2
    # ties 5). Min-SNR 0.25 and 20 lost to 1. bench/README.md, 2026-12-06. It stays on the grid of 49, where min-SNR 1
    # was measured (the grid of 28 tied 49 at 1 step with min-SNR 5).
    1: {"snr_gamma": 1.0, "distill_grid_steps": 49},
}
# The curriculum that goes with each target when --distill_target alone is given: ECT's for the images (RECIPE), one
# interval a link for the teacher's DDIM step (a single step across ECT's first links of 32 intervals is too coarse)
CURRICULUM = {"data": RECIPE["distill_halving_steps"], "teacher": STEP_RECIPES[3]["distill_halving_steps"]}
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


def step_recipe(steps: int) -> dict:
    """The STEP_RECIPES entries that apply to a student of `steps` sampler steps, merged (the smaller N wins)."""
    return {
        key: value
        for most in sorted(STEP_RECIPES, reverse=True)
        if steps <= most
        for key, value in STEP_RECIPES[most].items()
    }


def recipe(folder: Path, output_dir: str, steps: int) -> tuple[list[str], dict]:
    """The preset flags (the teacher's training record, when it has one) and the values this recipe sets over them,
    for pipeline.commands.distill_config, which puts the user's flags on top."""
    values = {**RECIPE, **step_recipe(steps), "distill_teacher": str(folder)}
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
