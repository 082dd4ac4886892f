"""The UNet and the noise scheduler, built from the configuration."""

import inspect
from pathlib import Path
from typing import NamedTuple

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    LCMScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)

from .config import TrainingConfig, check_field, check_type
from .errors import PipelineError
from .files import read_json


def unet_config(config: TrainingConfig) -> dict:
    """The UNet2DModel config of the run: from --model_config_name_or_path (a config.json, its folder or a Hub id)
    when given, else from the architecture fields; the sample size and channels are the run's. Channels still
    to be read from the data (auto) count as 3 here."""
    channels = config.image_channels or 3
    if config.model_config_name_or_path is None:
        architecture = {
            "block_out_channels": tuple(config.block_out_channels),
            "layers_per_block": config.layers_per_block,
            "down_block_types": tuple(config.down_block_types),
            "up_block_types": tuple(config.up_block_types),
            "mid_block_type": config.mid_block_type,
            "add_attention": config.add_attention,
            "attention_head_dim": config.attention_head_dim,
            "norm_num_groups": config.norm_num_groups,
            "act_fn": config.act_fn,
            "flip_sin_to_cos": config.flip_sin_to_cos,
            "freq_shift": config.freq_shift,
            "dropout": config.dropout,
        }
    else:
        source = Path(config.model_config_name_or_path)
        try:
            if source.is_file():  # a config file of any name
                architecture = read_json(source)
            else:  # a model folder or a Hub id, as diffusers reads them
                architecture = dict(UNet2DModel.load_config(config.model_config_name_or_path))
            check_unet_config(architecture, "model_config_name_or_path")
        except (OSError, ValueError) as error:
            raise PipelineError(
                "model_config_name_or_path: cannot read a UNet2DModel config from "
                f"{config.model_config_name_or_path!r} ({type(error).__name__}: {str(error).splitlines()[0]})"
            ) from None
        if architecture.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise PipelineError(
                f"model_config_name_or_path: holds a {architecture['_class_name']} config, not a UNet2DModel's"
            )
    return {**architecture, "sample_size": config.resolution, "in_channels": channels, "out_channels": channels}


def build_unet(config: TrainingConfig) -> UNet2DModel:
    """A freshly initialised UNet2DModel for the run's architecture."""
    architecture = unet_config(config)
    try:
        return UNet2DModel.from_config(architecture)
    except (TypeError, ValueError) as error:  # a config file whose values UNet2DModel refuses
        raise PipelineError(f"model_config_name_or_path: the UNet cannot be built ({error})") from None


def x0_clipping(clip_sample: bool) -> dict:
    """Scheduler config keys with which every diffusers sampler clips the predicted x0 to [-1, 1] when
    `clip_sample` asks for it. DDPM and DDIM read `clip_sample`; DPM-Solver++ and UniPC read only `thresholding`,
    which with `sample_max_value` 1 clips exactly as `clip_sample` does (the dynamic threshold is clamped to
    [1, sample_max_value]). Without it a cosine-schedule epsilon model sampled from t = T - 1 (trailing spacing),
    where its noise prediction is divided by sqrt(alpha_bar) ~ 0.005, sends DPM-Solver++ off the data range
    (bench/README.md, quality per compute)."""
    return {"thresholding": True, "sample_max_value": 1.0} if clip_sample else {}


# The noise scheduler's config keys -> the TrainingConfig fields that set them: the forward process (what a student
# shares with its teacher), then how it is sampled
SCHEDULE_KEYS = {
    "num_train_timesteps": "ddpm_num_steps",
    "beta_schedule": "ddpm_beta_schedule",
    "beta_start": "ddpm_beta_start",
    "beta_end": "ddpm_beta_end",
    "prediction_type": "prediction_type",
    "rescale_betas_zero_snr": "rescale_betas_zero_snr",
}
SCHEDULER_KEYS = {
    **SCHEDULE_KEYS,
    "variance_type": "ddpm_variance_type",
    "clip_sample": "ddpm_clip_sample",
    "timestep_spacing": "ddpm_timestep_spacing",
}


def build_noise_scheduler(config: TrainingConfig) -> DDPMScheduler:
    """The training scheduler: the forward process every sampler of the model is built from."""
    options = {key: getattr(config, name) for key, name in SCHEDULER_KEYS.items()}
    return DDPMScheduler(**options, **x0_clipping(config.ddpm_clip_sample))


SAMPLER_CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmsolver++": DPMSolverMultistepScheduler,
    "sde-dpmsolver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
    "lcm": LCMScheduler,
}


