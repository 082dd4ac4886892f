"""Sampling from a UNet with any of diffusers' samplers, built from the training scheduler's config.

`python -m pipeline.sample --model ddpm-quickstart --sampler dpmsolver++ --steps 20` writes
numbered PNGs, a grid and `samples.json` (what was run, how long it took) into a folder.
"""

import inspect
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMPipeline
from PIL import Image
from tqdm.auto import tqdm

from .device import sampling_dtype
from .errors import PipelineError
from .files import FILE, read_json, refuse_foreign, staged, write_json
from .model import check_model_folder, make_sampler
from .record import RECORD_NAME, read_record


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_IMAGES = 10**6  # per command; FID at 50,000 samples is the most anyone asks for


def image_generators(seed: int, start: int, count: int, device="cpu") -> list[torch.Generator]:
    """One generator per image, from independent streams of `seed`: image i is the same whatever the batch size.

    On the CPU (the default) an image is also the same on every machine; generators on a GPU save the
    per-step copy of the noise, but draw other numbers (CUDA's Philox, not the CPU's Mersenne twister)."""
    # the children SeedSequence(seed).spawn(n) would give, made directly: linear in the images, whatever `start`
    states = [np.random.SeedSequence(seed, spawn_key=(index,)) for index in range(start, start + count)]
    seeds = [int(state.generate_state(1, dtype=np.uint64)[0] >> 1) for state in states]
    return [torch.Generator(device=device).manual_seed(value) for value in seeds]


@torch.no_grad()
def sample_batch(
    unet, sampler, generators: list[torch.Generator], num_inference_steps: int, *, eta: float = 0.0, on_step=None
) -> torch.Tensor:
    """Run the sampler from noise for one batch; returns (B, C, H, W) float32 in [0, 1] on the CPU.

    The running sample stays float32 whatever the UNet's dtype: only the model call is in low precision.
    """
    config = unet.config
    shape = (len(generators), config.in_channels, config.sample_size, config.sample_size)
    noise = torch.stack(
        [torch.randn(shape[1:], generator=generator, device=generator.device) for generator in generators]
    )
    sampler.set_timesteps(num_inference_steps, device=unet.device)
    sample = noise.to(unet.device) * sampler.init_noise_sigma
    extra = {"eta": eta} if isinstance(sampler, DDIMScheduler) else {}
    if "generator" in inspect.signature(sampler.step).parameters:  # UniPC's step has none (it draws no noise)
        extra["generator"] = generators
    for timestep in sampler.timesteps:
        model_input = sampler.scale_model_input(sample, timestep).to(unet.dtype)
        model_output = unet(model_input, timestep).sample.float()
        # The schedulers draw their per-step noise on the CPU from the per-image generators.
        sample = sampler.step(model_output, timestep, sample, **extra).prev_sample
        if on_step is not None:
            on_step()
    return (sample / 2 + 0.5).clamp(0, 1).cpu()


def generate(
    unet,
    sampler,
    num_images: int,
    num_inference_steps: int,
    *,
    seed: int,
    batch_size: Optional[int] = None,
    eta: float = 0.0,
    progress: bool = False,
    noise_on_device: bool = False,
) -> np.ndarray:
    """Sample images as (N, H, W, C) float in [0, 1]; the same seed gives the same images at any batch size.
    `noise_on_device`: draw the noise with generators on the UNet's device (see image_generators)."""
    batch_size = batch_size or num_images
    batches = []
    with tqdm(
        total=math.ceil(num_images / batch_size) * num_inference_steps,
        desc="sampling",
        unit="step",
        disable=not progress,
    ) as bar:
        for start in range(0, num_images, batch_size):
            count = min(batch_size, num_images - start)
            generators = image_generators(seed, start, count, unet.device if noise_on_device else "cpu")
            images = sample_batch(
                unet, sampler, generators, num_inference_steps, eta=eta, on_step=lambda: bar.update()
            )
            batches.append(images.permute(0, 2, 3, 1).numpy())  # (B, C, H, W) -> (B, H, W, C)
    return np.concatenate(batches)


@dataclass
class SamplingRequest:
    """What to sample and how: one request type for `pipeline.sample`, `pipeline.evaluate fid`, the
    training grids and FID during training. Its values are checked where they come from: the command line
    (pipeline.commands) or the config's fields."""

    sampler: str = "ddpm"
    steps: int = 100  # sampler steps (model evaluations per image for every sampler here)
    num_images: int = 64
    batch_size: int = 64
    seed: int = 0
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 ancestral-like
    solver_order: int = 2  # DPM-Solver++ only
    timestep_spacing: Optional[str] = None  # how the sampler spaces its steps; None: the one saved with the model
    device: str = "cpu"
    dtype: str = "fp32"  # of the UNet (auto: bf16 where the device computes it natively); the sample stays fp32
    noise_on_device: bool = False  # generators on the device: no per-step copies, other numbers than the CPU's

    def __post_init__(self):
        self.dtype = sampling_dtype(self.dtype, self.device)  # auto -> what the device computes natively

    def check_steps(self, num_train_timesteps: int) -> None:
        if self.steps > num_train_timesteps:
            raise PipelineError(
                f"steps: {self.steps} sampler steps, but the model was trained with T = {num_train_timesteps}"
            )

    def as_dict(self) -> dict:
        """The request as results state it (eta and order only where they apply)."""
        return {
            **asdict(self),
            "eta": self.eta if self.sampler == "ddim" else None,
            "solver_order": self.solver_order if "dpmsolver++" in self.sampler else None,
        }


