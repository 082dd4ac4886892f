"""Quality per compute: training recipes side by side at equal budget, each with its sampler table.

    python bench/bench_quality.py --budget short                 # every row, 51,200 training images each
    python bench/bench_quality.py --budget long --rows example report quickstart best
    python bench/bench_quality.py --rows quickstart --samplers ddpm-100 dpmsolver++-20
    python bench/bench_quality.py --list                         # the rows and samplers

Every row trains the same UNet (the quickstart's: 2.5M parameters, 28x28x1) with `train_ddpm.py`
in its own process, on the same data, for the same number of training images (the budget), in
bf16, with the same seed: only the recipe differs. Data: Fashion-MNIST's 60,000-image training
split when Debian's `dataset-fashion-mnist` is installed (`apt-get install dataset-fashion-mnist`),
else the embedded 6,000-image subset (the script says which).

The judge is the Frechet distance in the 128-dimensional hidden layer of a small classifier
trained here on the training split ("FD-cls": the FID recipe with a domain network instead of
Inception, whose weights cannot be downloaded on the development machines), against the 10,000-
image test split, which no row trains on, plus KID in the same space; computed through
`pipeline.evaluate` (uint8 images, float64 statistics, the same distance). The floor is the
score of real training images at the same sample count. `--inception_weights PATH` adds the same
cells in clean-fid's Inception space.

Each trained model gets a sampler table: every sampler and step count of `--samplers`, 1,000
samples each (`--num_samples`), seed 0, the same initial noise for every cell, with the model
evaluations per image. Results go to bench/results/quality.json after every cell; a second call
skips the cells already there and resumes a row whose training was cut short.
"""

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml
from common import REPO, flops_per_image, machine
from judge import Classifier, ResidualClassifier, accuracy, features, train_classifier

from pipeline import metrics
from pipeline.config import TIMESTEP_SPACINGS, TrainingConfig
from pipeline.device import sampling_dtype
from pipeline.sample import CountingUNet, SamplingRequest, load_pipeline, sample_unet, to_uint8


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
WORK = REPO / "bench" / "work" / "quality"
SAMPLE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RESULTS = REPO / "bench" / "results" / "quality.json"
BUDGETS = {"short": 51_200, "long": 204_800}  # training images: the quickstart's budget, and 4x
BATCH = 64

# What every row shares: the quickstart's UNet and batch, the data, the precision, the seed, the schedule of side work.
COMMON = {
    "resolution": 28,
    "image_channels": 1,
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D"] * 3,
    "up_block_types": ["UpBlock2D"] * 3,
    "mid_block_type": "UNetMidBlock2D",
    "add_attention": False,
    "norm_num_groups": 8,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "train_batch_size": BATCH,
    "gradient_accumulation_steps": 1,
    "mixed_precision": "auto",  # what a user runs: bf16 where the CPU computes it natively, else fp32
    "seed": 0,
    "random_flip": True,
    "logger": "tensorboard",
    "logging_steps": 50,
    "save_images_steps": 0,
    "checkpoints_total_limit": 1,
    "num_grid_images": 64,
    "grid_sampler": "ddpm",
    "grid_inference_steps": 100,
    "ddpm_timestep_spacing": "leading",  # what the model's scheduler config says; cells can override it
}

