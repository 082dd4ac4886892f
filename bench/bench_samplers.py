"""Sampler speed and quality against steps, for a trained pipeline.

    python bench/bench_samplers.py --model ddpm-quickstart --num_images 512

For each sampler and step count: images per second, model evaluations per image, and a quality
measure computed on the same number of samples. The quality measure is the Frechet distance in
the feature space of a small classifier trained here on the model's Fashion-MNIST training data
("FD-cls": the FID recipe with a domain network in place of Inception, whose weights cannot be
downloaded on this machine); with `--inception_weights PATH` it is clean-fid's FID instead.
Both go through `pipeline.evaluate`: uint8 images, the same statistics, the same distance.
"""

import argparse
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import judge  # noqa: E402

from pipeline import inception, metrics  # noqa: E402
from pipeline.sample import CountingUNet, generate, load_pipeline, make_sampler, to_uint8  # noqa: E402


GRID = [
    ("ddpm", {}, [300, 100, 50, 25]),
    ("ddim", {}, [100, 50, 25, 10]),
    ("ddim", {"eta": 1.0}, [50, 25]),
    ("dpmsolver++", {"solver_order": 2}, [25, 20, 15, 10]),
    ("dpmsolver++", {"solver_order": 3}, [20, 10]),
]


def load_fashion_mnist(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path).to_pydict()
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(image["bytes"])).convert("L")) for image in table["image"]])
    return pixels[..., None], np.asarray(table["label"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ddpm-quickstart")
    parser.add_argument("--data", default="data/fashion_mnist/train.parquet")
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the UNet (fp32 otherwise)")
    parser.add_argument(
        "--inception_weights", help="Use clean-fid's Inception (mode clean) instead of the classifier."
    )
    parser.add_argument("--output", default="bench/results/samplers.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    pixels, labels = load_fashion_mnist(Path(args.data))
    if args.inception_weights:
        extractor = inception.build_inception("clean", inception.find_weights("clean", args.inception_weights))
        measure, held_out_accuracy = "FID (clean-fid, Inception)", None

        def encode(images):
            return metrics.extract_features(images, extractor, "clean")
    else:
        started = time.perf_counter()
        order = np.random.default_rng(0).permutation(len(pixels))  # 1,000 held out to report the accuracy
        network = judge.train_classifier(pixels[order[1000:]], labels[order[1000:]])
        held_out_accuracy = judge.accuracy(network, pixels[order[:1000]], labels[order[:1000]])
        print(
            f"classifier: {held_out_accuracy:.1%} held-out accuracy, trained in {time.perf_counter() - started:.0f} s"
        )
        measure = "FD-cls (Frechet distance, Fashion-MNIST classifier features)"

        def encode(images):
            return judge.features(network, images)

    reference = metrics.statistics(encode(pixels))
    rng = np.random.default_rng(0)
    real_subset = pixels[rng.choice(len(pixels), args.num_images, replace=False)]
    floor = metrics.frechet_distance(*metrics.statistics(encode(real_subset)), *reference)
    print(
        f"{measure}: {args.num_images} training images against all {len(pixels)}: {floor:.3f} (the floor at this "
        "sample count)"
    )

    pipeline = load_pipeline(args.model)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else torch.autocast("cpu", enabled=False)
    rows = []
    print(f"{'sampler':<24}{'steps':>6}{'evals/img':>10}{'images/s':>10}{'quality':>10}")
    for name, options, step_counts in GRID:
        label = name + (f" (order {options['solver_order']})" if "solver_order" in options else "")
        label += f" (eta {options['eta']})" if "eta" in options else ""
        for steps in step_counts:
            unet = CountingUNet(pipeline.unet)
            sampler = make_sampler(name, pipeline.scheduler.config, options.get("solver_order", 2))
            started = time.perf_counter()
            with autocast:
                images = generate(
                    unet,
                    sampler,
                    args.num_images,
                    steps,
                    seed=0,
                    batch_size=args.batch_size,
                    eta=options.get("eta", 0.0),
                )
            seconds = time.perf_counter() - started
            quality = metrics.frechet_distance(*metrics.statistics(encode(to_uint8(images))), *reference)
            row = {
                "sampler": label,
                "steps": steps,
                "model_evaluations_per_image": unet.evaluations / args.num_images,
                "images_per_second": round(args.num_images / seconds, 2),
                "quality": round(quality, 4),
            }
            rows.append(row)
            print(
                f"{label:<24}{steps:>6}{row['model_evaluations_per_image']:>10g}{row['images_per_second']:>10.1f}{quality:>10.3f}",
                flush=True,
            )

    result = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}",
        "torch": torch.__version__,
        "model": args.model,
        "precision": "bf16 autocast" if args.bf16 else "fp32",
        "num_images": args.num_images,
        "quality_measure": measure,
        "classifier_accuracy": held_out_accuracy,
        "real_images_floor": round(floor, 4),
        "rows": rows,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