def make_sampler(name: str, scheduler_config: dict, solver_order: int = 2, **options):
    """A sampler by name (its checks live in pipeline.sample.SamplingRequest), sharing the model's betas, prediction
    type, spacing and x0 clipping, from any of these schedulers' saved configs.

    ddpm: the ancestral chain (on a strided subsequence when steps < T); ddim: deterministic for eta = 0;
    dpmsolver++: the multistep DPM-Solver++ of order `solver_order` (2 or 3); sde-dpmsolver++: its stochastic
    variant (Lu et al. 2022), which draws fresh noise at each step like the DDPM chain and forgives more of an
    imperfect model's error at few steps; unipc: the UniPC predictor-corrector (Zhao et al. 2023), whose `step`
    takes no generator, so the stock `DDPMPipeline` cannot run it; lcm: the multistep consistency sampler (Luo et
    al. 2023) of a distilled student, x0 predictions re-noised on its grid of `original_inference_steps`.
    A config that clips x0 (`clip_sample`, range 1) makes every sampler clip it (see x0_clipping); one saved by a
    sampler without `clip_sample` (DPM-Solver++, LCM) clips as its `thresholding` says.
    """
    config = {key: value for key, value in scheduler_config.items() if not key.startswith("_")}
    if config.get("clip_sample") and config.get("clip_sample_range", 1.0) == 1.0:
        config.update(x0_clipping(True))
    config.setdefault("clip_sample", bool(config.get("thresholding")))
    if "dpmsolver" in name:
        options.update(algorithm_type=name, solver_order=solver_order)
    sampler_class = SAMPLER_CLASSES[name]
    accepted = inspect.signature(sampler_class.__init__).parameters
    return sampler_class(**{key: value for key, value in {**config, **options}.items() if key in accepted})


def export_scheduler(config: TrainingConfig):
    """The scheduler a pipeline ships: the sampler its run chose by measurement for its grids (`grid_sampler`, the
    default of every preset from bench/README.md), so that the stock DDPMPipeline samples with it as it is. UniPC
    cannot run inside DDPMPipeline, so a run that grids with it ships the DDPM chain; a distilled student ships
    LCMScheduler on its consistency grid."""
    name = "ddpm" if config.grid_sampler == "unipc" else config.grid_sampler
    options = {"original_inference_steps": config.distill_grid_steps} if name == "lcm" else {}
    return make_sampler(name, build_noise_scheduler(config).config, **options)


# A UNet config's keys -> the TrainingConfig fields whose checks (pipeline/config.py) they share
UNET_KEYS = {
    "sample_size": "resolution",
    "block_out_channels": "block_out_channels",
    "layers_per_block": "layers_per_block",
    "norm_num_groups": "norm_num_groups",
    "attention_head_dim": "attention_head_dim",
}


def _check_keys(values: dict, keys: dict, where: str) -> None:
    for key, name in keys.items():
        if values.get(key) is not None:
            try:
                check_field(name, check_type(name, values[key]))
            except PipelineError as problem:
                raise PipelineError(f"{where}: {key}{str(problem)[len(name) :]}") from None


def check_unet_config(values: dict, where: str = "unet/config.json") -> None:
    """A UNet2DModel config is sane before anything is built: sizes within the training options' bounds, channels
    1-4 (or the 4 of a latent UNet), at most 8 levels."""
    _check_keys(values, UNET_KEYS, where)
    for key in ("in_channels", "out_channels"):
        if values.get(key) is not None and values[key] not in (1, 2, 3, 4):
            raise PipelineError(f"{where}: {key} must be 1 to 4, got {values[key]!r}")
    if len(values.get("block_out_channels") or []) > 8:
        raise PipelineError(f"{where}: block_out_channels: at most 8 levels, got {len(values['block_out_channels'])}")


def check_scheduler_config(values: dict, where: str = "scheduler_config.json") -> None:
    """A noise scheduler's config is sane before anything is built: T in [1, 10,000], a known beta schedule and
    prediction type, betas in (0, 1) (also trained ones), increasing for the linear schedules."""
    _check_keys(values, SCHEDULER_KEYS, where)
    if values.get("beta_schedule") in ("linear", "scaled_linear") and values.get("beta_end", 1) <= values.get(
        "beta_start", 0
    ):
        raise PipelineError(
            f"{where}: beta_end must be above beta_start, got {values.get('beta_end')} <= {values.get('beta_start')}"
        )
    trained = values.get("trained_betas")
    if trained is not None and (
        not isinstance(trained, list)
        or len(trained) != values.get("num_train_timesteps", len(trained))
        or not all(isinstance(beta, (int, float)) and not isinstance(beta, bool) and 0 < beta < 1 for beta in trained)
    ):
        raise PipelineError(f"{where}: trained_betas must be num_train_timesteps numbers in (0, 1)")


def check_model_folder(folder: Path) -> None:
    """A DDPMPipeline folder whose scheduler and UNet configs pass the checks above (each JSON file bounded in size
    and depth), so that nothing is built from an absurd config (a T of 10^9, negative betas, an unknown schedule)."""
    for name, check in (
        ("scheduler/scheduler_config.json", check_scheduler_config),
        ("unet/config.json", check_unet_config),
    ):
        try:
            check(read_json(Path(folder) / name), str(Path(folder) / name))
        except (TypeError, ValueError) as problem:
            raise PipelineError(f"{Path(folder) / name}: malformed ({problem})") from None