# The recipes. (a)-(d) are the reference points; the rest add one option at a time on top of the best
# of them (the quickstart's with T = 300, as measured: row "t300", the quickstart preset until 2026-12-02), then
# combine those that helped.
T300 = {
    "ddpm_num_steps": 300,
    "ddpm_beta_schedule": "squaredcos_cap_v2",
    "ddpm_clip_sample": True,
    "prediction_type": "epsilon",
    "loss_type": "l2",
    "optimizer": "adamw",
    "learning_rate": 2e-3,
    "lr_scheduler": "cosine_with_min_lr",
    "lr_warmup_steps": 50,
    "min_learning_rate": 1e-5,
    "adam_weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "use_ema": True,
    "ema_max_decay": 0.999,
    "dropout": 0.0,
}
VPRED_ZEROSNR = {
    **T300,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "ddpm_timestep_spacing": "trailing",
}
NOFLIP_B32 = {**T300, "ddpm_num_steps": 1000, "random_flip": False, "train_batch_size": 32, "max_train_steps": 800}
ROWS = {
    # (a) examples/unconditional_image_generation/train_unconditional.py with its defaults (batch and budget as every
    # row)
    "example": {
        "ddpm_num_steps": 1000,
        "ddpm_beta_schedule": "linear",
        "ddpm_clip_sample": True,
        "prediction_type": "epsilon",
        "loss_type": "l2",
        "optimizer": "adamw",
        "learning_rate": 1e-4,
        "lr_scheduler": "cosine",
        "lr_warmup_steps": 500,
        "adam_beta1": 0.95,
        "adam_beta2": 0.999,
        "adam_weight_decay": 1e-6,
        "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0,
        "use_ema": True,
        "ema_max_decay": 0.9999,
        "ema_inv_gamma": 1.0,
        "ema_power": 0.75,
        "dropout": 0.0,
    },
    # (b) the report's code as run: T = 300 linear, L1, Adam 1e-3, cosine to 1e-5, no EMA, no clipping of x0 or
    # gradients
    "report": {
        "ddpm_num_steps": 300,
        "ddpm_beta_schedule": "linear",
        "ddpm_clip_sample": False,
        "prediction_type": "epsilon",
        "loss_type": "l1",
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_scheduler": "cosine_with_min_lr",
        "lr_warmup_steps": 0,
        "min_learning_rate": 1e-5,
        "adam_weight_decay": 0.0,
        "max_grad_norm": 0.0,
        "use_ema": False,
        "dropout": 0.0,
    },
    # (c) configs/sfhq64_improved.yaml's training choices, as written for its 78,125-step run
    "improved": {
        "ddpm_num_steps": 1000,
        "ddpm_beta_schedule": "squaredcos_cap_v2",
        "ddpm_clip_sample": True,
        "prediction_type": "epsilon",
        "loss_type": "l2",
        "optimizer": "adamw",
        "learning_rate": 2e-4,
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": 1000,
        "adam_weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "use_ema": True,
        "ema_max_decay": 0.9999,
        "dropout": 0.1,
    },
    # (d) the quickstart preset
    "quickstart": {**T300, "ddpm_num_steps": 1000},  # T = 1000: 57 against 62 for T = 300 (row t300)
    "t300": T300,
    # (e) one option at a time on the quickstart's recipe
    "minsnr": {**T300, "snr_gamma": 5.0},
    "vpred": {**T300, "prediction_type": "v_prediction"},
    "vpred-minsnr": {**T300, "prediction_type": "v_prediction", "snr_gamma": 5.0},
    "vpred-zerosnr": VPRED_ZEROSNR,
    # (f) the quickstart's training with three more EMA lengths kept (the training itself is the same)
    "ema-lengths": {**T300, "ema_extra_decays": [0.99, 0.9995, 0.9999]},
    # (g) candidates for a quickstart that fits 10 minutes on a 2-core CPU without bf16 (fp32 there): UNets that spend
    # fewer FLOPs at 28x28, where the time goes, with v-prediction and zero terminal SNR (row vpred-zerosnr); a row
    # may set its own batch and steps (`max_train_steps`), so its budget in images is its own
    "small": {**T300, "block_out_channels": [16, 32, 64]},
    "small-vz": {**VPRED_ZEROSNR, "block_out_channels": [16, 32, 64]},
    "narrow-vz": {**VPRED_ZEROSNR, "block_out_channels": [16, 48, 96]},
    "c24-vz": {**VPRED_ZEROSNR, "block_out_channels": [24, 48, 96]},
    "b32-vz": {**VPRED_ZEROSNR, "train_batch_size": 32, "max_train_steps": 800},
    "small-vz-t1000": {**VPRED_ZEROSNR, "block_out_channels": [16, 32, 64], "ddpm_num_steps": 1000},
    "small-vz-cl": {**VPRED_ZEROSNR, "block_out_channels": [16, 32, 64], "norm_num_groups": 4},
    "c24": {**T300, "block_out_channels": [24, 48, 96]},
    "narrow": {**T300, "block_out_channels": [16, 48, 96]},
    "c24-nomid": {**T300, "block_out_channels": [24, 48, 96], "mid_block_type": None},
    "c32-48": {**T300, "block_out_channels": [32, 48, 96]},
    "small-vz-lr4e-3": {**VPRED_ZEROSNR, "block_out_channels": [16, 32, 64], "learning_rate": 4e-3},
    "w40-vz": {**VPRED_ZEROSNR, "block_out_channels": [16, 40, 80]},
    # (h) the data as it is: Fashion-MNIST is not mirror-symmetric (toes point left), so a flip teaches mirrored
    # garments; then, without the flip, which timesteps are trained (EDM's log-normal density), EDM2's learned
    # uncertainty weighting, v-prediction, and steps against batch at half the images (25,600)
    "noflip": {**T300, "ddpm_num_steps": 1000, "random_flip": False},
    "noflip-lognormal": {**T300, "ddpm_num_steps": 1000, "random_flip": False, "timestep_density": "lognormal"},
    "noflip-learned": {**T300, "ddpm_num_steps": 1000, "random_flip": False, "loss_weighting": "learned"},
    "noflip-vpred": {**T300, "ddpm_num_steps": 1000, "random_flip": False, "prediction_type": "v_prediction"},
    "noflip-vpred-lognormal": {
        **T300,
        "ddpm_num_steps": 1000,
        "random_flip": False,
        "prediction_type": "v_prediction",
        "timestep_density": "lognormal",
    },  # fmt: skip
    "noflip-b32": NOFLIP_B32,
    # at the quickstart's budget (800 x 32): fp32 training (the first rows were bf16, beside rows of an fp32 CPU),
    # EDM2's learned weighting, the learning rate retuned, v-prediction
    **{
        f"noflip-b32-{name}": {**NOFLIP_B32, **change}
        for name, change in {
            "learned": {"loss_weighting": "learned"},
            "fp32": {"mixed_precision": "no"},
            "lr1e-3": {"learning_rate": 1e-3},
            "lr4e-3": {"learning_rate": 4e-3},
            "vpred": {"prediction_type": "v_prediction"},
        }.items()
    },
    "noflip-s400": {**T300, "ddpm_num_steps": 1000, "random_flip": False, "max_train_steps": 400},
    # steps against batch at the full budget (51,200 images): 1,600 steps of 32 beside the noflip row's 800 of 64
    "noflip-b32-s1600": {**NOFLIP_B32, "max_train_steps": 1600},
    "noflip-b32-s1600-learned": {**NOFLIP_B32, "max_train_steps": 1600, "loss_weighting": "learned"},
    "noflip-b32-s1600-lr1e-3": {**NOFLIP_B32, "max_train_steps": 1600, "learning_rate": 1e-3},
    # and at the quickstart's budget (25,600 images): 1,600 steps of 16 beside its 800 of 32
    "noflip-b16-s1600": {**NOFLIP_B32, "train_batch_size": 16, "max_train_steps": 1600},
}

