"""Few-step students: the quickstart teacher distilled by `python -m pipeline.distill`, scored like the quality bench.

    python bench/bench_distill.py                                 # the teacher row, every student, every cell
    python bench/bench_distill.py --students cd-50 ct-50 --cells lcm-4 lcm-2
    python bench/bench_distill.py --markdown                      # the tables of bench/README.md
    python bench/bench_distill.py --teacher_dir ddpm-quickstart --students v eps-minsnr   # the main job's output
    python bench/bench_distill.py --teacher_dir ddpm-quickstart --students v eps-minsnr --one_step v eps-minsnr

The teacher is the quickstart recipe as bench/bench_quality.py trains it (row `--teacher_row`, on Fashion-MNIST's
60,000 training images, trained there if missing), or a trained folder (`--teacher_dir`: the main job's own output,
whose students learn from its own data, the embedded subset). Each student is `python -m pipeline.distill` of it in
its own process, on the teacher's training images, with the distillation budget (by default half the teacher's
training images) and one recipe change against the default. Every model gets a cell per sampler and step count,
with the quality bench's two judges (FD-cls and FD-res against the 10,000 test images, 1,000 samples, seed 0; the
floor is printed), its model evaluations per image and the distillation's cost against the teacher's training.
A grid side by side (teacher at 20 steps, student at 4, 2 and 1) goes to docs/distill-samples-<teacher>.png.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import bench_quality as quality
import common  # noqa: F401  (the repository on the import path)
import numpy as np
import torch
from common import REPO, RESULTS, machine

from pipeline.diffusion import predicted_x0_and_noise
from pipeline.distill import RECIPE
from pipeline.model import make_sampler
from pipeline.sample import image_generators, load_pipeline


# The recipes in full, so that a row means the same whatever the defaults are
# (--loss_type l2: the distance that every row below but the pseudo-Huber ones ran with, the default for 4 steps until
# the end of 2026-12-06; --distill_grid_steps 50: the grid of every row that does not name another, the default until
# 2026-12-06, when the grid of 49 replaced it; the teacher's targets one interval a link and the EMA warmup of power
# 3/4 up to 0.99: every row that does not name others, the defaults until the consistency tuning and the EMA of
# 2026-12-07)
BASE = [
    *"--loss_type l2 --distill_grid_steps 50 --distill_target teacher --distill_halving_steps 0".split(),
    *"--ema_power 0.75 --ema_inv_gamma 1 --ema_max_decay 0.99".split(),
]
V_STUDENT = ["--prediction_type", "v_prediction", "--snr_gamma", "none", "--learning_rate", "1e-4", *BASE]
EPS_STUDENT = "--prediction_type epsilon --snr_gamma 5 --learning_rate 1e-4 --distill_reparam_steps 0".split() + BASE
EPS_COSINE = [*EPS_STUDENT, *"--lr_scheduler cosine_with_min_lr --min_learning_rate 1e-6".split()]
HUBER_BF16 = "--learning_rate 2e-4 --loss_type pseudo_huber --mixed_precision bf16".split()
X0_STUDENT = ["--prediction_type", "sample", "--snr_gamma", "none", "--mixed_precision", "bf16", *BASE]
ECT_SUB5 = "--distill_halving_steps 40 --distill_teacher_substeps 5".split()  # ECT's curriculum, 5 teacher sub-steps


def seeded(name: str, flags: list[str], seeds=(1,)) -> dict:
    """A row at training seed 0 and the same row at each of `seeds` (name-seedN, --seed N last)."""
    return {name: flags, **{f"{name}-seed{seed}": [*flags, "--seed", str(seed)] for seed in seeds}}


# student name: flags of `python -m pipeline.distill` on top of its defaults (the rows before 2026-12-06 gave only what
# differed from the defaults of their day: their flags as run are in each results file's students_flags)
STUDENTS = {
    # rounds before 2026-12-04 (an epsilon student; the teacher's x0 not clipped; the student's x0 not clipped as
    # LCMScheduler clips it): the min-SNR weights tamed the epsilon student's amplified x0 errors
    "cd-50": ["--prediction_type", "epsilon", "--distill_reparam_steps", "0", "--learning_rate", "1e-4"],
    "cd-50-minsnr": [
        "--prediction_type",
        "epsilon",
        "--distill_reparam_steps",
        "0",
        "--snr_gamma",
        "5",
        "--learning_rate",
        "1e-4",
    ],  # fmt: skip
    "cd-50-minsnr-lr1e-5": ["--prediction_type", "epsilon", "--distill_reparam_steps", "0", "--snr_gamma", "5"],
    # 2026-12-04 to 2026-12-06 the default: a v student, a quarter of the budget re-parameterising it, uniform weights
    "v": [*V_STUDENT, "--learning_rate", "1e-5"],
    "v-lr1e-4": V_STUDENT,
    **{f"v-lr1e-4-seed{seed}": [*V_STUDENT, "--seed", str(seed)] for seed in (1, 2)},
    "v-lr1e-3": [*V_STUDENT, "--learning_rate", "1e-3"],
    "v-noreparam": [*V_STUDENT, "--distill_reparam_steps", "0"],
    "v-huber": [*V_STUDENT, "--loss_type", "pseudo_huber"],
    "ct-v": [*V_STUDENT, "--distill_target", "data"],
    # 2026-12-06 the default: the teacher's prediction type (epsilon here), min-SNR 5, lr 1e-4, no phase
    "eps-minsnr": EPS_STUDENT,
    **{f"eps-minsnr-seed{seed}": [*EPS_STUDENT, "--seed", str(seed)] for seed in (1, 2)},
    # the grid: fewer, longer intervals (k = 50, 100 timesteps) carry the data's boundary to t = T - 1 in fewer links,
    # the teacher's one DDIM step across each being coarser, or split into sub-steps; and iCT's pseudo-Huber distance
    "eps-grid20": [*EPS_STUDENT, "--distill_grid_steps", "20"],
    "eps-grid10": [*EPS_STUDENT, "--distill_grid_steps", "10"],
    "eps-grid10-sub5": [*EPS_STUDENT, "--distill_grid_steps", "10", "--distill_teacher_substeps", "5"],
    "eps-huber": [*EPS_STUDENT, "--loss_type", "pseudo_huber"],
    # the learning rate: held higher or lower, or decayed over the budget (cosine to a floor, as the teacher's);
    # eps-lr2e-4 is the default since the end of 2026-12-06
    "eps-lr2e-4": [*EPS_STUDENT, "--learning_rate", "2e-4"],
    "eps-lr2e-4-seed1": [*EPS_STUDENT, "--learning_rate", "2e-4", "--seed", "1"],
    "eps-lr5e-5": [*EPS_STUDENT, "--learning_rate", "5e-5"],
    "eps-lr4e-4": [*EPS_STUDENT, "--learning_rate", "4e-4"],
    # after the precision fix (2026-12-06): the students above trained in fp32 whatever they record; these in bf16
    **seeded("eps-lr2e-4-bf16", [*EPS_STUDENT, "--learning_rate", "2e-4", "--mixed_precision", "bf16"], seeds=(1, 2)),
    "eps-minsnr-bf16": [*EPS_STUDENT, "--mixed_precision", "bf16"],
    # a higher rate for 2 and 1 steps (4e-4 won there at seed 0 in fp32, from both teachers)
    **seeded("eps-lr4e-4-bf16", [*EPS_STUDENT, "--learning_rate", "4e-4", "--mixed_precision", "bf16"]),
    # iCT's pseudo-Huber distance per image on the default (its gradient is the same size for every image)
    **seeded("eps-lr2e-4-huber-bf16", [*EPS_STUDENT, *HUBER_BF16], seeds=(1, 2)),
    # a student predicting x0 (prediction_type sample): with LCMScheduler's c_skip / c_out this is the consistency
    # model's own parameterisation, whose output at t = T - 1 is the image itself rather than a noise error amplified
    # 20,000 times; the re-parameterisation phase first (a quarter of the budget), uniform weights
    "x0-lr1e-4-bf16": [*X0_STUDENT, "--learning_rate", "1e-4"],
    "x0-lr2e-4-bf16": [*X0_STUDENT, "--learning_rate", "2e-4"],
    # a finer consistency grid (k = 10 timesteps): grids of 20 and 10 lost to 50
    "eps-lr2e-4-grid100-bf16": [
        *EPS_STUDENT,
        *"--learning_rate 2e-4 --distill_grid_steps 100 --mixed_precision bf16".split(),
    ],
    "eps-cosine": EPS_COSINE,
    "eps-cosine-seed1": [*EPS_COSINE, "--seed", "1"],
    "eps-lr2e-4-cosine": [*EPS_COSINE, "--learning_rate", "2e-4"],
    "v-grid10-sub5": [*V_STUDENT, "--distill_grid_steps", "10", "--distill_teacher_substeps", "5"],
    # ECT's curriculum (--distill_halving_steps 40: after the 100 re-parameterisation steps the links span 64, 32, ...
    # 2 intervals of the grid of 50, 40 steps each, then one for the last 60): consistency tuning from the data, and
    # the same curriculum on the teacher's targets, its 5 DDIM steps spanning each link (at first to the data)
    "v-ect-data": [*V_STUDENT, "--distill_target", "data", "--distill_halving_steps", "40"],
    "v-ect-sub5": [*V_STUDENT, *ECT_SUB5],
    "v-ect-sub5-seed1": [*V_STUDENT, *ECT_SUB5, "--seed", "1"],
    "eps-ect-sub5": [*EPS_STUDENT, *ECT_SUB5],
    # the curriculum's first stage throughout (links never halve within the budget): every grid point regresses onto
    # the teacher's 10-step DDIM from it to the data (Luhman & Luhman 2021's distillation, on LCMScheduler's grid)
    "v-direct-sub10": [*V_STUDENT, "--distill_halving_steps", "100000", "--distill_teacher_substeps", "10"],
    # the v student (which can express the first step) in bf16 at the few-step recipe's rate, alone and with ECT's
    # curriculum (its best 1-step FD-res from both teachers in fp32)
    "v-lr4e-4-bf16": [*V_STUDENT, "--learning_rate", "4e-4", "--mixed_precision", "bf16"],
    "v-ect-sub5-lr4e-4-bf16": [*V_STUDENT, *ECT_SUB5, "--learning_rate", "4e-4", "--mixed_precision", "bf16"],
    # the grid's top below T - 1: LCMScheduler's grid is t_n = n k - 1 with k = T // N, so N = 49 or 48 ends at 979 or
    # 959 (alpha_bar 9.7e-4, 3.9e-3: an epsilon student's x0 there is its noise error times 32 or 16; Stable
    # Diffusion's t = 999, for which LCM was built: x 15) instead of 999 (2.4e-9 under the cosine schedule's cap:
    # x 20,000); every sample then starts from pure noise at the top, as LCM's do
    **{
        name: flags
        for grid in (49, 48)
        for tag, weights in (("", []), ("-uniform", ["--snr_gamma", "none"]))
        for name, flags in seeded(
            f"eps-grid{grid}{tag}-lr4e-4-bf16",
            [
                *EPS_STUDENT,
                *f"--distill_grid_steps {grid} --learning_rate 4e-4 --mixed_precision bf16".split(),
                *weights,
            ],
            seeds=(1, 2),
        ).items()
    },
    # for 1 step: a higher rate still, and ECT's curriculum with 5 teacher sub-steps, on the grid of 49
    **seeded(
        "eps-grid49-lr8e-4-bf16",
        [*EPS_STUDENT, *"--distill_grid_steps 49 --learning_rate 8e-4 --mixed_precision bf16".split()],
    ),
    "eps-grid49-ect-sub5-lr4e-4-bf16": [
        *EPS_STUDENT,
        *ECT_SUB5,
        *"--distill_grid_steps 49 --learning_rate 4e-4 --mixed_precision bf16".split(),
    ],
    **seeded("eps-grid49-huber-bf16", [*EPS_STUDENT, *HUBER_BF16, "--distill_grid_steps", "49"], seeds=(1, 2)),
    **seeded("eps-grid48-huber-bf16", [*EPS_STUDENT, *HUBER_BF16, "--distill_grid_steps", "48"], seeds=(1, 2)),
    # the --steps 4 recipe on the --steps 2 recipe's grid of 28 (2026-12-07), and on a grid between, 35 (2026-12-07)
    **{
        name: flags
        for grid in (28, 35)
        for name, flags in seeded(
            f"eps-grid{grid}-huber-bf16", [*EPS_STUDENT, *HUBER_BF16, "--distill_grid_steps", str(grid)], seeds=(1, 2)
        ).items()
    },
    # coarser grids with the same top, 979 (N = 35 and 28: k = 28 and 35 timesteps): fewer links to carry the data's
    # boundary to the top within the budget, each teacher step longer (or split in two); eps-grid28-lr4e-4-bf16 is the
    # --steps 2 default since 2026-12-07
    **{
        name: flags
        for tag, extra in (
            ("grid35", "--distill_grid_steps 35"),
            ("grid28", "--distill_grid_steps 28"),
            ("grid28-sub2", "--distill_grid_steps 28 --distill_teacher_substeps 2"),
        )
        for name, flags in seeded(
            f"eps-{tag}-lr4e-4-bf16",
            [*EPS_STUDENT, *"--learning_rate 4e-4 --mixed_precision bf16".split(), *extra.split()],
            seeds=(1, 2),
        ).items()
    },  # fmt: skip
    # the top of the grid trained harder, for 1 and 2 steps (a 1-step sample is the student at the top alone, where
    # uniform draws put 1 image in 49): min-SNR 2, 1 or 0.25 instead of 5 (the consistency error below SNR 2, 1
    # or 0.25 weighs less), or EDM's lognormal density of noise levels moved up (half the images, or 70%; the others
    # stay uniform); and the other way, min-SNR 20 (nearer a uniform weighting of the epsilon error)
    **{
        name: flags
        for tag, extra in (
            ("gamma1", "--snr_gamma 1"),
            ("gamma2", "--snr_gamma 2"),
            ("gamma0.25", "--snr_gamma 0.25"),
            ("gamma20", "--snr_gamma 20"),
            (
                "top",
                "--timestep_density lognormal --timestep_lognormal_mean 1 --timestep_lognormal_std 2 "
                "--timestep_uniform_share 0.5",
            ),
            (
                "top2",
                "--timestep_density lognormal --timestep_lognormal_mean 2 --timestep_lognormal_std 1.5 "
                "--timestep_uniform_share 0.3",
            ),
        )
        for name, flags in seeded(
            f"eps-grid49-{tag}-lr4e-4-bf16",
            [
                *EPS_STUDENT,
                *"--distill_grid_steps 49 --learning_rate 4e-4 --mixed_precision bf16".split(),
                *extra.split(),
            ],
            seeds=(1, 2),
        ).items()
    },
}
# the --steps 1 recipe with one change (2026-12-07): twice and four times the images (the default, half the main job's
# teacher's, is 12,800: 400 steps of 32), what a recognisable 1-step sample costs; the grid of 48, whose top, 959,
# amplifies the noise error 16 times instead of 32; fp32 training (the teacher trained so; its x0 at the top is half as
# wild as the student's)
STUDENTS.update(
    {
        name: [*STUDENTS["eps-grid49-gamma1-lr4e-4-bf16"], *extra.split()]
        for name, extra in (
            ("eps-grid49-gamma1-lr4e-4-bf16-images25600", "--max_train_steps 800"),
            ("eps-grid49-gamma1-lr4e-4-bf16-images51200", "--max_train_steps 1600"),
            ("eps-grid48-gamma1-lr4e-4-bf16", "--distill_grid_steps 48"),
            ("eps-grid49-gamma1-lr4e-4-fp32", "--mixed_precision no"),
        )
    }
)
# consistency training on the --steps 2 recipe (2026-12-07): the target from the image's own noise one link nearer
# the data instead of the teacher's DDIM step, so not bound to the teacher's ODE; plain, and on ECT's curriculum
STUDENTS.update(
    {
        name: flags
        for recipe in ("eps-grid28-lr4e-4-bf16", "eps-grid28-huber-bf16")
        for tag, extra in (("data", []), ("ect-data", ["--distill_halving_steps", "40"]))
        for name, flags in seeded(
            f"{recipe}-{tag}", [*STUDENTS[recipe], "--distill_target", "data", *extra], seeds=(1, 2)
        ).items()
    }
)
# the curriculum's length: halving every 20 or 80 steps instead of 40 (one interval from step 100 or 400 of 400)
STUDENTS.update(
    {
        f"eps-grid28-lr4e-4-bf16-ect{halving}-data": [
            *STUDENTS["eps-grid28-lr4e-4-bf16-data"], "--distill_halving_steps", str(halving)
        ]
        for halving in (20, 80)
    }
)  # fmt: skip
# the EMA's length (2026-12-07): the exported EMA, not the last weights, makes the tuned student (the better teacher's
# last raw weights score 30.7 / 5.78 at 4 steps against its EMA's 15.7 / 2.77); the recipe's warmup (power 3/4, up to
# 0.99) averages about the last 90 steps of 400; with power 1 the decay is 1 - g / step (g: --ema_inv_gamma), EDM2's
# power EMA, weights growing as step ** (g - 1): g = 4 averages about the last 40% of the run, g = 2 the last 2/3
STUDENTS.update(
    {
        f"{row}-ema{g}{seed}": [
            *STUDENTS[f"{row}{seed}"], *f"--ema_power 1 --ema_inv_gamma {g} --ema_max_decay 0.9999".split()
        ]
        for row, gs in (
            ("eps-grid28-lr4e-4-bf16-ect-data", (2, 4)), ("eps-grid28-lr4e-4-bf16", (2, 4)),
            ("eps-grid49-gamma1-lr4e-4-bf16", (4,)),  # the --steps 1 default as it is now
        )
        for g in gs
        for seed in ("", "-seed1", "-seed2")
    }
)  # fmt: skip
# the tuning's learning rate (2026-12-07, with the power EMA: the rate it ran with is the --steps 2 recipe's); at 8e-4
# the iterate is noisier, so also with the longer power EMA (g = 2), for the 2-step cell's worst seed
STUDENTS.update(
    {
        f"eps-grid28-lr4e-4-bf16-ect-data-{ema}-lr{rate}{seed}": [
            *STUDENTS[f"eps-grid28-lr4e-4-bf16-ect-data-{ema}{seed}"], "--learning_rate", rate
        ]
        for ema, rates in (("ema4", ("2e-4", "8e-4", "1.6e-3")), ("ema2", ("8e-4",)))
        for rate in rates
        for seed in ("", "-seed1", "-seed2")
    }
)  # fmt: skip
# the --steps 1 recipe with its grid points drawn toward the top (2026-12-07): a 1-step sample is the student at the
# top alone, which uniform draws visit once in 49; EDM's log-normal density over the noise level centred at sigma e^1
# (t ~ 800) or e^2 (t ~ 913), a tenth of the draws uniform
STUDENTS.update(
    {
        f"eps-grid49-gamma1-lr4e-4-bf16-lognormal{mean}": [
            *STUDENTS["eps-grid49-gamma1-lr4e-4-bf16"], "--timestep_density", "lognormal",
            "--timestep_lognormal_mean", mean,
        ]
        for mean in ("1", "2")
    }
)  # fmt: skip
# the --steps 4 default's grid points drawn as ECT draws its noise levels (2026-12-07): log-normal, mean -1.1, std 2
# (its CIFAR-10 setting: most draws at low noise, where the links that carry the data up the grid start), a tenth
# uniform
STUDENTS["eps-grid28-lr4e-4-bf16-ect-data-ema4-lognormal"] = [
    *STUDENTS["eps-grid28-lr4e-4-bf16-ect-data-ema4"],
    *"--timestep_density lognormal --timestep_lognormal_mean -1.1 --timestep_lognormal_std 2".split(),
]
# the teacher's samplers: its shipped SDE sampler, and the deterministic ones that distillation follows (its ODE)
TEACHER_CELLS = ["sde-dpmsolver++-20-trailing", "sde-dpmsolver++-4-trailing", "dpmsolver++-20-trailing",
                 "dpmsolver++-50-trailing", "ddim-50-trailing", "lcm-4", "lcm-1"]  # fmt: skip
STUDENT_CELLS = ["lcm-8", "lcm-4", "lcm-2", "lcm-1"]
JUDGE_KEYS = ("fd_cls", "fd_res")


def student_dir(teacher_row: str, name: str):
    return quality.WORK / "distill" / f"{teacher_row}-{name}"


def distill(name: str, teacher, parquet, flags: list[str], key: str):
    """Distil (or resume) one student of `teacher` in its own process, on `parquet` (None: the teacher's own data);
    returns its output folder."""
    output_dir = student_dir(key, name)
    if (output_dir / "model_index.json").is_file():
        return output_dir
    command = [sys.executable, "-m", "pipeline.distill", "--teacher", str(teacher), "--output_dir", str(output_dir)]
    command += ["--dataset_name", str(parquet)] if parquet else []
    command += ["--logging_steps", "50", "--save_images_steps", "0"]
    command += ["--checkpointing_steps", "100", "--checkpoints_total_limit", "1", *flags]
    if (output_dir / "checkpoints").is_dir():
        command += ["--resume_from_checkpoint", "latest"]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"[distill/{name}] {' '.join(command)}", flush=True)
    with open(output_dir.parent / f"{name}.log", "a") as log:
        subprocess.run(command, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    return output_dir


TOP_NOISE = 64  # noise images of the top diagnostic: the 1-step cell's first ones


@torch.no_grad()
def top_x0(folder) -> dict:
    """Where a 1-step sample comes from: the model's x0 at its first timestep of 1 step (a student's grid top; the
    teacher's at the default grid's) before the clip, in fp32, for the 1-step cell's first TOP_NOISE noise images: its
    spread and the share of pixels beyond [-1, 1] that the clip saturates (an epsilon model's noise error there is
    amplified 1 / sqrt(alpha_bar) times: 32 at t = 979)."""
    pipeline = load_pipeline(str(folder))
    unet, config = pipeline.unet, pipeline.scheduler.config
    if "original_inference_steps" in config:
        sampler = make_sampler("lcm", dict(config))
        sampler.set_timesteps(1)
        timestep = int(sampler.timesteps[0])
    else:
        grid = RECIPE["distill_grid_steps"]
        timestep = config.num_train_timesteps // grid * grid - 1
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    noise = torch.stack([torch.randn(shape, generator=generator) for generator in image_generators(0, 0, TOP_NOISE)])
    timesteps = torch.full((TOP_NOISE,), timestep)
    output = unet(noise, timesteps).sample
    x0, _ = predicted_x0_and_noise(pipeline.scheduler.alphas_cumprod, config.prediction_type, output, noise, timesteps)
    beyond = (x0.abs() > 1).float().mean().item()
    return {"timestep": timestep, "std": round(x0.std().item(), 3), "beyond_clip": round(beyond, 3)}


def side_by_side(models: dict, path) -> None:
    """One image: a row of 8 samples per (model, cell), teacher at 20 steps, then the student at 4, 2 and 1 steps."""
    from PIL import Image

    from pipeline.sample import image_grid

    rows = [quality.sample_cell(folder, cell, 8)[0] for folder, cell in models.values()]
    grid = image_grid(np.concatenate(rows).astype(np.float32) / 255, columns=8)
    grid = grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def markdown(results: dict) -> str:
    def cell(row: dict, name: str) -> str:
        values = row["cells"].get(name)
        if values is None:
            return ""
        return " / ".join(f"{values[key]:.1f}" if key in values else "-" for key in JUDGE_KEYS)

    teacher, floor = results["teacher"], results["floor"]
    judges = " / ".join(key.replace("fd_", "FD-") for key in JUDGE_KEYS if key in floor)
    floors = " / ".join(f"{floor[key]:.2f}" for key in JUDGE_KEYS if key in floor)
    where = results["machine"]["description"]
    lines = [f"Judges: {judges}, floors {floors} ({results['num_samples']} samples); machine: {where}.\n"]
    lines += ["| model | images trained | train seconds | " + " | ".join(STUDENT_CELLS) + " | x0 at the top |"]
    lines += ["| --- | ---: | ---: | " + " | ".join("---:" for _ in STUDENT_CELLS) + " | ---: |"]
    for name, row in [("teacher", teacher), *results["students"].items()]:
        if "images" in row:
            cells = " | ".join(cell(row, name) for name in STUDENT_CELLS)
            top = row.get("top_x0")
            top = f"std {top['std']:.2f}, {top['beyond_clip']:.0%} clipped (t = {top['timestep']})" if top else ""
            lines += [f"| {name} | {row['images']:,} | {row['train_seconds']:.0f} | {cells} | {top} |"]
    lines += ["", f"| teacher cell | model evaluations | {judges} |", "| --- | ---: | ---: |"]
    for name, value in teacher["cells"].items():
        lines += [f"| {name} | {value['model_evaluations_per_image']:g} | {cell(teacher, name)} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher_row", default="quickstart", help="The bench_quality row of the teacher.")
    parser.add_argument("--teacher_dir", help="A trained output folder as the teacher (its students use its data).")
    parser.add_argument("--students", nargs="*", default=list(STUDENTS))
    parser.add_argument("--cells", nargs="*", default=STUDENT_CELLS)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--one_step", nargs="*", default=[], help="Students whose 1-step samples go side by side.")
    parser.add_argument("--one_step_tag", help="A name for that picture beside the teacher's (docs/...-<tag>.png).")
    parser.add_argument("--picture", help="The student the picture shows (default: the best at 4 steps on FD-cls).")
    args = parser.parse_args()
    if args.markdown:
        for path in sorted(RESULTS.glob("distill_*.json")):
            results = json.loads(path.read_text())
            if "fd_res" in results.get("floor", {}):  # the two-judge rounds
                print(f"\n**teacher `{path.stem[len('distill_') :]}`**\n\n" + markdown(results))
        return
    key = Path(args.teacher_dir).name + "-dir" if args.teacher_dir else args.teacher_row
    results_file = RESULTS / f"distill_{key}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"students": {}}
    data = quality.load_data()
    judges, accuracies = {}, {}
    for name in quality.JUDGES:
        network, accuracies[name] = quality.judge(data, name)
        reference_features = quality.features(network, data["test"])
        judges[name] = (network, quality.metrics.statistics(reference_features), reference_features)
    if args.teacher_dir:
        teacher, parquet = Path(args.teacher_dir).resolve(), None
        pool = quality.load_data(embedded=True)["train"]  # what such a teacher trains on: the embedded subset
    else:
        parquet = quality.training_parquet(data)
        teacher, pool = quality.train_row(args.teacher_row, "short", parquet), data["train"]
    real = pool[np.random.default_rng(0).choice(len(pool), args.num_samples, replace=False)]
    flags = {**results.get("students_flags", {}), **{name: STUDENTS[name] for name in args.students}}  # as run
    results.update(
        machine=machine(quality.SAMPLE_DEVICE), data=data["name"],
        judge_test_accuracy={k: round(v, 4) for k, v in accuracies.items()},
        num_samples=args.num_samples, floor=quality.score(real, judges), teacher=results.get("teacher", {}),
        teacher_source=str(teacher), teacher_recipe=json.loads((teacher / "training_config.json").read_text())[
            "config"], students_flags=flags,
    )  # fmt: skip
    print(f"floor {results['floor']}; teacher {teacher}", flush=True)

    def scored(name: str, folder, cells: list[str], row: dict) -> None:
        record = json.loads((folder / "training_config.json").read_text())["run"]
        row.update(images=record["global_step"] * record["images_per_step"], train_seconds=record["train_seconds"])
        if "top_x0" not in row:
            row["top_x0"] = top_x0(folder)
            print(f"[{name}] x0 at t = {row['top_x0']['timestep']}: std {row['top_x0']['std']:.2f}, "
                  f"{row['top_x0']['beyond_clip']:.0%} beyond the clip", flush=True)  # fmt: skip
        for cell in cells:
            if cell not in row.setdefault("cells", {}):
                images, timing = quality.sample_cell(folder, cell, args.num_samples)
                row["cells"][cell] = {**quality.score(images, judges), **timing}
                scores = " ".join(f"{k} {row['cells'][cell][k]:8.2f}" for k in JUDGE_KEYS)
                print(f"[{name}] {cell:<30} {scores}", flush=True)
                results_file.write_text(json.dumps(results, indent=2) + "\n")

    scored("teacher", teacher, TEACHER_CELLS, results["teacher"])
    for name in args.students:
        started, trained = time.time(), (student_dir(key, name) / "model_index.json").is_file()
        folder = distill(name, teacher, parquet, STUDENTS[name], key)
        if not trained:
            results["students"].setdefault(name, {})["wall_seconds"] = round(time.time() - started)
        scored(name, folder, args.cells, results["students"].setdefault(name, {}))
    trained = [name for name in results["students"] if (student_dir(key, name) / "model_index.json").is_file()]
    best = args.picture or min(
        trained, key=lambda name: results["students"][name]["cells"].get("lcm-4", {}).get("fd_cls", 1e9)
    )
    student = student_dir(key, best)
    side_by_side(
        {
            "teacher": (teacher, "sde-dpmsolver++-20-trailing"),
            **{f"{best} {n}": (student, f"lcm-{n}") for n in (4, 2, 1)},
        },
        REPO / "docs" / f"distill-samples-{key}.png",
    )
    if args.one_step:  # the same noise for each: where a student's first step lands
        rows = {name: (student_dir(key, name), "lcm-1") for name in args.one_step}
        tag = f"-{args.one_step_tag}" if args.one_step_tag else ""
        side_by_side(rows, REPO / "docs" / f"distill-one-step-{key}{tag}.png")
    results["date"] = time.strftime("%Y-%m-%d")
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
