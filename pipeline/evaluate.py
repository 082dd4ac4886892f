"""FID and KID of a saved pipeline (or a folder of samples) against a reference, with clean-fid's Inception.

    python -m pipeline.evaluate reference --model ddpm-quickstart --dataset_name data/fashion_mnist --output ref.npz
    python -m pipeline.evaluate fid --model ddpm-quickstart --reference ref.npz --sampler dpmsolver++ --steps 20

Everything goes through one path: images as (N, H, W, C) uint8 arrays (checked), resized to
299x299 exactly as clean-fid resizes in the chosen mode, Inception features in float64, then the
Frechet distance from the features' statistics. The reference is read through the training data
loader at the model's resolution, so it is preprocessed exactly like the training images.
"""

import argparse
import importlib.metadata
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .data import DataSource, Preprocessing, describe_skipped, prepare_images
from .errors import PipelineError
from .files import FILE, read_json, refuse_foreign, write_json
from .hub import write_card
from .inception import FeatureFn, inception_extractor
from .metrics import (
    check_reference,
    extract_features,
    frechet_distance,
    kernel_inception_distance,
    load_reference,
    save_reference,
    statistics,
)
from .record import RECORD_NAME, read_record
from .sample import image_grid, sample_images


# ---------------------------------------------------------------------------------------------
# Reference statistics: from a data source through the training loader, or saved earlier


def reference_preprocessing(model_dir: Optional[Path], resolution: int, channels: int) -> Preprocessing:
    """The model's resolution and channels, with the training run's resizing (intermediate size, crop) when its
    record is there: reference images are made exactly as the training images were."""
    record = model_dir / RECORD_NAME if model_dir is not None else None
    if record is None or not record.is_file():
        return Preprocessing(resolution, channels)
    trained = Preprocessing.from_config(read_record(record).config)
    return replace(trained, resolution=resolution, channels=channels, min_image_size=0)


def reference_source(args: argparse.Namespace) -> DataSource:
    """The --reference_* flags as a data source."""
    return DataSource(
        args.reference_data_dir,
        args.reference_dataset,
        split=args.reference_split,
        max_images=args.reference_max_images,
    )


def reference_images(source: DataSource, preprocessing: Preprocessing) -> tuple[np.ndarray, dict]:
    """The reference images as uint8 (N, H, W, C) and what was read, through the training data loader."""
    prepared = prepare_images(source, preprocessing)
    summary = prepared.summary
    description = {
        "source": source.name,
        "split": None if source.train_data_dir else source.split,
        "images": int(len(prepared.pixels)),
        "files_skipped": summary.get("files_skipped", 0),
        "resolution": preprocessing.resolution,
        "intermediate_resolution": preprocessing.intermediate_resolution,
        "center_crop": preprocessing.center_crop,
    }
    if summary.get("files_skipped"):
        print(f"reference: {describe_skipped(summary)}", file=sys.stderr)
    return np.asarray(prepared.pixels), description


def encode_reference(
    args: argparse.Namespace, model_dir: Optional[Path], resolution: int, channels: int, feature_fn: FeatureFn
):
    """The --reference_* source's features (float64) and description, read at `resolution` through the data loader."""
    pixels, description = reference_images(
        reference_source(args), reference_preprocessing(model_dir, resolution, channels)
    )
    features = extract_features(
        pixels, feature_fn, args.mode, batch_size=args.feature_batch_size, device=args.device,
        description="reference features",
    )  # fmt: skip
    return features, description


# ---------------------------------------------------------------------------------------------
# Generated images


