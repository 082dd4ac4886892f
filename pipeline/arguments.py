"""The command line of training: presets and flags -> a TrainingConfig. Only the commands import this module.

A preset (YAML, or a run's training_config.json) replaces the dataclass defaults; flags replace the preset.
On top of one flag per field, the command line takes what users of the diffusers unconditional example and
of Accelerate type:

- the example's flag names, as aliases with the same meaning (`--eval_batch_size`,
  `--ddpm_num_inference_steps`, `--report_to`), or accepted with a warning where they do not apply
  here (`--dataloader_num_workers`, `--local_rank`, `--enable_xformers_memory_efficient_attention`,
  `--preserve_input_precision`);
- `--hub_token`, handed to the Hub client only, never written into the config;
- the mixed precision Accelerate was given (`accelerate launch --mixed_precision X` or the
  `accelerate config` file), which a preset's value yields to and an explicit flag overrides.
"""

import argparse
import dataclasses
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Optional

import yaml
from accelerate.commands.config.config_args import default_config_file
from accelerate.commands.launch import launch_command_parser

from .config import FIELDS, TYPES, TrainingConfig, load_preset, settle_pairs
from .errors import PipelineError
from .hub import use_token


# The diffusers example's flag -> ours, same meaning
ALIASES = {
    "eval_batch_size": "num_grid_images",
    "ddpm_num_inference_steps": "grid_inference_steps",
    "report_to": "logger",
}
# The example's flags that do not apply here: (takes a value, why it is ignored)
IGNORED_FLAGS = {
    "dataloader_num_workers": (True, "images are decoded once into a cache; --preprocessing_num_workers decodes"),
    "local_rank": (True, "Accelerate sets up the processes"),
    "enable_xformers_memory_efficient_attention": (False, "diffusers already uses PyTorch's SDPA attention"),
    "preserve_input_precision": (False, "the cache holds 8-bit images; 16-bit ones are scaled to 8 bits, not clipped"),
}


def _none_or(convert, words=("none", "null")):
    """Optional fields take `none` on the command line, as `null` in YAML (`--mid_block_type none`)."""
    return lambda text: None if text.lower() in words else convert(text)


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainingConfig field (also spelt with dashes), plus --config. Booleans take `--flag`,
    `--flag false` and `--no_flag`; lists take several values."""
    parser = argparse.ArgumentParser(
        prog="train_ddpm.py",
        description="Train a DDPM (diffusers UNet2DModel + DDPMScheduler) with Accelerate.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", default=None, help="YAML preset (configs/*.yaml) or a run's training_config.json.")
    for name, item in FIELDS.items():
        hint = TYPES[name]
        optional = typing.get_origin(hint) is typing.Union
        base = next(arg for arg in typing.get_args(hint) if arg is not type(None)) if optional else hint
        if typing.get_origin(base) is typing.Literal:
            base = str
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        choices = f"; one of {', '.join(map(str, item.metadata['choices']))}" if "choices" in item.metadata else ""
        help_text = f"{item.metadata['help']} [default: {default}{choices}]".strip().replace("%", "%%")
        options = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            parser.add_argument(*flags, nargs="?", const=True, type=_boolean, **options)
            parser.add_argument(f"--no_{name}", dest=name, action="store_false", default=argparse.SUPPRESS)
        elif typing.get_origin(base) is list:
            parser.add_argument(*flags, nargs="+", type=typing.get_args(base)[0], **options)
        elif name == "image_channels":  # 1, 3 or auto
            parser.add_argument(*flags, type=_none_or(int, ("auto", "none", "null")), **options)
        else:
            parser.add_argument(*flags, type=_none_or(base) if optional else base, **options)
    return parser


def _flag_name(arg: str) -> str:
    return arg[2:].split("=", 1)[0].replace("-", "_")


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
            index += takes_value and _takes_value(argv, index)
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
            if argument.endswith("accelerate.commands.launch"):
                return [argument for argument in arguments[index + 1 :] if argument]
            if Path(argument).name == "accelerate" and arguments[index + 1] == "launch":
                return [argument for argument in arguments[index + 2 :] if argument]
        if pid <= 1:
            return None
    return None


def launcher_mixed_precision() -> Optional[str]:
    """The mixed precision `accelerate launch` was given: its --mixed_precision flag, or the `mixed_precision` of the
    Accelerate config file it read (what `accelerate config` writes). None when it only filled in its default ("no"),
    or when this process was not started by `accelerate launch`. The launcher passes "no" both when told nothing
    and when told "no", so its own command line (from /proc) tells the two apart."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION")
    arguments = _accelerate_launch_arguments() if value is not None else None
    if arguments is None:  # not launched, or the launcher cannot be seen: a value other than its default was asked for
        return value if value != "no" else None
    launched, _ = launch_command_parser().parse_known_args(arguments)
    if launched.mixed_precision is not None:
        return launched.mixed_precision
    config_file = Path(launched.config_file or default_config_file)
    try:
        settings = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    if isinstance(settings, dict) and settings.get("mixed_precision") is not None:
        return str(settings["mixed_precision"])
    return None


def given_flags(argv: list[str]) -> tuple[dict, Optional[str]]:
    """The fields the command line `argv` sets (with --config, if given, under "config"), and the --hub_token."""
    argv, token = translate_example_flags(list(argv))
    flags, unknown = build_parser().parse_known_args(argv)
    if unknown:
        names = [arg for arg in unknown if arg.startswith("-")] or unknown
        raise PipelineError(f"{names[0].lstrip('-').split('=')[0]}: unknown option {' '.join(unknown)!r}; see --help")
    return vars(flags), token


def parse_config(argv: Optional[list[str]] = None, recipe: Optional[dict] = None) -> TrainingConfig:
    """Resolve the configuration from `--config`, a command's own `recipe` (pipeline.distill's: over the preset,
    under the flags), the flags and the launcher. Raises PipelineError."""
    given, token = given_flags(sys.argv[1:] if argv is None else argv)
    if token is not None:
        use_token(token)
    preset = given.pop("config", None)
    values = {**load_preset(preset), "preset": preset} if preset else {}
    from_launcher = launcher_mixed_precision() if "mixed_precision" not in given else None
    if from_launcher is not None:
        values["mixed_precision"] = from_launcher
    for layer in (recipe or {}, given):
        values.update(layer)
        settle_pairs(values, set(layer))
    return TrainingConfig(**values)
