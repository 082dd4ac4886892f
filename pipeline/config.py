"""The training configuration: one typed dataclass, the single source of truth for every option.

Its defaults are the quickstart recipe (configs/quickstart.yaml spells them out with the reasons, and a test
keeps the two equal). A field's checks are data on the field (`option(...)`: choices, bounds, and whether a
resume may change it); `validate` applies them to every field, then checks what relates fields to each other.
A preset (YAML, or a run's training_config.json) is read by `load_preset`; the command line
(pipeline/arguments.py) and `TrainingConfig(...)` in Python apply the same rules. Invalid values raise
ConfigError naming the field, before any work.
"""

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from .errors import ConfigError


DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr", "polynomial")
SAMPLERS = ("ddpm", "ddim", "dpmsolver++", "sde-dpmsolver++", "unipc", "lcm")
LOGGERS = ("tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "trackio", "none")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
FID_MODES = ("clean", "legacy_pytorch")  # clean-fid's resizing modes
PRECISIONS = ("auto", "no", "fp16", "bf16")
MAX_SEED = 2**32 - 1
MAX_TIMESTEPS = 10_000  # T; improved DDPM's longest schedule is 4,000
MAX_RESOLUTION = 2048
MAX_STEPS = 10**9
MAX_PRESET_BYTES = 2**20  # a preset is a few KB
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")

# What a resume may do with a field (its metadata "resume"): MATCH, refused with both values when it differs from
# the checkpoint's (the data and its preprocessing, the model, the diffusion process, the draws); CHANGE, applied
# from the resumed step on and reported (pipeline/checkpoint.py).
MATCH, CHANGE = "match", "change"


def option(
    default, help: str = "", *, choices=None, minimum=None, maximum=None, above=None, below=None, resume=CHANGE
):
    """A TrainingConfig field: its default, help, the values it takes (for a list: each item) and whether a resume may
    change it. `minimum`/`maximum` are inclusive bounds, `above`/`below` exclusive ones."""
    checks = {"choices": choices, "minimum": minimum, "maximum": maximum, "above": above, "below": below}
    metadata = {"help": help, "resume": resume, **{key: value for key, value in checks.items() if value is not None}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingConfig:
    # ----- data -----
    train_data_dir: Optional[str] = option(
        None, "Folder of images (searched recursively) or a .zip of them.", resume=MATCH
    )
    dataset_name: Optional[str] = option(
        "data/fashion_mnist",
        "Hub dataset id or local dataset folder (parquet, save_to_disk). Default: the embedded subset.",
        resume=MATCH,
    )
    dataset_config_name: Optional[str] = option(None, "Configuration of --dataset_name.", resume=MATCH)
    split: str = option("train", "Split of --dataset_name to train on.", resume=MATCH)
    image_column: Optional[str] = option(None, "Image column; default: the first Image feature.", resume=MATCH)
    cache_dir: Optional[str] = option(None, "datasets cache folder (default: HF_DATASETS_CACHE).")
    max_train_samples: Optional[int] = option(
        None, "Train on this many images drawn at random with --seed.", minimum=1, maximum=MAX_STEPS, resume=MATCH
    )
    resolution: int = option(
        28, "Training resolution in pixels (square).", minimum=1, maximum=MAX_RESOLUTION, resume=MATCH
    )
    image_channels: Optional[int] = option(
        None,
        "The UNet's in/out channels: 1 (grayscale), 3 (RGB), or auto (none): 1 when every image is grayscale, else 3 "
        "(a stream is read as RGB).",
        choices=(1, 3),
        resume=MATCH,
    )
    intermediate_resolution: Optional[int] = option(
        None,
        "Resize to this size first, then to --resolution (the report: 1024 -> 256 -> 64).",
        minimum=1,
        maximum=4 * MAX_RESOLUTION,
        resume=MATCH,
    )
    center_crop: bool = option(
        True, "Scale the short side and crop the centre; false: squash to a square.", resume=MATCH
    )
    min_image_size: Optional[int] = option(
        None, "Skip images whose short side is below this; default: half of --resolution.", minimum=0, resume=MATCH
    )
    strict_data: bool = option(False, "Stop on the first unusable file instead of skipping it.")
    max_image_bytes: int = option(
        64 * 2**20,
        "Skip image files (or archive members) larger than this, without reading them.",
        above=0,
        maximum=2**32,
        resume=MATCH,
    )
    preprocessing_num_workers: Optional[int] = option(
        None, "Processes that decode images; default: every core for 256 images or more.", minimum=1, maximum=1024
    )
    random_flip: bool = option(True, "Random horizontal flip, per batch, on the device.", resume=MATCH)
    streaming: bool = option(
        False, "Stream --dataset_name and decode on the fly, no cache: for sources larger than the disk.", resume=MATCH
    )
    shuffle_buffer_size: int = option(
        1000, "Shuffle buffer of the streamed source, in images.", minimum=1, maximum=10**6, resume=MATCH
    )

    # ----- model: UNet2DModel arguments -----
    model_config_name_or_path: Optional[str] = option(
        None,
        "A UNet2DModel config (config.json, its folder, or a Hub id) to build the UNet from, instead of the fields "
        "below; its sample size and channels are set to --resolution and the data's channels.",
        resume=MATCH,
    )
    block_out_channels: list[int] = option([32, 64, 128], "Channels per level.", minimum=1, maximum=8192, resume=MATCH)
    layers_per_block: int = option(
        1, "Resnets per down level (up levels have one more).", minimum=1, maximum=16, resume=MATCH
    )
    down_block_types: list[str] = option(
        ["DownBlock2D"] * 3, f"One of {DOWN_BLOCK_TYPES} per level.", choices=DOWN_BLOCK_TYPES, resume=MATCH
    )
    up_block_types: list[str] = option(
        ["UpBlock2D"] * 3, f"One of {UP_BLOCK_TYPES} per level.", choices=UP_BLOCK_TYPES, resume=MATCH
    )
    mid_block_type: Optional[str] = option(
        "UNetMidBlock2D", "UNetMidBlock2D, or none.", choices=("UNetMidBlock2D",), resume=MATCH
    )
    add_attention: bool = option(False, "Self-attention in the mid block.", resume=MATCH)
    attention_head_dim: int = option(32, "Channels per attention head.", minimum=1, maximum=8192, resume=MATCH)
    norm_num_groups: int = option(
        8, "GroupNorm groups; divides every channel count.", minimum=1, maximum=8192, resume=MATCH
    )
    act_fn: Literal["silu", "relu", "gelu", "mish"] = option(
        "silu", "Activation.", choices=("silu", "relu", "gelu", "mish"), resume=MATCH
    )
    flip_sin_to_cos: bool = option(True, "Order of the sinusoidal time embedding (cos, sin).", resume=MATCH)
    freq_shift: int = option(
        0, "Frequency shift of the time embedding.", minimum=0, maximum=MAX_TIMESTEPS, resume=MATCH
    )
    dropout: float = option(0.0, "Dropout in the resnets.", minimum=0, below=1)

    # ----- diffusion -----
    ddpm_num_steps: int = option(300, "Number of diffusion steps T.", minimum=1, maximum=MAX_TIMESTEPS, resume=MATCH)
    ddpm_beta_schedule: str = option(
        "squaredcos_cap_v2", f"One of {BETA_SCHEDULES}.", choices=BETA_SCHEDULES, resume=MATCH
    )
    ddpm_beta_start: float = option(1e-4, "First beta (linear schedules).", above=0, below=1, resume=MATCH)
    ddpm_beta_end: float = option(0.02, "Last beta (linear schedules).", above=0, below=1, resume=MATCH)
    ddpm_variance_type: str = option(
        "fixed_small", f"Posterior variance, one of {VARIANCE_TYPES}.", choices=VARIANCE_TYPES, resume=MATCH
    )
    ddpm_clip_sample: bool = option(True, "Clip the predicted x0 to [-1, 1] when sampling.", resume=MATCH)
    prediction_type: str = option(
        "epsilon", f"What the UNet predicts, one of {PREDICTION_TYPES}.", choices=PREDICTION_TYPES, resume=MATCH
    )
    loss_type: str = option("l2", "l1 or l2 (mean squared error).", choices=("l1", "l2"))
    snr_gamma: Optional[float] = option(
        None,
        "Min-SNR-gamma loss weighting (Hang et al. 2023, arXiv:2303.09556): each timestep's loss weighted by "
        "min(SNR, gamma) / SNR (epsilon), / (SNR + 1) (v) or as is (sample); 5 is the paper's value. none: uniform.",
        above=0,
        maximum=10**6,
    )
    rescale_betas_zero_snr: bool = option(
        False,
        "Rescale the betas to zero terminal SNR (Lin et al. 2024, arXiv:2305.08891), so the last step is pure noise; "
        "needs v_prediction or sample prediction, and sampling with trailing timesteps.",
        resume=MATCH,
    )
    ddpm_timestep_spacing: str = option(
        "trailing",
        f"How samplers space fewer steps than T, one of {TIMESTEP_SPACINGS} (saved in the scheduler config, so stock "
        "diffusers samplers space them the same way). trailing starts every sampler at t = T - 1, where its initial "
        "noise belongs: measured better than diffusers' leading for every fast sampler (bench/README.md).",
        choices=TIMESTEP_SPACINGS,
        resume=MATCH,
    )

    # ----- distillation into a few-step student (pipeline/distill.py) -----
    distill_teacher: Optional[str] = option(
        None,
        "A trained pipeline (output folder) to distil: the UNet starts from its EMA weights and learns the "
        "consistency function of its sampling ODE, sampled by LCMScheduler in 1 to distill_grid_steps steps.",
        resume=MATCH,
    )
    distill_grid_steps: int = option(
        50,
        "The consistency grid: timesteps k = T / N apart (LCMScheduler's original_inference_steps); the student "
        "samples in any number of steps up to N. Also the lcm sampler's grid.",
        minimum=1,
        maximum=MAX_TIMESTEPS,
        resume=MATCH,
    )
    distill_target: str = option(
        "teacher",
        "teacher: the target point comes from a DDIM step of the teacher (consistency distillation); data: from the "
        "same noise on the training image (consistency training, the teacher only initialises the student).",
        choices=("teacher", "data"),
        resume=MATCH,
    )

    # ----- optimisation -----
    train_batch_size: int = option(64, "Images per process per micro-batch.", minimum=1, maximum=4096, resume=MATCH)
    gradient_accumulation_steps: int = option(
        1, "Micro-batches per optimizer step.", minimum=1, maximum=1024, resume=MATCH
    )
    num_epochs: Optional[int] = option(
        None, "Budget in epochs (set this or --max_train_steps).", minimum=1, maximum=10**6
    )
    max_train_steps: Optional[int] = option(
        800, "Budget in optimizer steps (set this or --num_epochs).", minimum=1, maximum=MAX_STEPS
    )
    optimizer: str = option("adamw", "adam or adamw.", choices=("adam", "adamw"), resume=MATCH)
    learning_rate: float = option(2e-3, "Peak learning rate.", above=0)
    lr_scheduler: str = option("cosine_with_min_lr", f"One of {LR_SCHEDULERS}.", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = option(50, "Linear warmup, in optimizer steps.", minimum=0, maximum=MAX_STEPS)
    min_learning_rate: float = option(1e-5, "Floor of cosine_with_min_lr.", minimum=0, maximum=1)
    adam_beta1: float = option(0.9, minimum=0, below=1)
    adam_beta2: float = option(0.999, minimum=0, below=1)
    adam_weight_decay: float = option(0.0, "Decoupled for adamw, L2 for adam.", minimum=0, maximum=10)
    adam_epsilon: float = option(1e-8, above=0, below=1)
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 turns clipping off.", minimum=0, maximum=1e6)
    max_bad_steps: int = option(
        10,
        "Steps with a non-finite loss or gradient are skipped; stop after this many in a row (0: never stop).",
        minimum=0,
        maximum=MAX_STEPS,
    )
    mixed_precision: str = option(
        "auto",
        "auto, no (fp32), fp16 or bf16. auto: bf16 where the device computes it natively (a GPU with bf16, a CPU "
        "with AMX or AVX512-BF16), fp16 with the grad scaler on other GPUs, else fp32 (emulated bf16 is ~10x slower).",
        choices=PRECISIONS,
    )
    allow_tf32: bool = option(
        True, "On NVIDIA GPUs, TF32 for fp32 matmuls and convolutions (and cuDNN autotuning); no effect on CPUs."
    )
    torch_compile: bool = option(
        False, "Compile the UNet with torch.compile (inductor): pays on GPUs for long runs; minutes of compile time."
    )
    torch_compile_mode: str = option(
        "default", f"torch.compile mode, one of {COMPILE_MODES} (reduce-overhead: CUDA graphs).", choices=COMPILE_MODES
    )
    fused_optimizer: bool = option(
        True, "On NVIDIA GPUs, Adam's fused kernel (one launch per step); no effect on CPUs."
    )
    cpu_threads: Optional[int] = option(
        None,
        "Threads per process on CPU; default: the available cores shared by the local processes.",
        minimum=1,
        maximum=1024,
    )

    # ----- EMA (pipeline/ema.py: diffusers' EMAModel warmup, several decays) -----
    use_ema: bool = option(True, "Keep an EMA of the weights; export and sample from it.", resume=MATCH)
    ema_max_decay: float = option(
        0.999, "Decay of the EMA that is exported and sampled.", above=0, below=1, resume=MATCH
    )
    ema_extra_decays: list[float] = option(
        [],
        "More EMA decays tracked in the same update, checkpointed, scored by FID during training and exported to "
        "<output_dir>/ema-<decay>/: the best EMA length is only known after training.",
        above=0,
        below=1,
        resume=MATCH,
    )
    ema_inv_gamma: float = option(1.0, above=0, maximum=1e9, resume=MATCH)
    ema_power: float = option(
        0.75, "EMA warmup: decay = 1 - (1 + step / inv_gamma) ** -power.", above=0, maximum=100, resume=MATCH
    )

    # ----- samples, logs, checkpoints -----
    output_dir: str = option("ddpm-quickstart", "Where the pipeline, checkpoints, samples and logs go.")
    seed: int = option(0, "Seed of every random draw (NumPy's range).", minimum=0, maximum=MAX_SEED, resume=MATCH)
    logger: str = option("tensorboard", f"Experiment tracker, one of {LOGGERS} (alias: --report_to).", choices=LOGGERS)
    logging_dir: str = option("logs", "Tracker logs, relative to --output_dir.")
    log_level: str = option("info", "Messages shown.", choices=("debug", "info", "warning", "error"))
    logging_steps: int = option(10, "Log loss, lr and images/s every N optimizer steps.", minimum=1, maximum=MAX_STEPS)
    save_images_steps: int = option(
        400, "Sample grid every N steps (and at the end); 0: at the end only.", minimum=0, maximum=MAX_STEPS
    )
    save_images_epochs: Optional[int] = option(
        None, "Instead of --save_images_steps: a sample grid every N epochs.", minimum=1, maximum=10**6
    )
    num_grid_images: int = option(
        64, "Images in each sample grid (alias: --eval_batch_size).", minimum=1, maximum=1024
    )
    grid_sampler: str = option(
        "sde-dpmsolver++",
        f"Sampler for the grids, one of {SAMPLERS}; also the default of pipeline.sample and pipeline.evaluate for the "
        "exported model.",
        choices=SAMPLERS,
    )
    grid_inference_steps: int = option(
        20, "Sampler steps for the grids (alias: --ddpm_num_inference_steps).", minimum=1, maximum=MAX_TIMESTEPS
    )
    save_model_steps: int = option(
        0,
        "Export the pipeline (EMA weights) every N steps to <output_dir>/pipeline-<step>/; 0: never.",
        minimum=0,
        maximum=MAX_STEPS,
    )
    save_model_epochs: Optional[int] = option(
        None, "Instead of --save_model_steps: export the pipeline every N epochs.", minimum=1, maximum=10**6
    )
    fid_steps: int = option(
        0,
        "Every N steps (and at the end): FID of EMA samples against --fid_reference, logged; the best weights are "
        "exported to <output_dir>/best-fid. 0: off.",
        minimum=0,
        maximum=MAX_STEPS,
    )
    fid_reference: Optional[str] = option(None, "Statistics (.npz) from `python -m pipeline.evaluate reference`.")
    fid_num_images: int = option(
        1000, "Samples per FID during training (a covariance needs two).", minimum=2, maximum=10**6
    )
    fid_sampler: str = option("sde-dpmsolver++", f"Sampler for the FID samples, one of {SAMPLERS}.", choices=SAMPLERS)
    fid_inference_steps: int = option(20, "Sampler steps for the FID samples.", minimum=1, maximum=MAX_TIMESTEPS)
    fid_mode: str = option("clean", f"clean-fid mode, one of {FID_MODES}.", choices=FID_MODES)
    inception_weights: Optional[str] = option(None, "Inception weights file, when clean-fid cannot download it.")
    checkpointing_steps: int = option(
        400, "Checkpoint every N optimizer steps; 0: none.", minimum=0, maximum=MAX_STEPS
    )
    checkpoints_total_limit: Optional[int] = option(2, "Keep at most this many checkpoints.", minimum=1, maximum=10**6)
    resume_from_checkpoint: Optional[str] = option(
        None, "'latest', a checkpoint folder, or a checkpoint's name in <output_dir>/checkpoints.", resume=None
    )
    overwrite_output_dir: bool = option(
        False,
        "Start a new run in an --output_dir that holds files of an earlier run (or others), replacing them.",
        resume=None,
    )
    dry_run: bool = option(False, "Print the resolved config, model size and step count; exit.", resume=None)
    preset: Optional[str] = option(
        None, "The preset this config came from: set by --config and recorded, not read.", resume=None
    )

    # ----- model card and Hub (pipeline/hub.py) -----
    push_to_hub: bool = option(False, "Upload the exported pipeline, card and samples at the end of training.")
    hub_model_id: Optional[str] = option(
        None, "Hub repository, 'user/name' or 'name' (under the token's user); default: the output folder's name."
    )
    hub_private_repo: bool = option(False, "Create the Hub repository private.")
    hub_license: str = option("mit", "Licence of the weights, as the model card states it (a Hub licence id).")
    hub_dataset_id: Optional[str] = option(
        None, "Hub dataset id the card names as training data; default: --dataset_name when it is a Hub id."
    )

    def __post_init__(self):
        # In Python (`TrainingConfig(num_epochs=10)`) the fields given are those that differ from their defaults
        settle_pairs(self.__dict__, {name for name, value in self.__dict__.items() if value != _default(name)})
        validate(self)

    def global_batch_size(self, num_processes: int) -> int:
        """Images per optimizer step: the per-process batch, times the processes, times the micro-batches."""
        return self.train_batch_size * num_processes * self.gradient_accumulation_steps

    @property
    def downsampling_factor(self) -> int:
        """How many times the UNet halves the resolution: 2 ** (levels - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELDS = {item.name: item for item in dataclasses.fields(TrainingConfig)}
TYPES = typing.get_type_hints(TrainingConfig)


def _default(name: str):
    item = FIELDS[name]
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


# ---------------------------------------------------------------------------------------------
# The pair rule: of each pair a run uses exactly one


# (field, field, the error when both are given)
EXCLUSIVE_PAIRS = (
    (
        "num_epochs",
        "max_train_steps",
        "max_train_steps: give the budget as exactly one of --num_epochs and --max_train_steps",
    ),
    ("train_data_dir", "dataset_name", "train_data_dir: set only one of --train_data_dir and --dataset_name"),
)


def settle_pairs(values: dict, given: set, preset: Optional[Path] = None) -> None:
    """Of each exclusive pair, the one just given (in Python, in a `preset`, or on the command line) replaces the
    other; giving both at once is refused."""
    for first, second, message in EXCLUSIVE_PAIRS:
        chosen = [name for name in (first, second) if name in given and values.get(name) is not None]
        if len(chosen) == 2:
            raise ConfigError(
                f"{first}: {preset} sets both {first} and {second}; a preset sets at most one" if preset else message
            )
        if chosen:
            values[second if chosen[0] == first else first] = None


# ---------------------------------------------------------------------------------------------
# Checks of one field (type, choices, bounds), shared with the model-folder checks of pipeline/model.py


def _type_error(name, value, expected):
    raise ConfigError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")


def check_type(name: str, value, annotation=None):
    """`value` checked against the field's type (or `annotation`); a number in a string (PyYAML reads `1e-4` so)
    where a float belongs becomes the float. Returns the value."""
    annotation = TYPES[name] if annotation is None else annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        return None if value is None else check_type(name, value, next(arg for arg in args if arg is not type(None)))
    if value is None:
        raise ConfigError(f"{name}: must not be null")
    if origin is list:
        if not isinstance(value, list):
            _type_error(name, value, "a list")
        return [check_type(name, item, args[0]) for item in value]
    if origin is Literal:
        annotation = type(args[0])
    if annotation is bool and not isinstance(value, bool):
        _type_error(name, value, "true or false")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        _type_error(name, value, "an integer")
    if annotation is float:
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


def _bound_error(checks: dict, value) -> Optional[str]:
    """What is wrong with a number against the bounds in `checks`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low, high = checks.get("above", checks.get("minimum")), checks.get("below", checks.get("maximum"))
    interval = f"must lie in {'(' if 'above' in checks else '['}{low}, {high}{')' if 'below' in checks else ']'}"
    too_low = ("above" in checks and value <= checks["above"]) or ("minimum" in checks and value < checks["minimum"])
    too_high = ("below" in checks and value >= checks["below"]) or ("maximum" in checks and value > checks["maximum"])
    if too_low:
        if checks.get("above") == 0:
            return "must be positive"
        return interval if high is not None else "must be non-negative" if low == 0 else f"must be at least {low}"
    if too_high:
        return interval if low is not None else f"must be at most {high}"
    return None


def check_field(name: str, value, checks: Optional[dict] = None) -> None:
    """The choices and bounds of field `name` (or `checks`) hold for `value` (for a list, for each item)."""
    checks = FIELDS[name].metadata if checks is None else checks
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        if "choices" in checks and item not in checks["choices"]:
            raise ConfigError(
                f"{name}: unknown value {item!r}; expected one of {', '.join(map(str, checks['choices']))}"
            )
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            problem = _bound_error(checks, item)
            if problem:
                raise ConfigError(f"{name}: {problem}, got {item}")


# ---------------------------------------------------------------------------------------------
# The whole config


def validate(config: TrainingConfig) -> None:
    """Raise ConfigError for the first invalid field: each field's own checks, then the relations between fields."""
    for name in FIELDS:
        setattr(config, name, check_type(name, getattr(config, name)))
        check_field(name, getattr(config, name))

    # data
    if config.train_data_dir is None and config.dataset_name is None:
        raise ConfigError("dataset_name: set --dataset_name or --train_data_dir")
    if config.streaming:
        if config.dataset_name is None:
            raise ConfigError(
                "streaming: streams --dataset_name sources; a folder or zip on disk is decoded once into a much "
                "smaller cache"
            )
        if config.num_epochs is not None:
            raise ConfigError(
                "num_epochs: a streamed source has no known length; give the budget as --max_train_steps"
            )
        if config.max_train_samples is not None:
            raise ConfigError(
                "max_train_samples: drawing a random subset needs the whole source; not available with --streaming"
            )
    if config.intermediate_resolution is not None and config.intermediate_resolution < config.resolution:
        raise ConfigError(
            f"intermediate_resolution: {config.intermediate_resolution} is below resolution {config.resolution}"
        )

    # model
    levels = len(config.block_out_channels)
    if not 1 <= levels <= 8:
        raise ConfigError(f"block_out_channels: needs 1 to 8 levels, got {levels}")
    for name in ("down_block_types", "up_block_types"):
        if len(getattr(config, name)) != levels:
            raise ConfigError(f"{name}: has {len(getattr(config, name))} entries but block_out_channels has {levels}")
    for channels in config.block_out_channels:
        if channels % config.norm_num_groups:
            raise ConfigError(
                f"block_out_channels: {channels} is not a multiple of norm_num_groups={config.norm_num_groups}"
            )
    uses_attention = config.add_attention or any("Attn" in t for t in config.down_block_types + config.up_block_types)
    if uses_attention and any(channels % config.attention_head_dim for channels in config.block_out_channels):
        raise ConfigError(
            f"attention_head_dim: {config.attention_head_dim} does not divide every block_out_channels entry"
        )
    if config.resolution % config.downsampling_factor:
        raise ConfigError(
            f"resolution: {config.resolution} is not divisible by the UNet's downsampling factor "
            f"{config.downsampling_factor} ({levels} levels halve it {levels - 1} times)"
        )

    # diffusion
    if config.rescale_betas_zero_snr and config.prediction_type == "epsilon":
        raise ConfigError(
            "rescale_betas_zero_snr: at zero terminal SNR the last step's input is pure noise, so an epsilon "
            "prediction says nothing about the image: use --prediction_type v_prediction (or sample)"
        )
    if config.ddpm_beta_end <= config.ddpm_beta_start:
        raise ConfigError(
            f"ddpm_beta_end: must be greater than ddpm_beta_start ({config.ddpm_beta_end} <= {config.ddpm_beta_start})"
        )

    # optimisation and EMA
    if (config.num_epochs is None) == (config.max_train_steps is None):
        raise ConfigError("max_train_steps: give the budget as exactly one of --num_epochs and --max_train_steps")
    if config.lr_scheduler == "cosine_with_min_lr" and config.min_learning_rate >= config.learning_rate:
        raise ConfigError(
            f"min_learning_rate: must be below learning_rate ({config.min_learning_rate} >= {config.learning_rate})"
        )
    if len(set(config.ema_extra_decays + [config.ema_max_decay])) != len(config.ema_extra_decays) + 1:
        raise ConfigError(
            f"ema_extra_decays: must differ from each other and from ema_max_decay ({config.ema_max_decay}), got "
            f"{config.ema_extra_decays}"
        )

    # outputs
    if not config.logging_dir or Path(config.logging_dir).is_absolute() or ".." in Path(config.logging_dir).parts:
        raise ConfigError(f"logging_dir: must be a folder inside --output_dir, got {config.logging_dir!r}")
    if config.distill_grid_steps > config.ddpm_num_steps:
        raise ConfigError(
            f"distill_grid_steps: {config.distill_grid_steps} is more than ddpm_num_steps={config.ddpm_num_steps}"
        )
    for name, sampler in (("grid_inference_steps", config.grid_sampler), ("fid_inference_steps", config.fid_sampler)):
        if sampler == "lcm" and getattr(config, name) > config.distill_grid_steps:
            raise ConfigError(
                f"{name}: {getattr(config, name)} steps, but the consistency sampler (lcm) gives at most "
                f"distill_grid_steps={config.distill_grid_steps}"
            )
        if getattr(config, name) > config.ddpm_num_steps:
            raise ConfigError(
                f"{name}: {getattr(config, name)} sampler steps, but the model has only "
                f"ddpm_num_steps={config.ddpm_num_steps}"
            )
    if config.fid_steps and config.fid_reference is None:
        raise ConfigError(
            "fid_reference: --fid_steps needs reference statistics: make them with `python -m pipeline.evaluate "
            "reference`"
        )
    if not config.output_dir:
        raise ConfigError("output_dir: must not be empty")
    for name in ("hub_model_id", "hub_dataset_id"):
        if getattr(config, name) is not None and not HUB_ID.fullmatch(getattr(config, name)):
            value = getattr(config, name)
            raise ConfigError(f"{name}: must be 'name' or 'user/name' (letters, digits, '-', '_', '.'), got {value!r}")
    if not config.hub_license:
        raise ConfigError("hub_license: must not be empty (use 'other' and say more in the card)")


# ---------------------------------------------------------------------------------------------
# Presets


def load_preset(path) -> dict:
    """Read a YAML preset (or a run's training_config.json) into checked field values. Raises ConfigError naming the
    file or the field: missing, a folder, too large, not UTF-8, not YAML, too deeply nested, unknown keys, wrong types,
    both of an exclusive pair."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config: {path} is a folder, not a preset file")
    if not path.is_file():
        raise ConfigError(f"config: no such file: {path}")
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise ConfigError(
            f"config: {path} is {path.stat().st_size:,} bytes; a preset holds at most {MAX_PRESET_BYTES:,}"
        )
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"config: {path} is not UTF-8 text ({error})") from None
    except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer past Python's digit limit
        raise ConfigError(f"config: {path} is not valid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(f"config: {path} is not valid YAML: nested too deeply") from None
    data = data or {}
    if isinstance(data, dict) and set(data) == {"config", "run"}:  # training_config.json written by a run
        data = data["config"]
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of option names to values")
    for name in data:
        if name not in FIELDS:
            raise ConfigError(f"{name}: unknown option in {path}")
    if data.get("image_channels") == "auto":
        data["image_channels"] = None
    values = {name: check_type(name, value) for name, value in data.items()}
    settle_pairs(values, set(values), preset=path)
    return values
