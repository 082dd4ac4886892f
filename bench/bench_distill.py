"""Few-step students: the quickstart teacher distilled by `python -m pipeline.distill`, scored like the quality bench.

    python bench/bench_distill.py                                 # the teacher row, every student, every cell
    python bench/bench_distill.py --students cd-50 ct-50 --cells lcm-4 lcm-2
    python bench/bench_distill.py --markdown                      # the tables of bench/README.md

The teacher is the quickstart recipe as bench/bench_quality.py trains it (row `--teacher_row`, on Fashion-MNIST's
60,000 training images, trained there if missing). Each student is `python -m pipeline.distill` of it in its own
process, on the same training images, with the distillation budget (by default half the teacher's training
images) and one recipe change against the default. Every model gets a cell per sampler and step count, with the
quality bench's judge (FD-cls against the 10,000 test images, 1,000 samples, seed 0; the floor is printed), its
model evaluations per image and the distillation's cost in images and seconds against the teacher's training.
A grid side by side (teacher at 20 steps, student at 4, 2 and 1) goes to docs/distill-samples.png.
"""

import argparse
import json
import subprocess
import sys
import time

import bench_quality as quality
import common  # noqa: F401  (the repository on the import path)
import numpy as np
from common import REPO, RESULTS, machine


# student name: flags of `python -m pipeline.distill` on top of its defaults
STUDENTS = {
    # unweighted: an epsilon teacher's x0 errors at high noise swamp the loss
    "cd-50": ["--snr_gamma", "none", "--learning_rate", "1e-4"],
    "cd-50-minsnr": ["--snr_gamma", "5", "--learning_rate", "1e-4"],
    "cd-20-minsnr": ["--distill_grid_steps", "20", "--snr_gamma", "5", "--learning_rate", "1e-4"],
    "cd-50-minsnr-lr3e-4": ["--snr_gamma", "5", "--learning_rate", "3e-4"],
    "cd-50-minsnr-lr3e-5": ["--snr_gamma", "5", "--learning_rate", "3e-5"],
    "cd-50-minsnr-lr1e-5": ["--snr_gamma", "5", "--learning_rate", "1e-5"],  # the default recipe
    "cd-50-minsnr-lr1e-3": ["--snr_gamma", "5", "--learning_rate", "1e-3"],
    "ct-50-minsnr": ["--distill_target", "data", "--snr_gamma", "5"],
}
TEACHER_CELLS = ["sde-dpmsolver++-20-trailing", "sde-dpmsolver++-8-trailing", "sde-dpmsolver++-4-trailing",
                 "sde-dpmsolver++-2-trailing", "ddim-4-trailing", "lcm-8", "lcm-4", "lcm-2", "lcm-1"]  # fmt: skip
STUDENT_CELLS = ["lcm-8", "lcm-4", "lcm-2", "lcm-1"]


def student_dir(teacher_row: str, name: str):
    return quality.WORK / "distill" / f"{teacher_row}-{name}"