def read_samples(folder: Path) -> tuple[np.ndarray, dict]:
    """A folder written by `python -m pipeline.sample`: its numbered PNGs as uint8 (N, H, W, C) and samples.json."""
    if not (folder / "samples.json").is_file():
        raise PipelineError(f"samples: {folder} has no samples.json; write it with `python -m pipeline.sample`")
    info = read_json(folder / "samples.json")
    for key in ("model", "sampler", "steps", "num_images"):
        if key not in info:
            raise PipelineError(
                f"{folder / 'samples.json'}: has no {key!r}; write the folder with `python -m pipeline.sample`"
            )
    files = sorted(folder.glob("[0-9]*.png"))
    if len(files) != info["num_images"]:
        raise PipelineError(
            f"samples: {folder} holds {len(files)} numbered PNGs, samples.json says {info['num_images']}"
        )
    pixels = []
    for file in files:
        try:
            with Image.open(file) as image:
                pixel = np.asarray(image)
        except (OSError, Image.DecompressionBombError) as error:  # not an image, truncated, or a bomb
            raise PipelineError(f"samples: {file} is not a readable image ({error})") from None
        pixels.append(pixel[..., None] if pixel.ndim == 2 else pixel)
        if pixels[-1].shape != pixels[0].shape or pixels[-1].dtype != np.uint8:
            raise PipelineError(
                f"samples: {file} is {pixels[-1].shape} {pixels[-1].dtype}, {files[0].name} {pixels[0].shape} uint8"
            )
    return np.stack(pixels), info


EVAL_LAYOUT = {"metrics.json": FILE, "samples-*.png": FILE}  # what the fid command writes into its folder


def check_metrics_folder(output: Path, model: str) -> None:
    """Before any work: the fid command writes only into a folder of its own (EVAL_LAYOUT), and inside a model's
    folder only for that model (its card shows what that folder's eval/ holds)."""
    refuse_foreign(output, EVAL_LAYOUT, "metrics or grids of this command", "pass another --output_dir")
    owner = next(
        (folder for folder in output.resolve().parents if (folder / "model_index.json").is_file()
         or (folder / RECORD_NAME).is_file()),
        None,
    )  # fmt: skip
    if owner is not None and not (Path(model).is_dir() and Path(model).resolve() == owner):
        raise PipelineError(
            f"output_dir: {output} is inside {owner}, the folder of another model than {model}, whose card and "
            "metrics would then show this one's numbers; pass an --output_dir of its own"
        )


def metrics_path(args: argparse.Namespace, model: str) -> Path:
    """Where the `fid` command records: --output_dir, else the model folder's eval/, else ./eval."""
    output = (
        Path(args.output_dir) if args.output_dir else Path(model) / "eval" if Path(model).is_dir() else Path("eval")
    )
    return output / "metrics.json"


def read_metrics(path: Path) -> list:
    """The entries of an eval/metrics.json (none when there is no file), checked before any work is done."""
    if not path.exists():
        return []
    results = read_json(path).get("results")
    if not isinstance(results, list) or not all(isinstance(entry, dict) for entry in results):
        raise PipelineError(f"{path}: 'results' must be a list of objects; move the file aside to start a new one")
    return results


def append_metrics(path: Path, result: dict, existing: list) -> None:
    """eval/metrics.json keeps one entry per (sampler, steps, images, seed, reference, mode); a rerun replaces it."""
    key_fields = "model sampler steps eta solver_order num_samples seed reference mode feature_extractor".split()
    kept = [entry for entry in existing if any(entry.get(name) != result.get(name) for name in key_fields)]
    write_json(path, {"results": kept + [result]})


