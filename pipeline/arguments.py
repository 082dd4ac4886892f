"""Presets and command-line flags -> a TrainingConfig.

A preset (YAML, or a run's training_config.json) replaces the dataclass defaults; flags replace
the preset. On top of one flag per field, the command line takes what users of the diffusers
unconditional example and of Accelerate type:

- the example's flag names, as aliases with the same meaning (`--eval_batch_size`,
  `--ddpm_num_inference_steps`, `--report_to`), or accepted with a warning where they do not apply
  here (`--dataloader_num_workers`, `--local_rank`, `--enable_xformers_memory_efficient_attention`,
  `--preserve_input_precision`);
- `--hub_token`, handed to the Hub client only, never written into the config;
- the mixed precision Accelerate was given (`accelerate launch --mixed_precision X` or the
  `accelerate config` file), which a preset's value yields to and an explicit flag overrides.
"""

import dataclasses
import functools
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Literal, Optional

import yaml

from .config import EXCLUSIVE_PAIRS, TrainingConfig, _fail


# The diffusers example's flag -> ours, same meaning
ALIASES = {
    "eval_batch_size": "num_grid_images",
    "ddpm_num_inference_steps": "grid_inference_steps",
    "report_to": "logger",
}
# The example's flags that do not apply here: (takes a value, why it is ignored)
IGNORED_FLAGS = {
    "dataloader_num_workers": (
        True,
        "images are decoded once into a cache; --preprocessing_num_workers sets the decoders",
    ),
    "local_rank": (True, "Accelerate sets up the processes"),
    "enable_xformers_memory_efficient_attention": (
        False,
        "diffusers already uses PyTorch's scaled_dot_product_attention",
    ),
    "preserve_input_precision": (
        False,
        "the cache holds 8-bit images; 16-bit images are scaled to 8 bits, not clipped",
    ),
}


def _type_error(name, value, expected):
    _fail(name, f"expected {expected}, got {value!r} ({type(value).__name__})")


