"""The training configuration: one typed dataclass, the single source of truth for every option.

Its defaults are the quickstart recipe (configs/quickstart.yaml spells them out with the reasons,
and a test keeps the two equal). pipeline/arguments.py fills it from a preset and the command
line; `TrainingConfig(...)` in Python applies the same rules. Invalid values raise ConfigError
naming the field, before any work.
"""

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional


DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2D",)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr", "polynomial")
SAMPLERS = ("ddpm", "ddim", "dpmsolver++", "sde-dpmsolver++", "unipc")
# Accelerate's trackers
LOGGERS = (
    "tensorboard",
    "wandb",
    "comet_ml",
    "mlflow",
    "aim",
    "clearml",
    "dvclive",
    "swanlab",
    "trackio",
)
LOG_LEVELS = ("debug", "info", "warning", "error")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
FID_MODES = ("clean", "legacy_pytorch")  # clean-fid's resizing modes
MAX_SEED = 2**32 - 1
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}")


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the field's name."""


@dataclass
class TrainingConfig:
    # ----- data -----
    train_data_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder of images (searched recursively) or a .zip of them."}
    )
    dataset_name: Optional[str] = field(
        default="data/fashion_mnist",
        metadata={
            "help": "Hub dataset id or local dataset folder (parquet, save_to_disk). Default: the embedded subset."
        },
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    split: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
    image_column: Optional[str] = field(
        default=None, metadata={"help": "Image column; default: the first Image feature."}
    )
    cache_dir: Optional[str] = field(
        default=None, metadata={"help": "datasets cache folder (default: HF_DATASETS_CACHE)."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Train on this many images drawn at random with --seed."}
    )
    resolution: int = field(default=28, metadata={"help": "Training resolution in pixels (square)."})
    image_channels: Optional[int] = field(
        default=None,
        metadata={
            "help": "The UNet's in/out channels: 1 (grayscale), 3 (RGB), or auto (none): 1 when every image is "
            "grayscale, else 3 (a stream is read as RGB)."
        },
    )
    intermediate_resolution: Optional[int] = field(
        default=None,
        metadata={"help": "Resize to this size first, then to --resolution (the report: 1024 -> 256 -> 64)."},
    )
    center_crop: bool = field(
        default=True, metadata={"help": "Scale the short side and crop the centre; false: squash to a square."}
    )
    min_image_size: Optional[int] = field(
        default=None, metadata={"help": "Skip images whose short side is below this; default: half of --resolution."}
    )
    strict_data: bool = field(
        default=False, metadata={"help": "Stop on the first unusable file instead of skipping it."}
    )
    max_image_bytes: int = field(
        default=64 * 2**20,
        metadata={"help": "Skip image files (or archive members) larger than this, without reading them."},
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes that decode images; default: every core for 256 images or more."}
    )
    random_flip: bool = field(default=True, metadata={"help": "Random horizontal flip, per batch, on the device."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream --dataset_name and decode on the fly, no cache: for sources larger than the disk."},
    )
    shuffle_buffer_size: int = field(
        default=1000, metadata={"help": "Shuffle buffer of the streamed source, in images."}
    )

    # ----- model: UNet2DModel arguments -----
    model_config_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "A UNet2DModel config (config.json, its folder, or a Hub id) to build the UNet from, instead of "
            "the fields below; its sample size and channels are set to --resolution and the data's channels."
        },
    )
    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64, 128], metadata={"help": "Channels per level."}
    )
    layers_per_block: int = field(default=1, metadata={"help": "Resnets per down level (up levels have one more)."})
    down_block_types: list[str] = field(
        default_factory=lambda: ["DownBlock2D", "DownBlock2D", "DownBlock2D"],
        metadata={"help": f"One of {DOWN_BLOCK_TYPES} per level."},
    )
    up_block_types: list[str] = field(
        default_factory=lambda: ["UpBlock2D", "UpBlock2D", "UpBlock2D"],
        metadata={"help": f"One of {UP_BLOCK_TYPES} per level."},
    )
    mid_block_type: Optional[str] = field(default="UNetMidBlock2D", metadata={"help": "UNetMidBlock2D, or none."})
    add_attention: bool = field(default=False, metadata={"help": "Self-attention in the mid block."})
    attention_head_dim: int = field(default=32, metadata={"help": "Channels per attention head."})
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups; divides every channel count."})
    act_fn: Literal["silu", "relu", "gelu", "mish"] = field(default="silu", metadata={"help": "Activation."})
    flip_sin_to_cos: bool = field(
        default=True, metadata={"help": "Order of the sinusoidal time embedding (cos, sin)."}
    )
    freq_shift: int = field(default=0, metadata={"help": "Frequency shift of the time embedding."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout in the resnets."})

    # ----- diffusion -----
    ddpm_num_steps: int = field(default=300, metadata={"help": "Number of diffusion steps T."})
    ddpm_beta_schedule: str = field(default="squaredcos_cap_v2", metadata={"help": f"One of {BETA_SCHEDULES}."})
    ddpm_beta_start: float = field(default=1e-4, metadata={"help": "First beta (linear schedules)."})
    ddpm_beta_end: float = field(default=0.02, metadata={"help": "Last beta (linear schedules)."})
    ddpm_variance_type: str = field(
        default="fixed_small", metadata={"help": f"Posterior variance, one of {VARIANCE_TYPES}."}
    )
    ddpm_clip_sample: bool = field(default=True, metadata={"help": "Clip the predicted x0 to [-1, 1] when sampling."})
    prediction_type: str = field(
        default="epsilon", metadata={"help": f"What the UNet predicts, one of {PREDICTION_TYPES}."}
    )
    loss_type: str = field(default="l2", metadata={"help": "l1 or l2 (mean squared error)."})
    snr_gamma: Optional[float] = field(
        default=None,
        metadata={
            "help": "Min-SNR-gamma loss weighting (Hang et al. 2023, arXiv:2303.09556): each timestep's loss "
            "weighted by min(SNR, gamma) / SNR (epsilon), / (SNR + 1) (v) or as is (sample); 5 is the paper's value. "
            "none: uniform."
        },
    )
    rescale_betas_zero_snr: bool = field(
        default=False,
        metadata={
            "help": "Rescale the betas to zero terminal SNR (Lin et al. 2024, arXiv:2305.08891), so the last step "
            "is pure noise; needs v_prediction or sample prediction, and sampling with trailing timesteps."
        },
    )
    ddpm_timestep_spacing: str = field(
        default="trailing",
        metadata={
            "help": f"How samplers space fewer steps than T, one of {TIMESTEP_SPACINGS} (saved in the scheduler "
            "config, so stock diffusers samplers space them the same way). trailing starts every sampler at "
            "t = T - 1, where its initial noise belongs: measured better than diffusers' leading for every fast "
            "sampler (bench/README.md, quality per compute)."
        },
    )

    # ----- optimisation -----
    train_batch_size: int = field(default=64, metadata={"help": "Images per process per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    num_epochs: Optional[int] = field(
        default=None, metadata={"help": "Budget in epochs (set this or --max_train_steps)."}
    )
    max_train_steps: Optional[int] = field(
        default=800, metadata={"help": "Budget in optimizer steps (set this or --num_epochs)."}
    )
    optimizer: str = field(default="adamw", metadata={"help": "adam or adamw."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler: str = field(default="cosine_with_min_lr", metadata={"help": f"One of {LR_SCHEDULERS}."})
    lr_warmup_steps: int = field(default=50, metadata={"help": "Linear warmup, in optimizer steps."})
    min_learning_rate: float = field(default=1e-5, metadata={"help": "Floor of cosine_with_min_lr."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = field(default=0.0, metadata={"help": "Decoupled for adamw, L2 for adam."})
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 turns clipping off."})
    max_bad_steps: int = field(
        default=10,
        metadata={
            "help": "Steps with a non-finite loss or gradient are skipped; stop after this many in a row (0: never "
            "stop)."
        },
    )
    mixed_precision: str = field(default="bf16", metadata={"help": "no, fp16 or bf16."})
    allow_tf32: bool = field(
        default=True,
        metadata={
            "help": "On NVIDIA GPUs, TF32 for fp32 matmuls and convolutions (and cuDNN autotuning); no effect on CPUs."
        },
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the UNet with torch.compile (inductor): pays on GPUs for long runs; minutes of compile "
            "time."
        },
    )
    torch_compile_mode: str = field(
        default="default",
        metadata={
            "help": f"torch.compile mode with --torch_compile, one of {COMPILE_MODES} (reduce-overhead: CUDA graphs)."
        },
    )
    fused_optimizer: bool = field(
        default=True,
        metadata={"help": "On NVIDIA GPUs, Adam's fused kernel (one launch per step); no effect on CPUs."},
    )
    cpu_threads: Optional[int] = field(
        default=None,
        metadata={
            "help": "Threads per process when training on CPU; default: the available cores shared by the local "
            "processes."
        },
    )

    # ----- EMA (pipeline/ema.py: diffusers' EMAModel warmup, several decays) -----
    use_ema: bool = field(default=True, metadata={"help": "Keep an EMA of the weights; export and sample from it."})
    ema_max_decay: float = field(default=0.999, metadata={"help": "Decay of the EMA that is exported and sampled."})
    ema_extra_decays: list[float] = field(
        default_factory=list,
        metadata={
            "help": "More EMA decays tracked in the same update, checkpointed, scored by FID during training and "
            "exported to <output_dir>/ema-<decay>/: the best EMA length is only known after training."
        },
    )
    ema_inv_gamma: float = 1.0
    ema_power: float = field(
        default=0.75, metadata={"help": "EMA warmup: decay = 1 - (1 + step / inv_gamma) ** -power."}
    )

    # ----- samples, logs, checkpoints -----
    output_dir: str = field(
        default="ddpm-quickstart", metadata={"help": "Where the pipeline, checkpoints, samples and logs go."}
    )
    seed: int = 0
    logger: str = field(
        default="tensorboard",
        metadata={"help": f"Experiment tracker, one of {LOGGERS} or none (alias: --report_to)."},
    )
    logging_dir: str = field(default="logs", metadata={"help": "Tracker logs, relative to --output_dir."})
    log_level: str = field(default="info", metadata={"help": f"Messages shown, one of {LOG_LEVELS}."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss, lr and images/s every N optimizer steps."})
    save_images_steps: int = field(
        default=400, metadata={"help": "Sample grid every N steps (and at the end); 0: at the end only."}
    )
    save_images_epochs: Optional[int] = field(
        default=None, metadata={"help": "Instead of --save_images_steps: a sample grid every N epochs."}
    )
    num_grid_images: int = field(
        default=64, metadata={"help": "Images in each sample grid (alias: --eval_batch_size)."}
    )
    grid_sampler: str = field(
        default="sde-dpmsolver++",
        metadata={
            "help": f"Sampler for the grids, one of {SAMPLERS}; also the default of pipeline.sample and "
            "pipeline.evaluate for the exported model."
        },
    )
    grid_inference_steps: int = field(
        default=20, metadata={"help": "Sampler steps for the grids (alias: --ddpm_num_inference_steps)."}
    )
    save_model_steps: int = field(
        default=0,
        metadata={
            "help": "Export the pipeline (EMA weights) every N steps to <output_dir>/pipeline-<step>/; 0: never."
        },
    )
    save_model_epochs: Optional[int] = field(
        default=None, metadata={"help": "Instead of --save_model_steps: export the pipeline every N epochs."}
    )
    fid_steps: int = field(
        default=0,
        metadata={
            "help": "Every N steps (and at the end): FID of EMA samples against --fid_reference, logged; the best "
            "weights are exported to <output_dir>/best-fid. 0: off."
        },
    )
    fid_reference: Optional[str] = field(
        default=None, metadata={"help": "Statistics (.npz) from `python -m pipeline.evaluate reference`."}
    )
    fid_num_images: int = field(default=1000, metadata={"help": "Samples per FID during training."})
    fid_sampler: str = field(
        default="sde-dpmsolver++", metadata={"help": f"Sampler for the FID samples, one of {SAMPLERS}."}
    )
    fid_inference_steps: int = field(default=20, metadata={"help": "Sampler steps for the FID samples."})
    fid_mode: str = field(default="clean", metadata={"help": f"clean-fid mode, one of {FID_MODES}."})
    inception_weights: Optional[str] = field(
        default=None, metadata={"help": "Inception weights file, when clean-fid cannot download it."}
    )
    checkpointing_steps: int = field(default=400, metadata={"help": "Checkpoint every N optimizer steps; 0: none."})
    checkpoints_total_limit: Optional[int] = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={"help": "'latest', a checkpoint folder, or a checkpoint's name in <output_dir>/checkpoints."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an --output_dir that holds checkpoints of an earlier one, deleting them."
        },
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Print the resolved config, model size and step count; exit."}
    )
    preset: Optional[str] = field(
        default=None, metadata={"help": "The preset this config came from: set by --config and recorded, not read."}
    )

    # ----- model card and Hub (pipeline/hub.py) -----
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the exported pipeline, card and samples at the end of training."}
    )
    hub_model_id: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub repository, 'user/name' or 'name' (under the token's user); default: the output folder's "
            "name."
        },
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository private."})
    hub_license: str = field(
        default="mit", metadata={"help": "Licence of the weights, as the model card states it (a Hub licence id)."}
    )
    hub_dataset_id: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub dataset id the card names as training data; default: --dataset_name when it is a Hub id."
        },
    )

    def __post_init__(self):
        # Of each pair a run uses one. Given one in Python (`TrainingConfig(num_epochs=10)`), the other one's
        # default steps aside, as on the command line; giving both explicitly is an error (in validate).
        for a, b in EXCLUSIVE_PAIRS:
            if getattr(self, a) is not None and getattr(self, b) is not None:
                a_default, b_default = getattr(self, a) == _default(a), getattr(self, b) == _default(b)
                if a_default and not b_default:
                    setattr(self, a, None)
                elif b_default and not a_default:
                    setattr(self, b, None)
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


# ---------------------------------------------------------------------------------------------
# Validation


def _fail(name: str, message: str):
    raise ConfigError(f"{name}: {message}")


def _check_choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        _fail(name, f"unknown value {value!r}; expected one of {', '.join(map(str, choices))}")


def _check_positive(config, *names, allow_zero=False):
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if not (value >= 0 if allow_zero else value > 0) or (isinstance(value, float) and not math.isfinite(value)):
            _fail(name, f"must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def validate(config: TrainingConfig) -> None:
    """Raise ConfigError for the first invalid field."""
    if config.train_data_dir is None and config.dataset_name is None:
        _fail("dataset_name", "set --dataset_name or --train_data_dir")
    if config.train_data_dir is not None and config.dataset_name is not None:
        _fail("train_data_dir", "set only one of --train_data_dir and --dataset_name")
    _check_choice(config, "image_channels", (None, 1, 3))
    _check_positive(config, "resolution", "train_batch_size", "gradient_accumulation_steps", "ddpm_num_steps")
    _check_positive(
        config, "learning_rate", "adam_epsilon", "num_grid_images", "grid_inference_steps", "logging_steps"
    )
    _check_positive(
        config, "max_train_samples", "num_epochs", "max_train_steps", "checkpoints_total_limit", "cpu_threads"
    )
    _check_positive(
        config, "lr_warmup_steps", "min_learning_rate", "adam_weight_decay", "max_grad_norm", allow_zero=True
    )
    _check_positive(config, "intermediate_resolution", "preprocessing_num_workers")
    _check_positive(config, "min_image_size", allow_zero=True)
    _check_positive(config, "shuffle_buffer_size", "max_image_bytes")
    if config.streaming:
        if config.dataset_name is None:
            _fail(
                "streaming",
                "streams --dataset_name sources; a folder or zip on disk is decoded once into a much smaller cache",
            )
        if config.num_epochs is not None:
            _fail("num_epochs", "a streamed source has no known length; give the budget as --max_train_steps")
        if config.max_train_samples is not None:
            _fail(
                "max_train_samples", "drawing a random subset needs the whole source; not available with --streaming"
            )
    if config.intermediate_resolution is not None and config.intermediate_resolution < config.resolution:
        _fail("intermediate_resolution", f"{config.intermediate_resolution} is below resolution {config.resolution}")
    _check_positive(config, "save_images_steps", "checkpointing_steps", "dropout", "freq_shift", allow_zero=True)

    # model
    num_levels = len(config.block_out_channels)
    if num_levels == 0:
        _fail("block_out_channels", "needs at least one level")
    for name in ("down_block_types", "up_block_types"):
        if len(getattr(config, name)) != num_levels:
            _fail(name, f"has {len(getattr(config, name))} entries but block_out_channels has {num_levels}")
    for name, choices in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
        for value in getattr(config, name):
            if value not in choices:
                _fail(name, f"unknown block {value!r}; expected one of {', '.join(choices)}")
    if config.mid_block_type is not None:
        _check_choice(config, "mid_block_type", MID_BLOCK_TYPES)
    _check_positive(config, "layers_per_block", "norm_num_groups", "attention_head_dim")
    for channels in config.block_out_channels:
        if channels <= 0 or channels % config.norm_num_groups:
            _fail(
                "block_out_channels",
                f"{channels} is not a positive multiple of norm_num_groups={config.norm_num_groups}",
            )
    uses_attention = config.add_attention or any("Attn" in t for t in config.down_block_types + config.up_block_types)
    if uses_attention and any(channels % config.attention_head_dim for channels in config.block_out_channels):
        _fail("attention_head_dim", f"{config.attention_head_dim} does not divide every block_out_channels entry")
    _check_choice(config, "act_fn", typing.get_args(TrainingConfig.__annotations__["act_fn"]))
    if config.resolution % config.downsampling_factor:
        _fail(
            "resolution",
            f"{config.resolution} is not divisible by the UNet's downsampling factor {config.downsampling_factor} "
            f"({num_levels} levels halve it {num_levels - 1} times)",
        )
    if config.dropout >= 1:
        _fail("dropout", f"must be below 1, got {config.dropout}")

    # diffusion
    _check_choice(config, "ddpm_beta_schedule", BETA_SCHEDULES)
    _check_choice(config, "ddpm_variance_type", VARIANCE_TYPES)
    _check_choice(config, "prediction_type", PREDICTION_TYPES)
    _check_choice(config, "loss_type", ("l1", "l2"))
    _check_choice(config, "ddpm_timestep_spacing", TIMESTEP_SPACINGS)
    _check_positive(config, "snr_gamma")
    if config.rescale_betas_zero_snr and config.prediction_type == "epsilon":
        _fail(
            "rescale_betas_zero_snr",
            "at zero terminal SNR the last step's input is pure noise, so an epsilon prediction says nothing about "
            "the image: use --prediction_type v_prediction (or sample)",
        )
    if not 0 < config.ddpm_beta_start < 1:
        _fail("ddpm_beta_start", f"must lie in (0, 1), got {config.ddpm_beta_start}")
    if not 0 < config.ddpm_beta_end < 1:
        _fail("ddpm_beta_end", f"must lie in (0, 1), got {config.ddpm_beta_end}")
    if config.ddpm_beta_end <= config.ddpm_beta_start:
        _fail(
            "ddpm_beta_end",
            f"must be greater than ddpm_beta_start ({config.ddpm_beta_end} <= {config.ddpm_beta_start})",
        )

    # optimisation
    _check_choice(config, "optimizer", ("adam", "adamw"))
    _check_choice(config, "lr_scheduler", LR_SCHEDULERS)
    _check_choice(config, "mixed_precision", ("no", "fp16", "bf16"))
    _check_choice(config, "torch_compile_mode", COMPILE_MODES)
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(config, name) < 1:
            _fail(name, f"must lie in [0, 1), got {getattr(config, name)}")
    if (config.num_epochs is None) == (config.max_train_steps is None):
        _fail("max_train_steps", "give the budget as exactly one of --num_epochs and --max_train_steps")
    if config.lr_scheduler == "cosine_with_min_lr" and config.min_learning_rate >= config.learning_rate:
        _fail(
            "min_learning_rate", f"must be below learning_rate ({config.min_learning_rate} >= {config.learning_rate})"
        )
    if not 0 < config.ema_max_decay < 1:
        _fail("ema_max_decay", f"must lie in (0, 1), got {config.ema_max_decay}")
    for decay in config.ema_extra_decays:
        if not 0 < decay < 1:
            _fail("ema_extra_decays", f"each decay must lie in (0, 1), got {decay}")
    if len(set(config.ema_extra_decays + [config.ema_max_decay])) != len(config.ema_extra_decays) + 1:
        _fail(
            "ema_extra_decays",
            f"must differ from each other and from ema_max_decay ({config.ema_max_decay}), got "
            f"{config.ema_extra_decays}",
        )
    _check_positive(config, "ema_inv_gamma", "ema_power")
    _check_positive(config, "max_bad_steps", allow_zero=True)

    # outputs
    if isinstance(config.seed, bool) or not 0 <= config.seed <= MAX_SEED:
        _fail("seed", f"must lie in [0, {MAX_SEED}] (NumPy's seed range), got {config.seed}")
    _check_choice(config, "logger", LOGGERS + ("none",))
    _check_choice(config, "log_level", LOG_LEVELS)
    if not config.logging_dir or Path(config.logging_dir).is_absolute() or ".." in Path(config.logging_dir).parts:
        _fail("logging_dir", f"must be a folder inside --output_dir, got {config.logging_dir!r}")
    _check_positive(config, "save_images_epochs", "save_model_epochs")
    _check_positive(config, "save_model_steps", allow_zero=True)
    _check_choice(config, "grid_sampler", SAMPLERS)
    _check_positive(config, "fid_steps", allow_zero=True)
    _check_positive(config, "fid_inference_steps")
    for name in ("grid_inference_steps", "fid_inference_steps"):
        if getattr(config, name) > config.ddpm_num_steps:
            _fail(
                name,
                f"{getattr(config, name)} sampler steps, but the model has only "
                f"ddpm_num_steps={config.ddpm_num_steps}",
            )
    if config.fid_num_images < 2:
        _fail("fid_num_images", f"must be at least 2 (a covariance needs two samples), got {config.fid_num_images}")
    _check_choice(config, "fid_sampler", SAMPLERS)
    _check_choice(config, "fid_mode", FID_MODES)
    if config.fid_steps and config.fid_reference is None:
        _fail(
            "fid_reference",
            "--fid_steps needs reference statistics: make them with `python -m pipeline.evaluate reference`",
        )
    if not config.output_dir:
        _fail("output_dir", "must not be empty")
    if config.hub_model_id is not None and not HUB_ID.fullmatch(config.hub_model_id):
        _fail(
            "hub_model_id",
            f"must be 'name' or 'user/name' (letters, digits, '-', '_', '.'), got {config.hub_model_id!r}",
        )
    if config.hub_dataset_id is not None and not HUB_ID.fullmatch(config.hub_dataset_id):
        _fail("hub_dataset_id", f"must be 'name' or 'user/name', got {config.hub_dataset_id!r}")
    if not config.hub_license:
        _fail("hub_license", "must not be empty (use 'other' and say more in the card)")


# Pairs of options of which a run uses exactly one. Giving one of them on the command line
# replaces the other if the preset set it (`--config report.yaml --max_train_steps 10`).
EXCLUSIVE_PAIRS = (("num_epochs", "max_train_steps"), ("train_data_dir", "dataset_name"))


def _default(name: str):
    """A field's default value."""
    item = TrainingConfig.__dataclass_fields__[name]
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
