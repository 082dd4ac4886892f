"""The command lines: every `python -m pipeline.<module>` and train_ddpm.py parse their flags here, and nowhere else.

    train_ddpm.py [training flags]                       train_main: presets and flags -> TrainingConfig (arguments.py)
    python -m pipeline.sample --model M --output_dir D   sample_main
    python -m pipeline.evaluate fid|reference ...        evaluate_main
    python -m pipeline.hub card|push --output_dir D      hub_main
    python -m pipeline.data prepare [training flags]     data_main
    python -m pipeline.distill --teacher T --output_dir D  distill_main

A flag's value is checked by argparse (`choices`, the bounded types below) or by the config's field checks; the
library below takes values that are already valid. Every command reports a PipelineError as one `error:` line.

Each command imports the library it runs when it runs, the one place with imports inside functions: importing torch,
diffusers and Accelerate takes 6-7 s on a 2-core CPU, which `python -m pipeline.hub` (0.5 s) does not need.
"""

import argparse
import dataclasses
import math
import sys
from pathlib import Path
from typing import Optional

from .config import FID_MODES, MAX_TIMESTEPS, SAMPLERS, TIMESTEP_SPACINGS
from .errors import exit_on_error


def bounded(kind, low, high=None):
    """An argparse type: a `kind` number in [low, high]."""

    def convert(text: str):
        value = kind(text)
        if value < low or (high is not None and value > high):
            limit = f"at least {low:,}" + (f" and at most {high:,}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {limit}, got {text}")
        return value

    return convert


def description(module) -> str:
    return module.__doc__.split("\n\n")[0]


# ---------------------------------------------------------------------------------------------
# Training


def train_main(argv: Optional[list[str]] = None) -> None:
    from .arguments import parse_config
    from .train import dry_run, train

    with exit_on_error():
        config = parse_config(argv)
        dry_run(config) if config.dry_run else train(config)


def data_main(argv: Optional[list[str]] = None) -> None:
    from .arguments import parse_config
    from .data import describe_prepared, prepare_training_images

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "prepare":
        print(
            "usage: python -m pipeline.data prepare [--config PRESET] [training flags, e.g. --train_data_dir DIR]",
            file=sys.stderr,
        )
        sys.exit(2)
    with exit_on_error():
        prepared = prepare_training_images(parse_config(argv[1:]))
    print(describe_prepared(prepared.summary))
    if not prepared.summary["from_cache"]:
        print(f"Cache: {prepared.summary['cache']}")


def distill_config(teacher: str, output_dir: str, steps: int, flags: list[str]):
    """The training configuration of a distillation: the teacher's recipe, the distillation's (pipeline.distill), then
    the user's flags; the curriculum of the target a flag chose, and a re-parameterisation phase where the student's
    prediction type needs one (unless a flag sets them)."""
    from . import distill
    from .arguments import given_flags, parse_config

    folder = distill.teacher_folder(teacher)
    preset, recipe = distill.recipe(folder, output_dir, steps)
    config = parse_config([*preset, *flags], recipe=recipe)
    given = given_flags(flags)[0]
    if "distill_target" in given and "distill_halving_steps" not in given:
        config = dataclasses.replace(config, distill_halving_steps=distill.CURRICULUM[config.distill_target])
    if "distill_reparam_steps" in given:
        return config
    budget = config.max_train_steps or recipe["max_train_steps"]
    phase = distill.reparameterisation_steps(folder, config.prediction_type, budget)
    return dataclasses.replace(config, distill_reparam_steps=phase)


def distill_main(argv: Optional[list[str]] = None) -> None:
    from . import distill
    from .train import train

    def described(values: dict) -> str:
        return ", ".join(
            f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}" for key, value in values.items()
        )

    by_steps = "; ".join(f"at most {most}: {described(values)}" for most, values in distill.STEP_RECIPES.items())
    overridden = dict.fromkeys(key for values in distill.STEP_RECIPES.values() for key in values)  # in order
    common = described({key: distill.RECIPE[key] for key in overridden})
    parser = argparse.ArgumentParser(prog="python -m pipeline.distill", description=description(distill))
    parser.add_argument("--teacher", required=True, help="A training output folder, a saved DDPMPipeline or a Hub id.")
    parser.add_argument("--output_dir", required=True, help="Where the student, its checkpoints and grids go.")
    parser.add_argument(
        "--steps",
        type=bounded(int, 1, MAX_TIMESTEPS),
        default=4,
        help=f"Sampler steps the student is distilled for ({common}; {by_steps}).",
    )
    args, flags = parser.parse_known_args(argv)
    with exit_on_error():
        train(distill_config(args.teacher, args.output_dir, args.steps, flags))


# ---------------------------------------------------------------------------------------------
# Sampling