def default_sampler(model: Optional[str]) -> tuple[str, int]:
    """The sampler and steps a model's training run used for its grids (its training_config.json); for a folder
    without one, what its shipped scheduler is (DPM-Solver++ at 20 steps, LCM at 4), else the DDPM chain at 100."""
    folder = Path(model) if model is not None else None
    if folder is not None and (folder / RECORD_NAME).is_file():
        config = read_record(folder / RECORD_NAME).config
        return config.grid_sampler, config.grid_inference_steps
    shipped = folder / "scheduler" / "scheduler_config.json" if folder is not None else None
    if shipped is not None and shipped.is_file():
        scheduler = read_json(shipped)
        if scheduler.get("_class_name") == "DPMSolverMultistepScheduler":
            algorithm = scheduler.get("algorithm_type")
            return (algorithm if algorithm in ("dpmsolver++", "sde-dpmsolver++") else "dpmsolver++"), 20
        if scheduler.get("_class_name") == "LCMScheduler":
            return "lcm", 4
    return "ddpm", 100


def sample_unet(unet, scheduler_config: dict, request: SamplingRequest, progress: bool = False) -> np.ndarray:
    """Images as (N, H, W, C) float in [0, 1] from a UNet and the scheduler config it was trained with."""
    request.check_steps(scheduler_config["num_train_timesteps"])
    if request.timestep_spacing is not None:
        scheduler_config = {**scheduler_config, "timestep_spacing": request.timestep_spacing}
    sampler = make_sampler(request.sampler, scheduler_config, request.solver_order)
    return generate(
        unet,
        sampler,
        request.num_images,
        request.steps,
        seed=request.seed,
        batch_size=request.batch_size,
        eta=request.eta,
        progress=progress,
        noise_on_device=request.noise_on_device,
    )


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) floats in [0, 1] -> uint8, rounded the way a PNG of the image stores it."""
    return (images * 255).round().clip(0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: Optional[int] = None) -> Image.Image:
    """(N, H, W, C) floats in [0, 1] -> one PIL image, as square as the count allows (or `columns` wide), 2-pixel
    gaps."""
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    pad = 2
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), dtype=np.uint8)
    for index, image in enumerate(to_uint8(images)):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        grid[top : top + height, left : left + width] = image
    return Image.fromarray(grid[..., 0] if channels == 1 else grid)


def load_pipeline(model: str, device: str = "cpu", dtype: str = "fp32") -> DDPMPipeline:
    """A saved DDPMPipeline from an output folder or a Hub id (fetched first), its configs checked before anything is
    built (pipeline.model.check_model_folder), its UNet on `device` in `dtype`."""
    path = Path(model)
    if path.exists() and not (path / "model_index.json").is_file():
        raise PipelineError(f"model: {model} holds no model_index.json; pass a training output folder or a Hub id")
    try:
        if not path.exists():
            path = Path(DDPMPipeline.download(model))
        check_model_folder(path)
        pipeline = DDPMPipeline.from_pretrained(path, dtype=DTYPES[sampling_dtype(dtype, device)])
    except (OSError, ValueError) as error:
        raise PipelineError(
            f"model: cannot load a DDPMPipeline from {model!r} ({type(error).__name__}: {error})"
        ) from None
    pipeline.unet.to(device).eval()
    return pipeline


class CountingUNet(torch.nn.Module):
    """The UNet with a count of its forward calls on images: model evaluations, the unit samplers cost in."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.evaluations = 0

    @property
    def config(self):
        return self.unet.config

    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def forward(self, sample, timestep):
        self.evaluations += sample.shape[0]
        return self.unet(sample, timestep)


def sample_images(model: str, request: SamplingRequest) -> tuple[np.ndarray, dict]:
    """Load the pipeline and sample as `request` says: uint8 (N, H, W, C) images and what was run (samples.json)."""
    pipeline = load_pipeline(model, request.device, request.dtype)
    unet = CountingUNet(pipeline.unet)
    started = time.perf_counter()
    images = sample_unet(unet, pipeline.scheduler.config, request, progress=True)
    seconds = time.perf_counter() - started
    info = {
        "model": model,
        **request.as_dict(),
        "resolution": int(images.shape[1]),
        "channels": int(images.shape[3]),
        "model_evaluations_per_image": unet.evaluations / request.num_images,
        "seconds": round(seconds, 2),
        "images_per_second": round(request.num_images / seconds, 2),
    }
    return to_uint8(images), info


SAMPLES_LAYOUT = {"[0-9][0-9][0-9][0-9][0-9][0-9]*.png": FILE, "grid.png": FILE, "samples.json": FILE}


def check_samples_folder(output_dir: Path) -> None:
    """Before any sampling: `output_dir` is new, empty, or a folder of this command's samples (which the new ones
    replace whole); another model's folder or a user's files are refused, naming what is there."""
    if output_dir.exists() and (not output_dir.is_dir() or output_dir.is_symlink()):
        raise PipelineError(f"output_dir: {output_dir} exists and is not a folder")
    refuse_foreign(output_dir, SAMPLES_LAYOUT, "samples of this command", "choose an empty or new folder")


def write_samples(pixels: np.ndarray, info: dict, output_dir: Path, grid_images: int = 64) -> None:
    """Numbered PNGs, grid.png and samples.json: the folder `pipeline.evaluate fid --samples` reads. Written in a
    staging folder and swapped in whole, so a kill leaves the earlier samples (or none), never a mix."""
    check_samples_folder(output_dir)
    with staged(output_dir, folder=True) as staging:
        for index, image in enumerate(pixels):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(staging / f"{index:06d}.png")
        if grid_images:
            image_grid(pixels[:grid_images].astype(np.float32) / 255).save(staging / "grid.png")
        write_json(staging / "samples.json", info)


if __name__ == "__main__":
    from pipeline.commands import sample_main  # the command line lives in pipeline/commands.py

    sample_main()
