"""Images per second delivered to the training loop: per-step decoding (the diffusers example) vs our cache.

    pip install scikit-image        # only for the sample photographs this benchmark upscales
    python bench/bench_data.py [--num_images 300] [--resolution 64] [--batch_size 16]

It writes SFHQ-shaped data (1024x1024 JPEGs, quality 90, upscaled random crops of the
photographs scikit-image ships) into a temporary folder, then measures on the same files:
(a) the diffusers unconditional example's loader: `load_dataset("imagefolder")`, torchvision
    Resize/CenterCrop/RandomHorizontalFlip/ToTensor/Normalize in `set_transform`, a DataLoader
    with 0 workers (its default) and with 2;
(b) ours: `prepare_training_images` (decode once) into an empty cache, cold, then again from the cache,
    warm, each followed by the batches `CachedBatches` + `random_flip` + `to_model_range` deliver.
Every figure is images per second for one epoch as the training loop sees it, start-up included.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.arguments import parse_config  # noqa: E402
from pipeline.batches import CachedBatches  # noqa: E402
from pipeline.data import prepare_training_images  # noqa: E402
from pipeline.diffusion import random_flip, to_model_range  # noqa: E402


def write_sfhq_like(folder: Path, count: int, seed: int = 0) -> None:
    """`count` 1024x1024 JPEGs (quality 90) of photographic content, in the Kaggle layout images/images/."""
    import skimage.data
    from PIL import Image

    photos = [
        getattr(skimage.data, name)()
        for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina")
    ]
    rng = np.random.default_rng(seed)
    target = folder / "images" / "images"
    target.mkdir(parents=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(rng.uniform(0.5, 1.0) * min(photo.shape[:2]))
        top, left = rng.integers(0, photo.shape[0] - side + 1), rng.integers(0, photo.shape[1] - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.resize((1024, 1024), Image.Resampling.BICUBIC).save(target / f"SFHQ_pt1_{index:08d}.jpg", quality=90)


def example_dataloader(folder: Path, resolution: int, batch_size: int, num_workers: int):
    """The diffusers unconditional example's data path: imagefolder, torchvision transforms at every step."""
    from datasets import load_dataset
    from torchvision import transforms

    augmentations = transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    dataset = load_dataset("imagefolder", data_dir=str(folder), split="train")
    dataset.set_transform(
        lambda examples: {"input": [augmentations(image.convert("RGB")) for image in examples["image"]]}
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers)


def diffusers_example_loader(folder: Path, resolution: int, batch_size: int, num_workers: int) -> float:
    """One epoch through the diffusers unconditional example's data path; returns images/s."""
    started = time.perf_counter()
    count = sum(batch["input"].shape[0] for batch in example_dataloader(folder, resolution, batch_size, num_workers))
    return count / (time.perf_counter() - started)


def our_loader(folder: Path, cache_dir: Path, resolution: int, batch_size: int, workers: int) -> dict:
    """prepare_training_images (cold or warm, by the cache's state) then one epoch of batches; returns the timings."""
    config = parse_config(
        [
            "--train_data_dir",
            str(folder),
            "--resolution",
            str(resolution),
            "--image_channels",
            "3",
            "--cache_dir",
            str(cache_dir),
            "--preprocessing_num_workers",
            str(workers),
        ]
    )
    started = time.perf_counter()
    prepared = prepare_training_images(config)
    stream = CachedBatches.from_pixels(prepared.pixels, "cpu", batch_size, seed=0)
    prepared_seconds = time.perf_counter() - started
    steps = stream.num_images // batch_size
    batch_started = time.perf_counter()
    for step in range(steps):
        clean_images = to_model_range(random_flip(stream.batch(step)))
    stream_seconds = time.perf_counter() - batch_started
    assert clean_images.shape == (batch_size, 3, resolution, resolution)
    epoch_images = steps * batch_size
    return {
        "from_cache": prepared.summary["from_cache"],
        "prepare_seconds": round(prepared_seconds, 3),
        "epoch_images_per_second": round(epoch_images / (prepared_seconds + stream_seconds), 1),
        "steady_images_per_second": round(epoch_images / stream_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=300)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_loading.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        os.environ["HF_DATASETS_CACHE"] = str(scratch / "hf")
        import datasets

        datasets.config.HF_DATASETS_CACHE = scratch / "hf"
        datasets.disable_progress_bars()
        started = time.perf_counter()
        write_sfhq_like(scratch / "sfhq", args.num_images)
        print(f"wrote {args.num_images} 1024x1024 JPEGs in {time.perf_counter() - started:.0f} s", flush=True)

        results = {}
        for workers in (0, 2):
            name = f"diffusers example loader, {workers} workers"
            results[name] = {
                "epoch_images_per_second": round(
                    diffusers_example_loader(scratch / "sfhq", args.resolution, args.batch_size, workers), 1
                )
            }
            print(name, results[name], flush=True)
        for workers in (1, cores):
            for state in ("cold", "warm"):
                name = f"ours, {state} cache, {workers} decode process(es)"
                results[name] = our_loader(
                    scratch / "sfhq", scratch / f"cache-{workers}", args.resolution, args.batch_size, workers
                )
                print(name, results[name], flush=True)

    reference = results["diffusers example loader, 0 workers"]["epoch_images_per_second"]
    best_reference = max(results[f"diffusers example loader, {w} workers"]["epoch_images_per_second"] for w in (0, 2))
    warm = results[f"ours, warm cache, {cores} decode process(es)"]["epoch_images_per_second"]
    summary = {
        "machine": f"{platform.machine()}, {cores} cores, {platform.processor() or 'cpu'}, torch {torch.__version__}",
        "command": "python bench/bench_data.py " + " ".join(sys.argv[1:]),
        "num_images": args.num_images,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "results": results,
        "warm_over_example_default": round(warm / reference, 1),
        "warm_over_example_best": round(warm / best_reference, 1),
    }
    print(json.dumps({key: summary[key] for key in ("warm_over_example_default", "warm_over_example_best")}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