def add_sampling_arguments(parser: argparse.ArgumentParser, num_images: int = 64, batch_size: int = 64) -> None:
    """The sampling flags, shared by `pipeline.sample` and `pipeline.evaluate fid`: one per SamplingRequest field."""
    import torch

    from .sample import DTYPES, MAX_IMAGES

    parser.add_argument("--num_images", type=bounded(int, 1, MAX_IMAGES), default=num_images)
    parser.add_argument("--batch_size", type=bounded(int, 1, 4096), default=batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sampler",
        default=None,
        choices=SAMPLERS,
        help="Default: the sampler the model's training run used for its grids (its preset's, chosen by measurement "
        "in bench/README.md), else ddpm.",
    )
    parser.add_argument(
        "--steps",
        type=bounded(int, 1, MAX_TIMESTEPS),
        default=None,
        help="Model evaluations per image; default: the default sampler's, else 100.",
    )
    parser.add_argument(
        "--eta", type=bounded(float, 0.0), default=0.0, help="DDIM only: 0 deterministic, 1 ancestral-like."
    )
    parser.add_argument("--solver_order", type=int, default=2, choices=(2, 3), help="DPM-Solver++ only.")
    parser.add_argument(
        "--timestep_spacing",
        default=None,
        choices=TIMESTEP_SPACINGS,
        help="How the sampler spaces its steps over the T training steps; default: the spacing saved with the model. "
        "trailing starts every sampler at t = T - 1, where the initial noise belongs: few-step samplers need it.",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", *DTYPES),
        help="The UNet's dtype. auto: bf16 where the device computes it natively (a GPU with bf16, a CPU with AMX or "
        "AVX512-BF16), fp16 on other GPUs, else fp32; images then differ slightly between such machines.",
    )
    parser.add_argument(
        "--noise_on_device",
        action="store_true",
        help="Draw the noise on --device (faster on a GPU; the images then differ from the CPU-drawn ones).",
    )


def sampling_request(parser: argparse.ArgumentParser, args: argparse.Namespace, model: Optional[str]):
    """The request the sampling flags describe; a sampler or steps not given are the model's default
    (sample.default_sampler). Options that only some samplers or machines take are refused through `parser`."""
    import torch

    from .sample import SamplingRequest, default_sampler

    values = {item.name: getattr(args, item.name) for item in dataclasses.fields(SamplingRequest)}
    sampler, steps = default_sampler(model)
    values["sampler"] = values["sampler"] or sampler
    if values["steps"] is None:
        values["steps"] = steps if values["sampler"] == sampler else 100
    if values["eta"] and values["sampler"] != "ddim":
        parser.error("eta: applies to the ddim sampler only")
    if values["device"].startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"device: {values['device']} asked for, but this machine has no CUDA GPU; use --device cpu")
    return SamplingRequest(**values)


def sample_main(argv: Optional[list[str]] = None) -> None:
    from . import sample

    parser = argparse.ArgumentParser(prog="python -m pipeline.sample", description=description(sample))
    parser.add_argument(
        "--model", required=True, help="Training output folder (or any saved DDPMPipeline) or a Hub id."
    )
    parser.add_argument("--output_dir", required=True, help="Folder for the PNGs, grid.png and samples.json.")
    parser.add_argument(
        "--grid_images", type=bounded(int, 0), default=64, help="How many of the images go into grid.png (0: none)."
    )
    add_sampling_arguments(parser)
    args = parser.parse_args(argv)
    with exit_on_error():
        sample.check_samples_folder(Path(args.output_dir))
        request = sampling_request(parser, args, args.model)
        batches = math.ceil(request.num_images / request.batch_size)
        print(f"Sampling {request.num_images:,} images: {batches:,} batches of up to {request.batch_size}, "
              f"{request.steps} {request.sampler} steps each", file=sys.stderr)  # fmt: skip
        pixels, info = sample.sample_images(args.model, request)
        sample.write_samples(pixels, info, Path(args.output_dir), args.grid_images)
    print(
        f"{info['num_images']} images in {info['seconds']} s ({info['images_per_second']} images/s, "
        f"{info['model_evaluations_per_image']:g} model evaluations each) -> {args.output_dir}"
    )


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_parser() -> argparse.ArgumentParser:
    from . import evaluate

    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=description(evaluate))
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--mode", default="clean", choices=FID_MODES, help="clean-fid mode: how images are resized to 299x299."
    )
    common.add_argument(
        "--inception_weights", help="The Inception weights file, when it cannot be downloaded to clean-fid's place."
    )
    common.add_argument("--feature_batch_size", type=bounded(int, 1), default=64)
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--reference_data_dir", help="Reference images: a folder or .zip (as --train_data_dir).")
    source.add_argument(
        "--reference_dataset",
        help="Reference images: a Hub dataset, save_to_disk folder or .parquet (as --dataset_name).",
    )
    source.add_argument("--reference_split", default="train")
    source.add_argument(
        "--reference_max_images", type=bounded(int, 2), help="A seeded random subset of the reference of this size."
    )

    fid = commands.add_parser(
        "fid", parents=[common, source], help="FID and KID of a model's samples against a reference."
    )
    sampled = fid.add_mutually_exclusive_group(required=True)
    sampled.add_argument("--model", help="Training output folder or Hub id to sample from.")
    sampled.add_argument("--samples", help="Instead of --model: a folder written by `python -m pipeline.sample`.")
    fid.add_argument("--reference", help="Reference statistics (.npz) written by the `reference` command.")
    fid.add_argument("--output_dir", help="Where metrics.json goes (default: <model>/eval).")
    add_sampling_arguments(fid, num_images=10_000, batch_size=256)

    reference = commands.add_parser(
        "reference", parents=[common, source], help="Encode reference images once; save their statistics."
    )
    size = reference.add_mutually_exclusive_group(required=True)
    size.add_argument("--model", help="Take the resolution and channels from this training output folder.")
    size.add_argument("--resolution", type=bounded(int, 1))
    reference.add_argument("--channels", type=int, default=3, choices=(1, 3))
    reference.add_argument("--output", required=True, help="The .npz to write.")
    reference.add_argument("--device", default=fid.get_default("device"))  # add_sampling_arguments' default
    return parser