def _check_value_type(name: str, value, annotation):
    """Check (and return) one preset value against its field's type annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _check_value_type(name, value, next(arg for arg in args if arg is not type(None)))
    if value is None:
        _fail(name, "must not be null")
    if origin is list:
        if not isinstance(value, list):
            _type_error(name, value, "a list")
        return [_check_value_type(name, item, args[0]) for item in value]
    if origin is Literal:
        annotation = type(args[0])
    if annotation is bool and not isinstance(value, bool):
        _type_error(name, value, "true or false")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        _type_error(name, value, "an integer")
    if annotation is float:
        # PyYAML reads `1e-4` (no dot) as a string; accept any string that is a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                _type_error(name, value, "a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _type_error(name, value, "a number")
        return float(value)
    if annotation is str and not isinstance(value, str):
        _type_error(name, value, "a string")
    return value


def load_preset(path: str) -> dict:
    """Read a YAML preset (or a run's training_config.json) into checked field values."""
    path = Path(path)
    if not path.is_file():
        _fail("config", f"no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        _fail("config", f"{path} is not valid YAML: {error}")
    data = data or {}
    if not isinstance(data, dict):
        _fail("config", f"{path} must hold a mapping of option names to values")
    if set(data) == {"config", "run"}:  # training_config.json written by a run
        data = data["config"]
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    hints = typing.get_type_hints(TrainingConfig)
    for name in data:
        if name not in fields:
            _fail(name, f"unknown option in {path}")
    for a, b in EXCLUSIVE_PAIRS:
        if data.get(a) is not None and data.get(b) is not None:
            _fail(a, f"{path} sets both {a} and {b}; a preset sets at most one")
    if data.get("image_channels") == "auto":
        data["image_channels"] = None
    return {name: _check_value_type(name, value, hints[name]) for name, value in data.items()}


def build_parser(defaults: Optional[dict] = None):
    """The command-line parser: one flag per TrainingConfig field, plus --config."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(
        TrainingConfig, description="Train a DDPM (diffusers UNet2DModel + DDPMScheduler) with Accelerate."
    )
    parser.add_argument("--config", default=None, help="YAML preset (configs/*.yaml) or a run's training_config.json.")
    # Optional fields take `none` on the command line, as `null` in YAML (`--mid_block_type none`).
    hints = typing.get_type_hints(TrainingConfig)
    for action in parser._actions:
        hint = hints.get(action.dest)
        if typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint) and action.type is not None:
            action.type = functools.partial(_none_or, action.type)
        if action.dest == "image_channels":
            action.type = _channels
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def _none_or(convert, text: str):
    return None if text.lower() in ("none", "null") else convert(text)


def _channels(text: str) -> Optional[int]:
    """--image_channels: 1, 3, or auto (also none)."""
    return None if text.lower() in ("auto", "none", "null") else int(text)


def _flag_name(arg: str) -> str:
    return arg[2:].split("=", 1)[0].replace("-", "_")


def _flags_given(argv: list[str]) -> set[str]:
    """The fields named by --flags in `argv`, whichever spelling (`--max_train_steps`, `--max-train-steps`)."""
    return {_flag_name(arg) for arg in argv if arg.startswith("--")}


def _takes_value(argv: list[str], index: int) -> bool:
    return "=" not in argv[index] and index + 1 < len(argv) and not argv[index + 1].startswith("--")


def translate_example_flags(argv: list[str]) -> tuple[list[str], Optional[str]]:
    """Rename the example's aliases, drop (with a warning) its flags that do not apply, and take out --hub_token.
    Returns the flags for the parser and the token (None if not given)."""
    kept, token, index = [], None, 0
    while index < len(argv):
        arg = argv[index]
        name = _flag_name(arg) if arg.startswith("--") else None
        if name in ALIASES:
            kept.append("--" + ALIASES[name] + (arg[arg.index("=") :] if "=" in arg else ""))
        elif name in IGNORED_FLAGS:
            takes_value, reason = IGNORED_FLAGS[name]
            if takes_value and _takes_value(argv, index):
                index += 1
            warnings.warn(f"--{name} is accepted for compatibility with the diffusers example and ignored: {reason}")
        elif name == "hub_token":
            if "=" in arg:
                token = arg.split("=", 1)[1]
            elif _takes_value(argv, index):
                token, index = argv[index + 1], index + 1
            warnings.warn("--hub_token puts the token in the shell history and process list; prefer `hf auth login`")
        else:
            kept.append(arg)
        index += 1
    return kept, token


def _accelerate_launch_arguments() -> Optional[list[str]]:
    """The arguments of the `accelerate launch` that started this process (it is the parent, or further up under
    torchrun), read from /proc; None where that cannot be read."""
    pid = os.getppid()
    for _ in range(4):
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        for index, argument in enumerate(arguments[:-1]):
            if argument.endswith("accelerate.commands.launch") or (
                Path(argument).name == "accelerate" and arguments[index + 1] == "launch"
            ):
                start = index + 1 if argument.endswith("accelerate.commands.launch") else index + 2
                return [argument for argument in arguments[start:] if argument]
        if pid <= 1:
            return None
    return None


def launcher_mixed_precision() -> Optional[str]:
    """The mixed precision `accelerate launch` was given: its --mixed_precision flag, or the `mixed_precision`
    of the Accelerate config file it read (what `accelerate config` writes). None when it only filled in its
    default ("no"), or when this process was not started by `accelerate launch`."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if value is None:
        return None
    arguments = _accelerate_launch_arguments()
    if arguments is None:  # the launcher cannot be seen: a value other than its default was asked for
        return value if value != "no" else None
    from accelerate.commands.config.config_args import default_config_file
    from accelerate.commands.launch import launch_command_parser

    launched, _ = launch_command_parser().parse_known_args(arguments)
    if launched.mixed_precision is not None:
        return launched.mixed_precision
    config_file = Path(launched.config_file or default_config_file)
    if config_file.is_file():
        try:
            settings = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError:
            return None
        if isinstance(settings, dict) and settings.get("mixed_precision") is not None:
            return str(settings["mixed_precision"])
    return None


def parse_config(argv: Optional[list[str]] = None) -> TrainingConfig:
    """Resolve the configuration from `--config`, flags and the launcher. Raises ConfigError."""
    from . import hub

    argv, token = translate_example_flags(list(sys.argv[1:] if argv is None else argv))
    if token is not None:
        hub.use_token(token)
    preset_parser = build_parser()
    known, _ = preset_parser.parse_known_args(argv)  # only --config matters here; flags are checked below
    defaults = load_preset(known.config) if known.config else {}
    if known.config:
        defaults["preset"] = known.config

    given = _flags_given(argv)
    for pair in EXCLUSIVE_PAIRS:
        for name, other in (pair, pair[::-1]):
            if name in given and other not in given:
                defaults[other] = None
    if "mixed_precision" not in given:
        from_launcher = launcher_mixed_precision()
        if from_launcher is not None:
            defaults["mixed_precision"] = from_launcher

    parser = build_parser(defaults)
    config, _, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        flags = [arg for arg in unknown if arg.startswith("-")] or unknown
        _fail(flags[0].lstrip("-").split("=")[0], f"unknown option {' '.join(unknown)!r}; see --help")
    return config