# Sampler cells: name-steps; "full" is the whole chain (T steps)
# Sampler cells: <sampler>-<steps>[-<timestep spacing>], "full" steps being the whole chain. Without a spacing a
# cell uses the model's saved one (every row pins "leading", diffusers' default, but vpred-zerosnr); the spacing
# changes sampling only, so "-trailing" cells score the same weights with every sampler starting at t = T - 1.
SAMPLERS = [
    "ddpm-100",
    "ddim-25",
    "dpmsolver++-20",
    "sde-dpmsolver++-20",
    "ddim-25-trailing",
    "dpmsolver++-20-trailing",
    "dpmsolver++-10-trailing",
    "sde-dpmsolver++-20-trailing",
    "sde-dpmsolver++-10-trailing",
    "unipc-10-trailing",
]
EXTRA_SAMPLERS = [
    "ddpm-full",
    "ddpm-50",
    "ddpm-20",
    "ddim-50",
    "dpmsolver++-10",
    "sde-dpmsolver++-10",
    "unipc-20",
    "unipc-10",
    "ddpm-100-trailing",
    "ddpm-20-trailing",
    "unipc-20-trailing",
]


# ---------------------------------------------------------------------------------------------
# Data and judge


def read_idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_data(embedded: bool = False) -> dict:
    """Training images (and labels) to train on, and test images (and labels) to score against; `embedded`: the
    repository's 6,000-image subset as the training images."""
    if not embedded and (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        train = read_idx(FASHION_MNIST / "train-images-idx3-ubyte.gz")[..., None]
        train_labels = read_idx(FASHION_MNIST / "train-labels-idx1-ubyte.gz")
        test = read_idx(FASHION_MNIST / "t10k-images-idx3-ubyte.gz")[..., None]
        test_labels = read_idx(FASHION_MNIST / "t10k-labels-idx1-ubyte.gz")
        return {
            "name": "Fashion-MNIST, full training split (60,000; Debian dataset-fashion-mnist)",
            "train": train,
            "train_labels": train_labels,
            "test": test,
            "test_labels": test_labels,
            "reference": "test split (10,000)",
        }
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(REPO / "data" / "fashion_mnist" / "train.parquet").to_pydict()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("L")) for image in table["image"]])[
        ..., None
    ]
    labels = np.asarray(table["label"])
    if embedded:
        return {"name": "Fashion-MNIST, embedded subset (6,000)", "train": pixels, "train_labels": labels}
    print(
        "dataset-fashion-mnist is not installed: training on the embedded 6,000-image subset and scoring against it "
        "(no held-out split; `apt-get install dataset-fashion-mnist` for the real test split)",
        flush=True,
    )
    return {
        "name": "Fashion-MNIST, embedded subset (6,000)",
        "train": pixels,
        "train_labels": labels,
        "test": pixels,
        "test_labels": labels,
        "reference": "the training subset itself (6,000)",
    }