def parse_evaluate_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    sources = [name for name in ("reference", "reference_data_dir", "reference_dataset") if getattr(args, name, None)]
    if len(sources) != 1:
        statistics = "--reference, " if args.command == "fid" else ""
        parser.error(f"give exactly one of {statistics}--reference_data_dir and --reference_dataset")
    if args.command == "fid":
        if args.num_images < 2:
            parser.error("--num_images: a covariance needs at least 2 samples")
        args.request = sampling_request(parser, args, args.model) if args.samples is None else None
    return args


def run_evaluate(args: argparse.Namespace, feature_fn=None, feature_name: Optional[str] = None) -> dict:
    """The parsed command's work: `fid` (evaluate) or `reference` (make_reference); `feature_fn` replaces Inception."""
    from . import evaluate

    work = evaluate.evaluate if args.command == "fid" else evaluate.make_reference
    return work(args, feature_fn=feature_fn, feature_name=feature_name)


def evaluate_main(argv: Optional[list[str]] = None) -> None:
    args = parse_evaluate_args(argv)
    with exit_on_error():
        result = run_evaluate(args)
    if args.command == "reference":
        print(
            f"reference statistics of {result['images']} images ({result['source']}, mode {result['mode']}) -> "
            f"{args.output}"
        )
    else:
        print(
            f"FID {result['fid']:.2f}  KID {result['kid']:.5f}  ({result['num_samples']} samples, "
            f"{result['sampler']} {result['steps']} steps, vs {result['num_reference']} reference images, mode "
            f"{result['mode']}, {result['wall_seconds']:.0f} s)"
        )


# ---------------------------------------------------------------------------------------------
# The model card and the Hub


def hub_main(argv: Optional[list[str]] = None) -> None:
    from . import hub

    parser = argparse.ArgumentParser(prog="python -m pipeline.hub", description=description(hub))
    commands = parser.add_subparsers(dest="command", required=True)
    card = commands.add_parser("card", help="Write the model card (README.md) of an output folder.")
    card.add_argument("--output_dir", required=True)
    card.add_argument("--hub_model_id", help="The repository id the card's usage example names.")
    push = commands.add_parser("push", help="Upload an output folder's pipeline, card, samples and metrics.")
    push.add_argument("--output_dir", required=True)
    push.add_argument(
        "--hub_model_id", help="'user/name' or 'name'; default: the folder's name, under the token's user."
    )
    push.add_argument("--private", action="store_true", help="Create the repository private.")
    push.add_argument(
        "--include", nargs="*", default=[], help="More patterns to upload, e.g. 'checkpoints/*' or 'logs/*'."
    )
    push.add_argument("--dry_run", action="store_true", help="List the files that would be uploaded; upload nothing.")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    with exit_on_error():
        if args.command == "card":
            print(f"model card -> {hub.write_card(output_dir, args.hub_model_id)}")
        elif args.dry_run:
            print("\n".join(hub.files_to_upload(output_dir, tuple(args.include))))
            _, left_out = hub.regular_files(output_dir)
            if left_out:
                print(f"never uploaded: {', '.join(left_out)}", file=sys.stderr)
        else:
            hub.push_to_hub(output_dir, args.hub_model_id, args.private, tuple(args.include))
