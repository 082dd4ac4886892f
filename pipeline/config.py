"""The training configuration: one typed dataclass, the single source of truth for every option.

Its defaults are the quickstart recipe (configs/quickstart.yaml spells them out with the reasons, and a test
keeps the two equal). A field's checks are data on the field (`option(...)`: choices, bounds, and whether a
resume may change it); `validate` applies them to every field, then checks what relates fields to each other.
A preset (YAML, or a run's training_config.json) is read by `load_preset`; the command line
(pipeline/arguments.py) and `TrainingConfig(...)` in Python apply the same rules. Invalid values raise
PipelineError naming the field, before any work.
"""

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from .errors import PipelineError


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
TIMESTEP_DENSITIES = ("uniform", "lognormal")
FID_MODES = ("clean", "legacy_pytorch")  # clean-fid's resizing modes
PRECISIONS = ("auto", "no", "fp16", "bf16")
MAX_SEED = 2**32 - 1
MAX_TIMESTEPS = 10_000  # T; improved DDPM's longest schedule is 4,000
MAX_RESOLUTION = 2048
MAX_STEPS = 10**9
MAX_PRESET_BYTES = 2**20  # a preset is a few KB
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


def option(default, help: str = "", *, choices=None, ge=None, le=None, gt=None, lt=None, same: Optional[bool] = False):
    """A TrainingConfig field: its default, help, the values it takes (for a list: each item; ge/le inclusive bounds,
    gt/lt exclusive ones) and what a resume may do with it (pipeline/checkpoint.py): `same`, refused with both values
    when it differs from the checkpoint's (the data and its preprocessing, the model, the diffusion process, the
    draws); else applied from the resumed step on and reported; None: not compared (how the command was called)."""
    checks = {"choices": choices, "ge": ge, "le": le, "gt": gt, "lt": lt}
    metadata = {"help": help, "same": same, **{key: value for key, value in checks.items() if value is not None}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingConfig:
    # ----- data -----
    train_data_dir: Optional[str] = option(
        None, "Folder of images (searched recursively) or a .zip of them.", same=True
    )
    dataset_name: Optional[str] = option(
        "data/fashion_mnist", "Hub dataset, dataset folder or .parquet. Default: the embedded subset.", same=True
    )
    dataset_config_name: Optional[str] = option(None, "Configuration of --dataset_name.", same=True)
    split: str = option("train", "Split of --dataset_name to train on.", same=True)
    image_column: Optional[str] = option(None, "Image column; default: the first Image feature.", same=True)
    cache_dir: Optional[str] = option(None, "datasets cache folder (default: HF_DATASETS_CACHE).")
    max_train_samples: Optional[int] = option(
        None, "Train on this many images drawn with --seed.", ge=1, le=MAX_STEPS, same=True
    )
    resolution: int = option(28, "Training resolution in pixels (square).", ge=1, le=MAX_RESOLUTION, same=True)
    image_channels: Optional[int] = option(
        None,
        "1 (grayscale), 3 (RGB) or auto: 1 when every image is grayscale (a stream: 3).",
        choices=(1, 3),
        same=True,
    )
    intermediate_resolution: Optional[int] = option(
        None, "Resize to this first (the report: 1024 -> 256 -> 64).", ge=1, le=4 * MAX_RESOLUTION, same=True
    )
    center_crop: bool = option(True, "Scale the short side and crop the centre; false: squash.", same=True)
    min_image_size: Optional[int] = option(
        None, "Skip images with a shorter side; default: resolution / 2.", ge=0, same=True
    )
    strict_data: bool = option(False, "Stop on the first unusable file instead of skipping it.")
    max_image_bytes: int = option(64 * 2**20, "Skip larger files unread.", gt=0, le=2**32, same=True)
    preprocessing_num_workers: Optional[int] = option(None, "Decoding processes; default: every core.", ge=1, le=1024)
    random_flip: bool = option(
        False, "Random horizontal flip (for mirror-symmetric data such as faces; not Fashion-MNIST).", same=True
    )
    streaming: bool = option(
        False, "Stream --dataset_name, decoding on the fly: for data larger than the disk.", same=True
    )
    shuffle_buffer_size: int = option(1000, "Shuffle buffer of a stream, in images.", ge=1, le=10**6, same=True)

    # ----- model: UNet2DModel arguments -----
    model_config_name_or_path: Optional[str] = option(
        None, "A UNet2DModel config (file, folder, Hub id) instead of the fields below.", same=True
    )
    block_out_channels: list[int] = option([32, 64, 128], "Channels per level.", ge=1, le=8192, same=True)
    layers_per_block: int = option(1, "Resnets per down level (up levels have one more).", ge=1, le=16, same=True)
    down_block_types: list[str] = option(["DownBlock2D"] * 3, "One per level.", choices=DOWN_BLOCK_TYPES, same=True)
    up_block_types: list[str] = option(["UpBlock2D"] * 3, "One per level.", choices=UP_BLOCK_TYPES, same=True)
    mid_block_type: Optional[str] = option("UNetMidBlock2D", "Or none.", choices=("UNetMidBlock2D",), same=True)
    add_attention: bool = option(False, "Self-attention in the mid block.", same=True)
    attention_head_dim: int = option(32, "Channels per attention head.", ge=1, le=8192, same=True)
    norm_num_groups: int = option(8, "GroupNorm groups; divides every channel count.", ge=1, le=8192, same=True)
    act_fn: Literal["silu", "relu", "gelu", "mish"] = option(
        "silu", choices=("silu", "relu", "gelu", "mish"), same=True
    )
    flip_sin_to_cos: bool = option(True, "Order of the sinusoidal time embedding (cos, sin).", same=True)
    freq_shift: int = option(0, "Frequency shift of the time embedding.", ge=0, le=MAX_TIMESTEPS, same=True)
    dropout: float = option(0.0, "Dropout in the resnets.", ge=0, lt=1)

    # ----- diffusion -----
    ddpm_num_steps: int = option(1000, "Number of diffusion steps T.", ge=1, le=MAX_TIMESTEPS, same=True)
    ddpm_beta_schedule: str = option("squaredcos_cap_v2", choices=BETA_SCHEDULES, same=True)
    ddpm_beta_start: float = option(1e-4, "First beta (linear schedules).", gt=0, lt=1, same=True)
    ddpm_beta_end: float = option(0.02, "Last beta (linear schedules).", gt=0, lt=1, same=True)
    ddpm_variance_type: str = option("fixed_small", "Posterior variance.", choices=VARIANCE_TYPES, same=True)
    ddpm_clip_sample: bool = option(True, "Clip the predicted x0 to [-1, 1] in every sampler.", same=True)
    prediction_type: str = option("epsilon", "What the UNet predicts.", choices=PREDICTION_TYPES, same=True)
    loss_type: str = option(
        "l2",
        "l1, l2 (mean squared error) or pseudo_huber (iCT's distance, per image).",
        choices=("l1", "l2", "pseudo_huber"),
    )
    snr_gamma: Optional[float] = option(
        None, "Min-SNR-gamma loss weighting (Hang et al. 2023); 5 is the paper's. none: uniform.", gt=0, le=10**6
    )
    timestep_density: str = option(
        "uniform",
        "Training timesteps: uniform, or lognormal (EDM: log sigma ~ N(mean, std), sigma^2 = (1 - a) / a).",
        choices=TIMESTEP_DENSITIES,
        same=True,
    )
    timestep_lognormal_mean: float = option(-1.2, "lognormal: EDM's P_mean.", ge=-10, le=10, same=True)
    timestep_lognormal_std: float = option(1.2, "lognormal: EDM's P_std.", gt=0, le=10, same=True)
    timestep_uniform_share: float = option(
        0.1,
        "lognormal: the share of images drawn uniformly (the top steps samplers start from).",
        ge=0,
        le=1,
        same=True,
    )
    loss_weighting: str = option(
        "none",
        "learned: EDM2's uncertainty weighting, loss / exp(u(t)) + u(t), u trained with the UNet, never exported.",
        choices=("none", "learned"),
        same=True,
    )
    rescale_betas_zero_snr: bool = option(
        False, "Zero terminal SNR (Lin et al. 2024): needs v_prediction or sample, and trailing spacing.", same=True
    )
    ddpm_timestep_spacing: str = option(
        "trailing",
        "How samplers space fewer steps than T (saved for stock samplers).",
        choices=TIMESTEP_SPACINGS,
        same=True,
    )

    # ----- distillation into a few-step student (python -m pipeline.distill) -----
    distill_teacher: Optional[str] = option(
        None, "A trained pipeline (folder) to distil; starts from its EMA.", same=True
    )
    distill_grid_steps: int = option(
        50,
        "Consistency grid of N timesteps (LCMScheduler's original_inference_steps).",
        ge=1,
        le=MAX_TIMESTEPS,
        same=True,
    )
    distill_target: str = option(
        "teacher", "teacher: a DDIM step of it; data: the image's own noise.", choices=("teacher", "data"), same=True
    )
    distill_teacher_substeps: int = option(
        1, "teacher: the DDIM steps it takes across one interval of the grid.", ge=1, le=MAX_TIMESTEPS, same=True
    )
    distill_halving_steps: int = option(
        0,
        "0: every consistency link spans one grid interval. n: links first span to the data (diffusion fine-tuning "
        "toward the target), then halve every n optimizer steps down to one interval (ECT's curriculum).",
        ge=0,
        le=MAX_STEPS,
    )
    distill_reparam_steps: int = option(
        0,
        "The first steps of a distillation train the student as a plain diffusion model in its own prediction_type "
        "(a v student of an epsilon teacher learns v), then the consistency loss.",
        ge=0,
    )

    # ----- optimisation -----
    train_batch_size: int = option(32, "Images per process per micro-batch.", ge=1, le=4096, same=True)
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.", ge=1, le=1024, same=True)
    num_epochs: Optional[int] = option(None, "Budget in epochs (or --max_train_steps).", ge=1, le=10**6)
    max_train_steps: Optional[int] = option(800, "Budget in optimizer steps (or --num_epochs).", ge=1, le=MAX_STEPS)
    optimizer: str = option("adamw", choices=("adam", "adamw"), same=True)
    learning_rate: float = option(2e-3, "Peak learning rate.", gt=0, le=1e30)  # the optimizers compute in fp32
    lr_scheduler: str = option("cosine_with_min_lr", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = option(50, "Linear warmup, in optimizer steps.", ge=0, le=MAX_STEPS)
    min_learning_rate: float = option(1e-5, "Floor of cosine_with_min_lr.", ge=0, le=1)
    adam_beta1: float = option(0.9, ge=0, lt=1)
    adam_beta2: float = option(0.999, ge=0, lt=1)
    adam_weight_decay: float = option(0.0, "Decoupled for adamw, L2 for adam.", ge=0, le=10)
    adam_epsilon: float = option(1e-8, gt=0, lt=1)
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0: off.", ge=0, le=1e6)
    max_bad_steps: int = option(10, "Stop after this many non-finite steps in a row (0: never).", ge=0, le=MAX_STEPS)
    mixed_precision: str = option(
        "auto",
        "auto: bf16 where native (AMX, AVX512-BF16, GPUs), fp16 on older GPUs, else no (fp32).",
        choices=PRECISIONS,
    )
    allow_tf32: bool = option(True, "NVIDIA GPUs: TF32 matmuls and cuDNN autotuning.")
    torch_compile: bool = option(False, "torch.compile the UNet (pays on GPUs for long runs).")
    torch_compile_mode: str = option("default", "reduce-overhead: CUDA graphs.", choices=COMPILE_MODES)
    fused_optimizer: bool = option(True, "NVIDIA GPUs: Adam's fused kernel.")
    cpu_threads: Optional[int] = option(None, "Threads per process on CPU; default: the cores shared.", ge=1, le=1024)

    # ----- EMA (pipeline/ema.py: diffusers' EMAModel warmup, several decays) -----
    use_ema: bool = option(True, "Keep an EMA of the weights; export and sample from it.", same=True)
    ema_max_decay: float = option(0.999, "Decay of the EMA that is exported.", gt=0, lt=1, same=True)
    ema_extra_decays: list[float] = option(
        [], "More EMA lengths, each exported to ema-<decay>/.", gt=0, lt=1, same=True
    )
    ema_inv_gamma: float = option(1.0, gt=0, le=1e9, same=True)
    ema_power: float = option(0.75, "Warmup: decay = 1 - (1 + step / inv_gamma) ** -power.", gt=0, le=100, same=True)

    # ----- samples, logs, checkpoints -----
    output_dir: str = option("ddpm-quickstart", "Where the pipeline, checkpoints, samples and logs go.")
    seed: int = option(0, "Seed of every random draw (NumPy's range).", ge=0, le=MAX_SEED, same=True)
    logger: str = option("tensorboard", "Experiment tracker (alias: --report_to).", choices=LOGGERS)
    logging_dir: str = option("logs", "Tracker logs, inside --output_dir.")
    log_level: str = option("info", choices=("debug", "info", "warning", "error"))
    logging_steps: int = option(10, "Log loss, lr and images/s every N steps.", ge=1, le=MAX_STEPS)
    save_images_steps: int = option(
        400, "Sample grid every N steps and at the end (0: the end only).", ge=0, le=MAX_STEPS
    )
    save_images_epochs: Optional[int] = option(None, "Instead: a sample grid every N epochs.", ge=1, le=10**6)
    num_grid_images: int = option(64, "Images per grid (alias: --eval_batch_size).", ge=1, le=1024)
    grid_sampler: str = option("sde-dpmsolver++", "Grid sampler, shipped with the export.", choices=SAMPLERS)
    grid_inference_steps: int = option(
        20, "Grid sampler steps (alias: --ddpm_num_inference_steps).", ge=1, le=MAX_TIMESTEPS
    )
    save_model_steps: int = option(0, "Export the pipeline to pipeline-<step>/ every N steps.", ge=0, le=MAX_STEPS)
    save_model_epochs: Optional[int] = option(None, "Instead: every N epochs.", ge=1, le=10**6)
    fid_steps: int = option(0, "FID of the EMAs every N steps and at the end, best to best-fid/.", ge=0, le=MAX_STEPS)
    fid_reference: Optional[str] = option(None, "Statistics (.npz) from `python -m pipeline.evaluate reference`.")
    fid_num_images: int = option(1000, "Samples per FID during training.", ge=2, le=10**6)
    fid_sampler: str = option("sde-dpmsolver++", choices=SAMPLERS)
    fid_inference_steps: int = option(20, ge=1, le=MAX_TIMESTEPS)
    fid_mode: str = option("clean", "clean-fid mode.", choices=FID_MODES)
    inception_weights: Optional[str] = option(None, "Inception weights file, when clean-fid cannot download it.")
    checkpointing_steps: int = option(400, "Checkpoint every N steps; 0: none.", ge=0, le=MAX_STEPS)
    checkpoints_total_limit: Optional[int] = option(2, "Keep at most this many checkpoints.", ge=1, le=10**6)
    resume_from_checkpoint: Optional[str] = option(None, "latest, a checkpoint folder or its name.", same=None)
    overwrite_output_dir: bool = option(False, "Write over an --output_dir of other files or runs.", same=None)
    dry_run: bool = option(False, "Print the config, the UNet and the step count; exit.", same=None)
    preset: Optional[str] = option(None, "Set by --config and recorded, not read.", same=None)

    # ----- model card and Hub (pipeline/hub.py) -----
    push_to_hub: bool = option(False, "Upload the pipeline, card and samples at the end.")
    hub_model_id: Optional[str] = option(None, "'user/name' or 'name'; default: the output folder's name.")
    hub_private_repo: bool = option(False, "Create the Hub repository private.")
    hub_license: str = option("mit", "Licence of the weights (a Hub licence id).")
    hub_dataset_id: Optional[str] = option(None, "Hub dataset the card names; default: --dataset_name if a Hub id.")

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
            raise PipelineError(
                f"{first}: {preset} sets both {first} and {second}; a preset sets at most one" if preset else message
            )
        if chosen:
            values[second if chosen[0] == first else first] = None


# ---------------------------------------------------------------------------------------------
# Checks of one field (type, choices, bounds), shared with the model-folder checks of pipeline/model.py


def _type_error(name, value, expected):
    raise PipelineError(f"{name}: expected {expected}, got {value!r} ({type(value).__name__})")


def check_type(name: str, value, annotation=None):
    """`value` checked against the field's type (or `annotation`); a number in a string (PyYAML reads `1e-4` so)
    where a float belongs becomes the float. Returns the value."""
    annotation = TYPES[name] if annotation is None else annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        return None if value is None else check_type(name, value, next(arg for arg in args if arg is not type(None)))
    if value is None:
        raise PipelineError(f"{name}: must not be null")
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
    low, high = checks.get("gt", checks.get("ge")), checks.get("lt", checks.get("le"))
    interval = f"must lie in {'(' if 'gt' in checks else '['}{low}, {high}{')' if 'lt' in checks else ']'}"
    if ("gt" in checks and value <= low) or ("ge" in checks and value < low):
        if checks.get("gt") == 0:
            return "must be positive"
        return interval if high is not None else "must be non-negative" if low == 0 else f"must be at least {low}"
    if ("lt" in checks and value >= high) or ("le" in checks and value > high):
        return interval if low is not None else f"must be at most {high}"
    return None


def check_field(name: str, value, checks: Optional[dict] = None) -> None:
    """The choices and bounds of field `name` (or `checks`) hold for `value` (for a list, for each item)."""
    checks = FIELDS[name].metadata if checks is None else checks
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        if "choices" in checks and item not in checks["choices"]:
            raise PipelineError(
                f"{name}: unknown value {item!r}; expected one of {', '.join(map(str, checks['choices']))}"
            )
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            problem = _bound_error(checks, item)
            if problem:
                raise PipelineError(f"{name}: {problem}, got {item}")


# ---------------------------------------------------------------------------------------------
# The whole config


def validate(config: TrainingConfig) -> None:
    """Raise PipelineError for the first invalid field: each field's own checks, then the relations between fields."""
    for name in FIELDS:
        setattr(config, name, check_type(name, getattr(config, name)))
        check_field(name, getattr(config, name))
    for relations in (_check_data, _check_model, _check_diffusion, _check_optimisation, _check_outputs):
        relations(config)


def _check_data(config: TrainingConfig) -> None:
    if config.train_data_dir is None and config.dataset_name is None:
        raise PipelineError("dataset_name: set --dataset_name or --train_data_dir")
    if config.streaming:
        if config.dataset_name is None:
            raise PipelineError(
                "streaming: streams --dataset_name sources; a folder or zip on disk is decoded once into a much "
                "smaller cache"
            )
        if config.num_epochs is not None:
            raise PipelineError(
                "num_epochs: a streamed source has no known length; give the budget as --max_train_steps"
            )
        if config.max_train_samples is not None:
            raise PipelineError(
                "max_train_samples: drawing a random subset needs the whole source; not available with --streaming"
            )
    if config.intermediate_resolution is not None and config.intermediate_resolution < config.resolution:
        raise PipelineError(
            f"intermediate_resolution: {config.intermediate_resolution} is below resolution {config.resolution}"
        )


def _check_model(config: TrainingConfig) -> None:
    levels = len(config.block_out_channels)
    if not 1 <= levels <= 8:
        raise PipelineError(f"block_out_channels: needs 1 to 8 levels, got {levels}")
    for name in ("down_block_types", "up_block_types"):
        if len(getattr(config, name)) != levels:
            raise PipelineError(
                f"{name}: has {len(getattr(config, name))} entries but block_out_channels has {levels}"
            )
    for channels in config.block_out_channels:
        if channels % config.norm_num_groups:
            raise PipelineError(
                f"block_out_channels: {channels} is not a multiple of norm_num_groups={config.norm_num_groups}"
            )
    uses_attention = config.add_attention or any("Attn" in t for t in config.down_block_types + config.up_block_types)
    if uses_attention and any(channels % config.attention_head_dim for channels in config.block_out_channels):
        raise PipelineError(
            f"attention_head_dim: {config.attention_head_dim} does not divide every block_out_channels entry"
        )
    if config.resolution % config.downsampling_factor:
        raise PipelineError(
            f"resolution: {config.resolution} is not divisible by the UNet's downsampling factor "
            f"{config.downsampling_factor} ({levels} levels halve it {levels - 1} times)"
        )


def _check_diffusion(config: TrainingConfig) -> None:
    if config.rescale_betas_zero_snr and config.prediction_type == "epsilon":
        raise PipelineError(
            "rescale_betas_zero_snr: at zero terminal SNR the last step's input is pure noise, so an epsilon "
            "prediction says nothing about the image: use --prediction_type v_prediction (or sample)"
        )
    if config.ddpm_beta_end <= config.ddpm_beta_start:
        raise PipelineError(
            f"ddpm_beta_end: must be greater than ddpm_beta_start ({config.ddpm_beta_end} <= {config.ddpm_beta_start})"
        )


def _check_optimisation(config: TrainingConfig) -> None:
    if (config.num_epochs is None) == (config.max_train_steps is None):
        raise PipelineError("max_train_steps: give the budget as exactly one of --num_epochs and --max_train_steps")
    if config.lr_scheduler == "cosine_with_min_lr" and config.min_learning_rate >= config.learning_rate:
        raise PipelineError(
            f"min_learning_rate: must be below learning_rate ({config.min_learning_rate} >= {config.learning_rate})"
        )
    if len(set(config.ema_extra_decays + [config.ema_max_decay])) != len(config.ema_extra_decays) + 1:
        raise PipelineError(
            f"ema_extra_decays: must differ from each other and from ema_max_decay ({config.ema_max_decay}), got "
            f"{config.ema_extra_decays}"
        )


def _check_outputs(config: TrainingConfig) -> None:
    logging_parts = Path(config.logging_dir).parts
    if not logging_parts or Path(config.logging_dir).is_absolute() or ".." in logging_parts:
        raise PipelineError(f"logging_dir: must be a folder inside --output_dir, got {config.logging_dir!r}")
    distilling = config.distill_teacher is not None or "lcm" in (config.grid_sampler, config.fid_sampler)
    if distilling and config.distill_grid_steps > config.ddpm_num_steps:
        raise PipelineError(
            f"distill_grid_steps: {config.distill_grid_steps} is more than ddpm_num_steps={config.ddpm_num_steps}"
        )
    interval = config.ddpm_num_steps // config.distill_grid_steps
    if config.distill_teacher is not None and config.distill_teacher_substeps > interval:
        raise PipelineError(
            f"distill_teacher_substeps: {config.distill_teacher_substeps} steps across an interval of {interval} "
            f"timesteps (ddpm_num_steps {config.ddpm_num_steps} / distill_grid_steps {config.distill_grid_steps})"
        )
    for name, sampler in (("grid_inference_steps", config.grid_sampler), ("fid_inference_steps", config.fid_sampler)):
        if sampler == "lcm" and getattr(config, name) > config.distill_grid_steps:
            raise PipelineError(
                f"{name}: {getattr(config, name)} steps, but the consistency sampler (lcm) gives at most "
                f"distill_grid_steps={config.distill_grid_steps}"
            )
        if getattr(config, name) > config.ddpm_num_steps:
            raise PipelineError(
                f"{name}: {getattr(config, name)} sampler steps, but the model has only "
                f"ddpm_num_steps={config.ddpm_num_steps}"
            )
    if config.fid_steps and config.fid_reference is None:
        raise PipelineError(
            "fid_reference: --fid_steps needs reference statistics: make them with `python -m pipeline.evaluate "
            "reference`"
        )
    if not config.output_dir:
        raise PipelineError("output_dir: must not be empty")
    for name in ("hub_model_id", "hub_dataset_id"):
        if getattr(config, name) is not None and not HUB_ID.fullmatch(getattr(config, name)):
            value = getattr(config, name)
            raise PipelineError(
                f"{name}: must be 'name' or 'user/name' (letters, digits, '-', '_', '.'), got {value!r}"
            )
    if not config.hub_license:
        raise PipelineError("hub_license: must not be empty (use 'other' and say more in the card)")


# ---------------------------------------------------------------------------------------------
# Presets


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        for index, key in enumerate(keys):
            if isinstance(key, str) and key in keys[:index]:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", node.value[index][0].start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_preset(path) -> dict:
    """Read a YAML preset (or a run's training_config.json) into checked field values. Raises PipelineError naming the
    file or the field: missing, a folder, too large, not UTF-8, not YAML, too deeply nested, unknown keys, wrong types,
    both of an exclusive pair."""
    path = Path(path)
    if path.is_dir():
        raise PipelineError(f"config: {path} is a folder, not a preset file")
    if not path.is_file():
        raise PipelineError(f"config: no such file: {path}")
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise PipelineError(
            f"config: {path} is {path.stat().st_size:,} bytes; a preset holds at most {MAX_PRESET_BYTES:,}"
        )
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as error:
        raise PipelineError(f"config: {path} is not UTF-8 text ({error})") from None
    except (yaml.YAMLError, ValueError) as error:  # ValueError: an integer past Python's digit limit
        raise PipelineError(f"config: {path} is not valid YAML: {error}") from None
    except RecursionError:
        raise PipelineError(f"config: {path} is not valid YAML: nested too deeply") from None
    data = data or {}
    if isinstance(data, dict) and set(data) == {"config", "run"}:  # training_config.json written by a run
        data = data["config"]
    if not isinstance(data, dict):
        raise PipelineError(f"config: {path} must hold a mapping of option names to values")
    for name in data:
        if name not in FIELDS:
            raise PipelineError(f"{name}: unknown option in {path}")
    if data.get("image_channels") == "auto":
        data["image_channels"] = None
    values = {name: check_type(name, value) for name, value in data.items()}
    settle_pairs(values, set(values), preset=path)
    return values