def training_parquet(data: dict) -> Path:
    """The training images as a parquet of PNGs (what --dataset_name reads), written once."""
    path = WORK / ("train-60000.parquet" if len(data["train"]) == 60_000 else f"train-{len(data['train'])}.parquet")
    if path.is_file():
        return path
    import datasets
    from PIL import Image

    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0]).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    table = datasets.Dataset.from_dict(
        {"image": [png(image) for image in data["train"]], "label": data["train_labels"].tolist()},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    return path


JUDGES = {  # key in the results: (network, which training images it learns from, its committed weights)
    "cls": (Classifier, slice(None), "judge-fashion-mnist-60000.safetensors"),
    "res": (ResidualClassifier, slice(30_000, None), "judge-res-fashion-mnist-30000-60000.safetensors"),
}


def judge(data: dict, name: str) -> tuple[torch.nn.Module, float]:
    """Judge `name` of JUDGES and its test accuracy. On the full training split its weights are committed
    (bench/results/), since training it again on another CPU gives other weights, and so another feature space whose
    scores do not compare (2026-12-01: 90.7% test accuracy against 91.1% for the one of the earlier tables); on the
    embedded subset it is trained once (seeded) and kept in the work folder."""
    from safetensors.torch import load_file, save_file

    network_class, images, filename = JUDGES[name]
    full = len(data["train"]) == 60_000
    path = REPO / "bench" / "results" / filename if full else WORK / f"judge-{name}-{len(data['train'])}.safetensors"
    network = network_class()
    if path.is_file():
        network.load_state_dict(load_file(path))
    else:
        images = images if full else slice(None)
        network = train_classifier(data["train"][images], data["train_labels"][images], network=network)
        save_file(network.state_dict(), path)
    network.eval()
    return network, accuracy(network, data["test"], data["test_labels"])


# ---------------------------------------------------------------------------------------------
# Rows: train, then sample and score


def train_row(name: str, regime: str, source: str, train_seed: int = 0) -> Path:
    """Train (or resume) one row with train_ddpm.py in its own process, on `source` (a --dataset_name); returns its
    output folder. The budget is the regime's (its first word), unless the row sets its own steps."""
    folder = WORK / regime / (name + (f"-seed-{train_seed}" if train_seed else ""))
    output_dir = folder / "run"
    if (output_dir / "model_index.json").is_file():
        return output_dir
    values = {**COMMON, **ROWS[name], "seed": train_seed}
    steps = values.get("max_train_steps") or BUDGETS[regime.split("-")[0]] // values["train_batch_size"]
    values = {
        **values,
        "dataset_name": source,
        "max_train_steps": steps,
        "num_epochs": None,
        "checkpointing_steps": max(1, steps // 4),
        "output_dir": str(output_dir),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(values))
    command = [sys.executable, "train_ddpm.py", "--config", str(folder / "config.yaml")]
    if (output_dir / "checkpoints").is_dir():
        command += ["--resume_from_checkpoint", "latest"]
    print(f"[{regime}/{folder.name}] training {steps} steps of {values['train_batch_size']}: {' '.join(command)}",
          flush=True)  # fmt: skip
    with open(folder / "train.log", "a") as log:
        subprocess.run(command, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    return output_dir


def parse_sampler(cell: str, num_train_timesteps: int) -> tuple[str, int, Optional[str]]:
    """A cell "<sampler>-<steps>[-<timestep spacing>]": steps "full" is the whole chain; without a spacing the
    sampler spaces its steps as the model's saved scheduler config says."""
    spacing = None
    if cell.rsplit("-", 1)[1] in TIMESTEP_SPACINGS:
        cell, spacing = cell.rsplit("-", 1)
    name, steps = cell.rsplit("-", 1)
    return name, num_train_timesteps if steps == "full" else int(steps), spacing


def score(images: np.ndarray, judges: dict, inception=None) -> dict:
    """fd_<judge> and kid_<judge> for every judge (network, reference statistics, reference features) of `judges`,
    on the same images; fid with clean-fid's Inception when given."""
    result = {}
    for name, (network, reference, reference_features) in judges.items():
        sample_features = features(network, images)
        result[f"fd_{name}"] = round(metrics.frechet_distance(*metrics.statistics(sample_features), *reference), 3)
        result[f"kid_{name}"] = round(
            metrics.kernel_inception_distance(sample_features, reference_features, seed=0), 5
        )
    if inception is not None:
        extractor, reference_inception = inception
        inception_features = metrics.extract_features(images, extractor, "clean")
        result["fid"] = round(
            metrics.frechet_distance(
                *metrics.statistics(inception_features), *metrics.statistics(reference_inception)
            ),
            3,
        )
    return result


def sample_cell(
    output_dir: Path, cell: str, num_samples: int, ema_folder: str = "", seed: int = 0
) -> tuple[np.ndarray, dict]:
    """Samples of one sampler cell from a row's exported pipeline (or one of its other EMAs), on the GPU where there is
    one (the noise still drawn on the CPU), in bf16 autocast where the device computes bf16 natively (elsewhere
    autocast would emulate it, about 10x slower on a CPU), else in fp32."""
    pipeline = load_pipeline(str(output_dir / ema_folder) if ema_folder else str(output_dir), device=SAMPLE_DEVICE)
    sampler, steps, spacing = parse_sampler(cell, pipeline.scheduler.config.num_train_timesteps)
    unet = CountingUNet(pipeline.unet)
    request = SamplingRequest(sampler, steps, num_samples, batch_size=250, seed=seed, timestep_spacing=spacing)
    started = time.perf_counter()
    dtype = sampling_dtype("auto", SAMPLE_DEVICE)
    with torch.autocast(SAMPLE_DEVICE, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        images = to_uint8(sample_unet(unet, pipeline.scheduler.config, request))
    return images, {
        "model_evaluations_per_image": unet.evaluations / num_samples,
        "sample_seconds": round(time.perf_counter() - started, 1),
        "dtype": dtype,
    }


def stock_pipeline_cell(output_dir: Path, cell: str, num_samples: int) -> np.ndarray:
    """The same cell through an unmodified diffusers DDPMPipeline, its scheduler swapped the way a user does it
    (`<Scheduler>.from_config(pipeline.scheduler.config, ...)`: the exported config, the cell's algorithm and
    spacing, nothing else), with one generator per image as our sampler uses: what a user of the model gets."""
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler

    from pipeline.sample import image_generators

    pipeline = DDPMPipeline.from_pretrained(str(output_dir))
    sampler, steps, spacing = parse_sampler(cell, pipeline.scheduler.config.num_train_timesteps)
    scheduler_class, options = {
        "ddpm": (DDPMScheduler, {}),
        "ddim": (DDIMScheduler, {}),
        "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
        "sde-dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    }[sampler]
    if spacing:
        options["timestep_spacing"] = spacing
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config, **options)
    images = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, num_samples, 250):
            generators = image_generators(0, start, min(250, num_samples - start))
            images.append(
                pipeline(
                    batch_size=len(generators), generator=generators, num_inference_steps=steps, output_type="np"
                ).images
            )
    return to_uint8(np.concatenate(images))


# ---------------------------------------------------------------------------------------------
# Results


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}


def save_results(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def print_tables(results: dict) -> None:
    for budget, rows in results["rows"].items():
        cells = sorted(
            {cell for row in rows.values() for cell in row.get("samplers", {})}, key=lambda c: (c.split("-")[0], c)
        )
        print(
            f"\n{budget} ({BUDGETS[budget.split('-')[0]]:,} training images); FD-cls (floor "
            f"{results['floor']['fd_cls']:.2f})"
        )
        print(f"{'row':<16}{'train s':>8}" + "".join(f"{cell:>16}" for cell in cells))
        for name, row in rows.items():
            values = [row.get("samplers", {}).get(cell, {}).get("fd_cls") for cell in cells]
            print(
                f"{name:<16}{row.get('train_seconds', 0):>8.0f}"
                + "".join(f"{v:>16.2f}" if v is not None else f"{'':>16}" for v in values)
            )


def markdown(results: dict) -> str:
    """The tables of bench/README.md, per budget: FD-cls per recipe and sampler cell with each recipe's best, its gap
    to the best recipe and its cheapest cell within 10% of its best; then the stock-pipeline and other-EMA cells."""
    lines = []
    for budget, rows in results["rows"].items():
        cells = [
            cell for cell in SAMPLERS + EXTRA_SAMPLERS if any(cell in row.get("samplers", {}) for row in rows.values())
        ]
        scored = {
            name: {cell: row["samplers"][cell]["fd_cls"] for cell in cells if cell in row.get("samplers", {})}
            for name, row in rows.items()
        }
        scored = {name: scores for name, scores in scored.items() if scores}
        overall = min(min(scores.values()) for scores in scored.values())
        lines += [f"\n**{budget}: {BUDGETS[budget.split('-')[0]]:,} training images** (FD-cls, lower is better; floor "
                  f"{results['floor']['fd_cls']:.2f})\n"]  # fmt: skip
        lines += ["| recipe | " + " | ".join(cells) + " | best | x best recipe | cheapest within 10% of its best |"]
        lines += ["| --- | " + " | ".join("---:" for _ in cells) + " | --- | ---: | --- |"]
        for name, scores in scored.items():
            best = min(scores, key=scores.get)
            cost = {cell: rows[name]["samplers"][cell]["model_evaluations_per_image"] for cell in scores}
            cheapest = min((cell for cell in scores if scores[cell] <= 1.1 * scores[best]), key=cost.get)
            values = [f"{scores[cell]:.1f}" if cell in scores else "" for cell in cells]
            values += [f"{best} ({scores[best]:.1f})", f"{scores[best] / overall:.2f}"]
            lines += [f"| {name} | " + " | ".join(values) + f" | {cheapest} ({scores[cheapest]:.1f}) |"]
        extra = [
            (name, key, cell)
            for name, row in rows.items()
            for key, cell in row.get("samplers", {}).items()
            if key not in cells
        ]
        if extra:
            lines += ["", "| recipe | cell | FD-cls | our sampler, same cell |", "| --- | --- | ---: | ---: |"]
            for name, key, cell in extra:
                plain = key.replace(", stock DDPMPipeline)", ")").replace(" (stock DDPMPipeline)", "")
                ours = rows[name]["samplers"].get(plain, {}) if plain != key else {}
                same = f"{ours['fd_cls']:.2f}" if "fd_cls" in ours else ""
                lines += [f"| {name} | {key} | {cell['fd_cls']:.2f} | {same} |"]
    return "\n".join(lines)


def two_judges(results: dict, cell: str = "sde-dpmsolver++-20-trailing") -> str:
    """The table of the decisions: per regime and recipe, FD-cls and FD-res of `cell` for each training seed and
    sampling seed, and their means; a recipe's spread is the range of its scores."""
    lines = []
    for regime, rows in results["rows"].items():
        recipes: dict = {}
        for key, row in rows.items():
            name = key.split(" (")[0]
            for sampled, scores in row.get("samplers", {}).items():
                if sampled.split(" (")[0] == cell and "fd_res" in scores:
                    recipes.setdefault(name, []).append((key, sampled, scores, row))
        if not recipes:
            continue
        floor = results.get("floors", {}).get(regime, results["floor"])
        mirrored = floor.get("mirrored", {})
        mirrored = f"; half mirrored: {mirrored['fd_cls']:.1f}, {mirrored['fd_res']:.2f}" if mirrored else ""
        lines += [f"\n**{regime}** ({cell}, {results['num_samples']:,} samples; floors FD-cls {floor['fd_cls']:.1f}, "
                  f"FD-res {floor['fd_res']:.2f}{mirrored})\n"]  # fmt: skip
        lines += ["| recipe | training images | train s | FD-cls (each run) | FD-res (each run) | FD-cls mean | "
                  "FD-res mean |", "| --- | ---: | ---: | --- | --- | ---: | ---: |"]  # fmt: skip
        for name, cells in recipes.items():
            a, b = [c[2]["fd_cls"] for c in cells], [c[2]["fd_res"] for c in cells]
            images, seconds = cells[0][3].get("images", 0), cells[0][3].get("train_seconds", 0)
            lines += [f"| {name} | {images:,} | {seconds:.0f} | {', '.join(f'{v:.1f}' for v in a)} | "
                      f"{', '.join(f'{v:.1f}' for v in b)} | {np.mean(a):.1f} | {np.mean(b):.1f} |"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="short")
    parser.add_argument(
        "--data",
        choices=("full", "subset"),
        default="full",
        help="full: the 60,000-image training split; subset: the embedded 6,000 the quickstart trains on (8.5 "
        "epochs at the short budget, as the quickstart), results under '<budget>-subset'.",
    )
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="Row names (default: all).")
    parser.add_argument(
        "--samplers",
        nargs="*",
        default=SAMPLERS,
        help=f"Cells (default: {' '.join(SAMPLERS)}); also {' '.join(EXTRA_SAMPLERS)}.",
    )
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Sampling seed; other than 0 the cells are recorded as '<cell> (seed N)': the spread of a score "
        "over seeds is the bench's noise.",
    )
    parser.add_argument(
        "--train_seed",
        type=int,
        default=0,
        help="Training seed (data order, draws, initial weights); other than 0 the row is recorded as "
        "'<row> (train seed N)', trained in its own folder.",
    )
    parser.add_argument(
        "--stock_pipeline", nargs="*", default=[], help="Cells to also run through the stock DDPMPipeline."
    )
    parser.add_argument(
        "--other_emas", action="store_true", help="Also score each extra EMA of a row (with the first cell)."
    )
    parser.add_argument("--inception_weights", help="Also score with clean-fid's Inception (mode clean).")
    parser.add_argument("--list", action="store_true")
    parser.add_argument(
        "--markdown", action="store_true", help="Print the recorded results as Markdown tables; run nothing."
    )
    args = parser.parse_args()
    if args.markdown:
        print(markdown(load_results()))
        print(two_judges(load_results()))
        return
    if args.list:
        for name, recipe in ROWS.items():
            print(f"{name:<16}{json.dumps(recipe)}")
        print("samplers:", " ".join(SAMPLERS + EXTRA_SAMPLERS))
        return
    unknown = [name for name in args.rows if name not in ROWS]
    if unknown:
        sys.exit(f"error: rows: unknown {unknown}; see --list")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    WORK.mkdir(parents=True, exist_ok=True)

    data = load_data()
    judges, accuracies = {}, {}
    for name in JUDGES:
        network, accuracies[name] = judge(data, name)
        reference_features = features(network, data["test"])
        judges[name] = (network, metrics.statistics(reference_features), reference_features)
    regime = args.budget if args.data == "full" else f"{args.budget}-subset"
    if args.data == "full":
        source, pool = str(training_parquet(data)), data["train"]
    else:
        source, pool = "data/fashion_mnist", load_data(embedded=True)["train"]
    rng = np.random.default_rng(0)
    real = pool[rng.choice(len(pool), args.num_samples, replace=False)]
    inception = None
    if args.inception_weights:
        extractor = inception.build_inception("clean", inception.find_weights("clean", args.inception_weights))
        inception = (extractor, metrics.extract_features(data["test"], extractor, "clean"))
    results = load_results()
    floor = {**score(real, judges, inception), "what": f"{args.num_samples} real images of the training source"}
    mirrored = np.where(rng.random(len(real))[:, None, None, None] < 0.5, real[:, :, ::-1], real)
    floor["mirrored"] = {**score(mirrored, judges), "what": "the same images, a random half mirrored left-right"}
    results.update(
        {
            "data": data["name"],
            "reference": data["reference"],
            "judge": "FD-cls: Frechet distance in a Fashion-MNIST classifier's 128-d hidden layer (bench/judge.py, "
            "judge A); FD-res: the same in a residual network's 128-d average pool, trained on the second half "
            "of the split (judge B); KID in the same spaces",
            "judge_test_accuracy": round(accuracies["cls"], 4),
            "judge_res_test_accuracy": round(accuracies["res"], 4),
            "num_samples": args.num_samples,
            "common": COMMON,
            "budgets": BUDGETS,
            "recipes": ROWS,
        }
    )
    results.setdefault("floors", {})[regime] = floor
    # the regime's first machine (the GPU where one samples); a row trained on another one names its own
    results.setdefault("machines", {}).setdefault(regime, machine(SAMPLE_DEVICE))
    if args.data == "full":
        results["floor"] = floor
    save_results(results)
    print(
        f"data: {data['name']}; training on {source}; judges' test accuracy {accuracies}; floors FD-cls "
        f"{floor['fd_cls']:.2f}, FD-res {floor['fd_res']:.2f}; half mirrored FD-cls "
        f"{floor['mirrored']['fd_cls']:.2f}, FD-res {floor['mirrored']['fd_res']:.2f}",
        flush=True,
    )

    for name in args.rows:
        row_key = name + (f" (train seed {args.train_seed})" if args.train_seed else "")
        row = results["rows"].setdefault(regime, {}).setdefault(row_key, {"samplers": {}})
        wanted = [cell + (f" (seed {args.seed})" if args.seed else "") for cell in args.samplers]
        wanted += [f"{cell} (stock DDPMPipeline)" for cell in args.stock_pipeline]
        if all(key in row["samplers"] for key in wanted) and not args.other_emas:
            print(f"[{regime}/{row_key}] every cell asked for is recorded; not retrained", flush=True)
            continue  # a row recorded from weights that are gone is not retrained under its old scores
        output_dir = train_row(name, regime, source, args.train_seed)
        record = json.loads((output_dir / "training_config.json").read_text())["run"]
        recipe = {**COMMON, **ROWS[name], "output_dir": str(output_dir), "logger": "none"}
        recipe.pop("max_train_steps", None)
        row.update(
            train_seconds=record["train_seconds"],
            wall_seconds=record["wall_seconds"],
            images=record["global_step"] * record["images_per_step"],
            skipped_steps=record["skipped_steps"],
            unet_parameters=record["unet_parameters"],
            gflop_per_image=round(flops_per_image(TrainingConfig(**recipe)) / 1e9, 4),
        )
        row["train_tflop"] = round(row["gflop_per_image"] * row["images"] / 1e3, 1)
        trained_on = machine(SAMPLE_DEVICE)
        if trained_on["description"] != results["machines"][regime]["description"]:
            row.setdefault("machine", {**trained_on, "mixed_precision": record["mixed_precision"]})
        for cell in args.samplers:
            key = cell + (f" (seed {args.seed})" if args.seed else "")
            if key in row["samplers"]:
                continue
            images, timing = sample_cell(output_dir, cell, args.num_samples, seed=args.seed)
            row["samplers"][key] = {**score(images, judges, inception), **timing}
            scores = row["samplers"][key]
            print(
                f"[{regime}/{row_key}] {key:<16} FD-cls {scores['fd_cls']:8.2f}  FD-res {scores['fd_res']:8.2f}"
                f"  ({timing['model_evaluations_per_image']:g} evaluations/image, {timing['sample_seconds']} s)",
                flush=True,
            )
            save_results(results)
        for cell in args.stock_pipeline:
            key = f"{cell} (stock DDPMPipeline)"
            if key not in row["samplers"]:
                row["samplers"][key] = score(stock_pipeline_cell(output_dir, cell, args.num_samples), judges)
                print(f"[{regime}/{row_key}] {key:<36} FD-cls {row['samplers'][key]['fd_cls']:8.2f}", flush=True)
                save_results(results)
        if args.other_emas:
            for folder in sorted(output_dir.glob("ema-*")):
                key = f"{args.samplers[0]} ({folder.name})"
                if key not in row["samplers"]:
                    images, timing = sample_cell(output_dir, args.samplers[0], args.num_samples, folder.name)
                    row["samplers"][key] = {**score(images, judges, inception), **timing}
                    print(f"[{regime}/{row_key}] {key:<36} FD-cls {row['samplers'][key]['fd_cls']:8.2f}", flush=True)
                    save_results(results)
    results["date"] = time.strftime("%Y-%m-%d")
    save_results(results)
    print_tables(results)
    print(two_judges(results))


if __name__ == "__main__":
    main()