def evaluate(
    args: argparse.Namespace, feature_fn: Optional[FeatureFn] = None, feature_name: Optional[str] = None
) -> dict:
    """The `fid` command (pipeline.commands): generate (`args.request`) or read samples, extract features, compare
    with the reference, record. `feature_fn` replaces Inception (as clean-fid's custom_feat_extractor does)."""
    started = time.perf_counter()
    if feature_fn is None:
        feature_fn, feature_name = inception_extractor(args.mode, args.inception_weights, args.device)

    # Saved reference statistics are read and checked before any sampling
    if args.reference is not None:
        reference_features, reference = load_reference(Path(args.reference))
        reference = {**reference, "statistics_file": Path(args.reference).name}
        check_reference(reference, f"reference: {args.reference}", args.mode, feature_name)

    # The samples: generated here, or a folder from pipeline.sample; either way with what was run. The metrics file
    # they go to is read first, so a bad one stops the command before the work
    if args.samples is not None:
        images, info = read_samples(Path(args.samples))
    model = info["model"] if args.samples is not None else args.model
    path = metrics_path(args, model)
    check_metrics_folder(path.parent, model)
    existing = read_metrics(path)
    if args.samples is None:
        images, info = sample_images(args.model, args.request)
    sample_features = extract_features(
        images, feature_fn, args.mode, batch_size=args.feature_batch_size, device=args.device,
        description="sample features",
    )  # fmt: skip

    # Or the reference is a data source, read at the samples' resolution
    if args.reference is None:
        model_dir = Path(model) if Path(model).is_dir() else None
        reference_features, reference = encode_reference(args, model_dir, images.shape[1], images.shape[3], feature_fn)
        reference = {**reference, "mode": args.mode, "feature_extractor": feature_name}
    check_reference(reference, "reference", args.mode, feature_name, images.shape[1])

    fid = frechet_distance(*statistics(sample_features), *statistics(reference_features))
    kid = kernel_inception_distance(sample_features, reference_features, seed=args.seed)
    result = {
        "model": Path(model).name if Path(model).is_dir() else model,  # a local path's name only: the file is pushed
        "fid": round(fid, 4),
        "kid": round(kid, 6),
        "num_samples": int(len(images)),
        "num_reference": int(len(reference_features)),
        **{
            key: info.get(key)
            for key in ("sampler", "steps", "eta", "solver_order", "model_evaluations_per_image", "seed")
        },
        "reference": reference,
        "mode": args.mode,
        "feature_extractor": feature_name,
        "clean_fid_version": importlib.metadata.version("clean-fid"),
        "device": args.device,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    output = path.parent
    append_metrics(path, result, existing)
    image_grid(images[:64].astype(np.float32) / 255).save(output / f"samples-{info['sampler']}-{info['steps']}.png")
    model_dir = output.parent
    if (
        output.name == "eval"
        and (model_dir / "training_config.json").is_file()
        and (model_dir / "README.md").is_file()
    ):
        write_card(model_dir)  # the card shows the new numbers
    return result


def make_reference(
    args: argparse.Namespace, feature_fn: Optional[FeatureFn] = None, feature_name: Optional[str] = None
) -> dict:
    """The `reference` command (pipeline.commands): encode a data source once and save its statistics."""
    if Path(args.output).exists():
        try:
            load_reference(Path(args.output))
        except PipelineError:
            raise PipelineError(
                f"output: {args.output} exists and is not reference statistics of this command; choose another path"
            ) from None
    if feature_fn is None:
        feature_fn, feature_name = inception_extractor(args.mode, args.inception_weights, args.device)
    if args.model is not None:
        model_dir = Path(args.model)
        unet_config = model_dir / "unet" / "config.json"
        if not unet_config.is_file():
            raise PipelineError(
                f"model: {unet_config} not found; pass a training output folder, or --resolution and --channels"
            )
        unet = json.loads(unet_config.read_text())
        resolution, channels = unet["sample_size"], unet["in_channels"]
    else:
        model_dir, resolution, channels = None, args.resolution, args.channels
    features, description = encode_reference(args, model_dir, resolution, channels, feature_fn)
    meta = {
        **description,
        "mode": args.mode,
        "feature_extractor": feature_name,
        "clean_fid_version": importlib.metadata.version("clean-fid"),
    }
    save_reference(Path(args.output), features, meta)
    return meta


if __name__ == "__main__":
    from pipeline.commands import evaluate_main  # the command line lives in pipeline/commands.py

    evaluate_main()