def distill(name: str, teacher, parquet, flags: list[str]):
    """Distil (or resume) one student of `teacher` (a bench_quality row's folder) in its own process; returns its
    output folder."""
    output_dir = student_dir(teacher.parent.name, name)
    if (output_dir / "model_index.json").is_file():
        return output_dir
    command = [sys.executable, "-m", "pipeline.distill", "--teacher", str(teacher), "--output_dir", str(output_dir)]
    command += ["--dataset_name", str(parquet), "--logging_steps", "50", "--save_images_steps", "0"]
    command += ["--checkpointing_steps", "100", "--checkpoints_total_limit", "1", *flags]
    if (output_dir / "checkpoints").is_dir():
        command += ["--resume_from_checkpoint", "latest"]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"[distill/{name}] {' '.join(command)}", flush=True)
    with open(output_dir.parent / f"{name}.log", "a") as log:
        subprocess.run(command, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    return output_dir


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
    teacher = results["teacher"]
    floor = results["floor"]["fd_cls"]
    where = results["machine"]["description"]
    lines = [f"Judge: FD-cls, floor {floor:.2f} ({results['num_samples']} samples); machine: {where}.\n"]
    lines += [
        "| model | images trained | train seconds | " + " | ".join(STUDENT_CELLS) + " | best 20-step teacher cell |"
    ]
    lines += ["| --- | ---: | ---: | " + " | ".join("---:" for _ in STUDENT_CELLS) + " | ---: |"]
    best = teacher["cells"].get("sde-dpmsolver++-20-trailing", {}).get("fd_cls")
    for name, row in [("teacher", teacher), *results["students"].items()]:
        cells = [f"{row['cells'][c]['fd_cls']:.1f}" if c in row["cells"] else "" for c in STUDENT_CELLS]
        lines += [
            f"| {name} | {row['images']:,} | {row['train_seconds']:.0f} | " + " | ".join(cells) + f" | {best:.1f} |"
        ]
    lines += ["", "| teacher cell | model evaluations | FD-cls |", "| --- | ---: | ---: |"]
    for cell, value in teacher["cells"].items():
        lines += [f"| {cell} | {value['model_evaluations_per_image']:g} | {value['fd_cls']:.1f} |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher_row", default="quickstart", help="The bench_quality row of the teacher.")
    parser.add_argument("--students", nargs="*", default=list(STUDENTS))
    parser.add_argument("--cells", nargs="*", default=STUDENT_CELLS)
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.markdown:
        for path in sorted(RESULTS.glob("distill_*.json")):
            print(f"\n**teacher row `{path.stem[len('distill_') :]}`**\n\n" + markdown(json.loads(path.read_text())))
        return
    results_file = RESULTS / f"distill_{args.teacher_row}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"students": {}}
    data = quality.load_data()
    network, accuracy = quality.judge(data)
    reference_features = quality.features(network, data["test"])
    reference = quality.ev.statistics(reference_features)
    real = data["train"][np.random.default_rng(0).choice(len(data["train"]), args.num_samples, replace=False)]
    parquet = quality.training_parquet(data)
    teacher = quality.train_row(args.teacher_row, "short", parquet)
    results.update(
        machine=machine(), data=data["name"], judge_test_accuracy=round(accuracy, 4), num_samples=args.num_samples,
        floor=quality.score(real, network, reference, reference_features), teacher_row=args.teacher_row,
        teacher_recipe=quality.ROWS[args.teacher_row], students_flags={name: STUDENTS[name] for name in args.students},
    )  # fmt: skip
    print(f"floor FD-cls {results['floor']['fd_cls']:.2f}; teacher {teacher}", flush=True)

    def scored(name: str, folder, cells: list[str], row: dict) -> None:
        record = json.loads((folder / "training_config.json").read_text())["run"]
        row.update(images=record["global_step"] * record["images_per_step"], train_seconds=record["train_seconds"])
        for cell in cells:
            if cell not in row.setdefault("cells", {}):
                images, timing = quality.sample_cell(folder, cell, args.num_samples)
                row["cells"][cell] = {**quality.score(images, network, reference, reference_features), **timing}
                print(f"[{name}] {cell:<30} FD-cls {row['cells'][cell]['fd_cls']:8.2f}", flush=True)
                results_file.write_text(json.dumps(results, indent=2) + "\n")

    scored("teacher", teacher, TEACHER_CELLS, results.setdefault("teacher", {}))
    for name in args.students:
        started, trained = time.time(), (student_dir(args.teacher_row, name) / "model_index.json").is_file()
        folder = distill(name, teacher, parquet, STUDENTS[name])
        if not trained:
            results["students"].setdefault(name, {})["wall_seconds"] = round(time.time() - started)
        scored(name, folder, args.cells, results["students"][name])
    best = min(args.students, key=lambda name: results["students"][name]["cells"].get("lcm-4", {}).get("fd_cls", 1e9))
    student = student_dir(args.teacher_row, best)
    side_by_side(
        {
            "teacher": (teacher, "sde-dpmsolver++-20-trailing"),
            **{f"{best} {n}": (student, f"lcm-{n}") for n in (4, 2, 1)},
        },
        REPO / "docs" / f"distill-samples-{args.teacher_row}.png",
    )
    results["date"] = time.strftime("%Y-%m-%d")
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