def saved_schedule(folder: Path) -> dict:
    """The training options of the noise schedule that a pipeline folder's scheduler_config.json defines (any of this
    project's samplers: every one holds the forward process's keys), checked as the options are."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    saved = read_json(path)
    if saved.get("trained_betas") is not None:
        raise PipelineError(f"distill_teacher: {path} gives trained_betas, which this pipeline cannot train with")
    missing = [key for key in SCHEDULE_KEYS if key not in saved]
    if missing:
        raise PipelineError(f"distill_teacher: {path} does not say {', '.join(missing)}")
    _check_keys(saved, SCHEDULE_KEYS, str(path))
    return {name: check_type(name, saved[key]) for key, name in SCHEDULE_KEYS.items()}


class Teacher(NamedTuple):
    unet: UNet2DModel  # frozen
    prediction_type: str  # its own, from its scheduler config: a student may predict another (v of an epsilon teacher)


def load_teacher(config: TrainingConfig) -> Teacher:
    """A distillation's teacher UNet (the EMA weights its pipeline exports), frozen, checked before anything is
    trained: a stock DDPMPipeline folder whose configs pass check_model_folder, for the resolution, channels,
    architecture and noise schedule of the run (all but the prediction type, which the student chooses)."""
    folder, output_dir = Path(config.distill_teacher).resolve(), Path(config.output_dir).resolve()
    if folder == output_dir or folder in output_dir.parents or output_dir in folder.parents:
        raise PipelineError(
            f"output_dir: {config.output_dir} would write into the teacher's folder {config.distill_teacher}; give "
            "the student a folder of its own"
        )
    index = read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    if index.get("_class_name") != "DDPMPipeline":
        found = f"its model_index.json names {index.get('_class_name')!r}" if index else "it holds no model_index.json"
        raise PipelineError(
            f"distill_teacher: {folder} is not a DDPMPipeline ({found}); pass a training output folder"
        )
    check_model_folder(folder)
    unet_config = read_json(folder / "unet" / "config.json")
    if unet_config.get("sample_size") != config.resolution:
        raise PipelineError(
            f"distill_teacher: its images are {unet_config.get('sample_size')} px, the data's resolution is "
            f"{config.resolution} px; distil at the teacher's resolution (drop --resolution)"
        )
    if config.image_channels not in (None, unet_config.get("in_channels")):
        raise PipelineError(
            f"distill_teacher: it makes {unet_config.get('in_channels')}-channel images, the run "
            f"{config.image_channels}-channel ones"
        )
    schedule = saved_schedule(folder)
    prediction_type = schedule.pop("prediction_type")
    differing = {name: value for name, value in schedule.items() if getattr(config, name) != value}
    if differing:
        details = ", ".join(
            f"{name} {value!r} (the run: {getattr(config, name)!r})" for name, value in differing.items()
        )
        raise PipelineError(
            f"distill_teacher: its scheduler_config.json says {details}; a student learns its teacher's noise "
            "schedule (drop the flags that change it, or fix the teacher's training_config.json)"
        )
    teacher = UNet2DModel.from_pretrained(folder / "unet")
    own = build_unet(config).state_dict()
    if {name: tuple(value.shape) for name, value in teacher.state_dict().items()} != {
        name: tuple(value.shape) for name, value in own.items()
    }:
        raise PipelineError(f"distill_teacher: {folder / 'unet'} is not the UNet the run's architecture options build")
    return Teacher(teacher.eval().requires_grad_(False), prediction_type)


def count_parameters(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def describe_unet(unet: UNet2DModel) -> str:
    """A table of the UNet's levels: resolution, channels, blocks, resnets and attention."""
    lines = [
        f"{'level':>5}  {'resolution':>10}  {'channels':>8}  {'down block':<24}  {'up block':<22}  resnets (down/up)"
    ]
    for level, channels in enumerate(unet.config.block_out_channels):
        size = unet.config.sample_size // 2**level
        down, up = unet.down_blocks[level], unet.up_blocks[-1 - level]
        lines.append(
            f"{level:>5}  {f'{size}x{size}':>10}  {channels:>8}  {type(down).__name__:<24}  {type(up).__name__:<22}  "
            f"{len(down.resnets)}/{len(up.resnets)}"
        )
    if unet.mid_block is None:
        mid = "none"
    else:
        attention = "with" if unet.mid_block.attentions[0] is not None else "no"
        mid = f"{type(unet.mid_block).__name__} ({attention} attention)"
    lines.append(f"mid block: {mid}")
    lines.append(f"parameters: {count_parameters(unet):,}")
    return "\n".join(lines)
