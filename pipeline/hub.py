"""The model card and the Hub upload of a training output folder.

    python -m pipeline.hub card --output_dir ddpm-quickstart         # (re)write README.md, the model card
    python -m pipeline.hub push --output_dir ddpm-quickstart --hub_model_id me/fashion-ddpm [--private]

The card is rendered from `model_cards/ddpm_model_card.md` with huggingface_hub's ModelCard and
filled from the folder's own records: training_config.json, eval/metrics.json and the sample
grids. It names no path of the training machine. The upload sends what a user of the model needs
(pipeline, card, samples, metrics) and keeps checkpoints, optimizer states and logs local unless
asked for with --include.
"""

import dataclasses
import os
import stat
from pathlib import Path
from typing import Optional

from httpx2 import HTTPError  # huggingface_hub's HTTP client
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects

from .config import HUB_ID
from .errors import PipelineError
from .files import read_json, write_text
from .record import RECORD_NAME, read_record


TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "ddpm_model_card.md"
TAGS = ["pytorch", "diffusers", "unconditional-image-generation", "ddpm"]
# What a user of the model needs, relative to the output folder.
UPLOAD_PATTERNS = [
    "model_index.json",
    "unet/*",
    "scheduler/*",
    "README.md",
    "samples/*.png",
    "eval/metrics.json",
    "eval/*.png",
]


# ---------------------------------------------------------------------------------------------
# The card


_token: Optional[str] = None  # --hub_token, held here only: never in a config, a record, a log or a card
# Local copies whose Hub dataset the card names: the embedded Fashion-MNIST subset is drawn from this one.
EMBEDDED_DATASETS = {
    Path(__file__).resolve().parent.parent / "data" / "fashion_mnist": "zalando-datasets/fashion_mnist"
}
# Papers the card links (the Hub lists arXiv links of a card on the model's page), by what the run used.
PAPERS = {
    "ddpm": ("Denoising Diffusion Probabilistic Models (Ho et al. 2020)", "2006.11239"),
    "cosine": (
        "Improved Denoising Diffusion Probabilistic Models, the cosine schedule (Nichol & Dhariwal 2021)",
        "2102.09672",
    ),
    "v_prediction": ("Progressive Distillation, v-prediction (Salimans & Ho 2022)", "2202.00512"),
    "min_snr": ("Efficient Diffusion Training via Min-SNR Weighting Strategy (Hang et al. 2023)", "2303.09556"),
    "zero_snr": ("Common Diffusion Noise Schedules and Sample Steps Are Flawed (Lin et al. 2024)", "2305.08891"),
    "ema_lengths": (
        "Analyzing and Improving the Training Dynamics of Diffusion Models, EMA lengths (Karras et al. 2024)",
        "2312.02696",
    ),
    "ddim": ("Denoising Diffusion Implicit Models (Song et al. 2021)", "2010.02502"),
    "dpmsolver": ("DPM-Solver++ (Lu et al. 2022)", "2211.01095"),
    "unipc": ("UniPC (Zhao et al. 2023)", "2302.04867"),
    "consistency": ("Consistency Models (Song et al. 2023)", "2303.01469"),
    "lcm": ("Latent Consistency Models (Luo et al. 2023), consistency distillation in DDPM time", "2310.04378"),
    "ect": ("Consistency Models Made Easy (Geng et al. 2024), the curriculum", "2406.14548"),
}


def use_token(token: str) -> None:
    """The Hub token given on the command line (--hub_token), used instead of HF_TOKEN or `hf auth login`."""
    global _token
    _token = token


def hub_token() -> Optional[str]:
    """--hub_token, else huggingface_hub's own lookup (HF_TOKEN, `hf auth login`)."""
    return _token or get_token()


def describe_data_origin(config) -> dict:
    """Whether the training data is local or on the Hub, decided when the run starts (in the directory it starts
    in) and recorded, so the card says the same from anywhere: {"data_name", "hub_dataset_id"}."""
    source = config.train_data_dir if config.train_data_dir is not None else config.dataset_name
    path = Path(source)
    local = config.train_data_dir is not None or path.exists() or source.endswith((".parquet", ".zip"))
    hub_id = config.hub_dataset_id or (EMBEDDED_DATASETS.get(path.resolve()) if local else source)
    return {"data_name": path.name if local else source, "hub_dataset_id": hub_id}


def public_name(source: Optional[str]) -> Optional[str]:
    """A data source as the card may show it: a Hub id as is, a local path by its last component only."""
    if source is None:
        return None
    path = Path(source)
    looks_local = (
        path.is_absolute() or source.startswith((".", "~")) or path.exists() or source.endswith((".zip", ".parquet"))
    )
    return path.name if looks_local or source.count("/") > 1 else source


def _sampler_text(result: dict) -> str:
    text = f"{result['sampler']}, {result['steps']} steps"
    if result.get("solver_order"):
        text += f", order {result['solver_order']}"
    if result.get("eta"):
        text += f", eta {result['eta']}"
    return f"{text}, seed {result['seed']}"


def _reference_text(reference: dict) -> str:
    name = public_name(reference.get("source")) or "saved statistics"
    split = f" ({reference['split']})" if reference.get("split") else ""
    return f"{name}{split}, {reference.get('images', '?')} images at {reference.get('resolution', '?')} px"


def _results(output_dir: Path) -> list[dict]:
    """eval/metrics.json's results, cheapest sampler first, with their sampler and reference as the card words them."""
    path = output_dir / "eval" / "metrics.json"
    results = read_json(path).get("results", []) if path.is_file() else []
    results = [
        {**result, "sampler_text": _sampler_text(result), "reference_text": _reference_text(result["reference"])}
        for result in results
    ]
    return sorted(results, key=lambda result: (result.get("model_evaluations_per_image") or 0, result["fid"]))


def _architecture_text(config: dict) -> str:
    """'self-attention in 16 px, 8 px; mid block UNetMidBlock2D with attention', or 'no self-attention'."""
    levels = [
        f"{config['resolution'] // 2**level} px"
        for level, kind in enumerate(config["down_block_types"])
        if kind.startswith("Attn")
    ]
    text = f"self-attention in {', '.join(levels)}" if levels else "no self-attention"
    if config.get("mid_block_type"):
        text += f"; mid block {config['mid_block_type']}" + (" with attention" if config.get("add_attention") else "")
    return text


def card_context(output_dir: Path, repo_id: Optional[str] = None) -> dict:
    """Everything the template needs, read from the output folder: the run's `config`, its `run` record and the saved
    `scheduler` config as they are, and what the card says that they do not spell out."""
    if not (output_dir / RECORD_NAME).is_file():
        raise PipelineError(f"{output_dir} has no {RECORD_NAME}: not a training output folder")
    saved = read_record(output_dir / RECORD_NAME)
    config, run = saved.config.to_dict(), dataclasses.asdict(saved.run)
    scheduler = read_json(output_dir / "scheduler" / "scheduler_config.json")
    repo_id = repo_id or config["hub_model_id"]
    data_name, data_hub_id = run["data_name"], run["hub_dataset_id"]
    if data_name is None:  # a record of an older version: judged from here
        source = config["hub_dataset_id"] or config["dataset_name"] or config["train_data_dir"]
        data_name = public_name(source)
        data_hub_id = source if source and data_name == source and "/" in source else None
    global_batch, steps = saved.config.global_batch_size(run["num_processes"]), run["global_step"]
    grids = sorted((output_dir / "samples").glob("step-*.png"), key=lambda path: int(path.stem.split("-")[1]))
    grid = grids[-1].relative_to(output_dir).as_posix() if grids else None
    parameters = run["unet_parameters"]
    size = f"{parameters / 1e6:.1f}M" if parameters >= 1e6 else f"{parameters / 1e3:.0f}K"
    optimizer = {"adamw": "AdamW", "adam": "Adam"}[config["optimizer"]]
    precision = {"no": "fp32", "bf16": "bf16 mixed precision", "fp16": "fp16 mixed precision"}[run["mixed_precision"]]
    preprocessing = f"resized to {config['resolution']}x{config['resolution']}"
    preprocessing += f" through {config['intermediate_resolution']} px" if config["intermediate_resolution"] else ""
    preprocessing += ", centre crop" if config["center_crop"] else ", squashed to square"
    preprocessing += (", random horizontal flips" if config["random_flip"] else "") + ", scaled to [-1, 1]"
    hours = (run["wall_seconds"] or 0) / 3600
    results = _results(output_dir)
    return {
        "config": config, "run": run, "scheduler": scheduler, "results": results,
        "model_name": repo_id.split("/")[-1] if repo_id else output_dir.resolve().name,
        "repo_id": repo_id or output_dir.resolve().name,
        "data_name": data_name, "data_hub_id": data_hub_id,
        "parameters_short": size, "grid": grid, "preprocessing": preprocessing,
        "block_out_channels": ", ".join(str(channels) for channels in config["block_out_channels"]),
        "attention": _architecture_text(config), "optimizer": optimizer, "precision": precision,
        "global_batch": global_batch, "steps": steps, "images_seen": steps * global_batch,
        "epochs": steps * global_batch / run["num_train_images"] if run["num_train_images"] else 0,
        "training_time": f"{hours * 60:.0f} minutes" if hours < 2 else f"{hours:.1f} hours",
        "software": ", ".join(f"{name} {version}" for name, version in run["versions"].items()) or "not recorded",
        "clean_fid_version": results[-1]["clean_fid_version"] if results else None,
        "feature_extractor": results[-1]["feature_extractor"] if results else None,
        "is_sfhq": "sfhq" in (data_name or "").lower(),
        "is_fashion_mnist": all(word in (data_name or "").lower() for word in ("fashion", "mnist")),
        "papers": papers_of(config, scheduler),
        "student": config["distill_teacher"] is not None, "teacher": teacher_of(config["distill_teacher"]),
    }  # fmt: skip


def teacher_of(folder: Optional[str]) -> Optional[dict]:
    """How the card names a student's teacher: by its Hub id, linked, when it came from the Hub (the cache folder
    models--<user>--<name>) or its record names one; else by its folder's name."""
    if folder is None:
        return None
    path = Path(folder)
    hub_id = next(("/".join(part.split("--")[1:]) for part in path.parts if part.startswith("models--")), None)
    if hub_id is None and (path / RECORD_NAME).is_file():
        hub_id = read_record(path / RECORD_NAME).config.hub_model_id
    if hub_id:
        return {"name": hub_id, "text": f"[{hub_id}](https://huggingface.co/{hub_id})"}
    return {"name": path.name, "text": f"`{path.name}` (a local training folder)"}


def papers_of(config: dict, scheduler: dict) -> list[dict]:
    """The papers behind what this model used, and the samplers the card shows, as arXiv links."""
    keys = ["ddpm"]
    keys += ["cosine"] if scheduler["beta_schedule"] == "squaredcos_cap_v2" else []
    keys += ["v_prediction"] if scheduler["prediction_type"] == "v_prediction" else []
    keys += ["min_snr"] if config.get("snr_gamma") else []
    keys += ["zero_snr"] if scheduler.get("rescale_betas_zero_snr") else []
    keys += ["ema_lengths"] if config.get("ema_extra_decays") else []
    keys += ["consistency", "lcm"] if config.get("distill_teacher") else ["ddim", "dpmsolver", "unipc"]
    keys += ["ect"] if config.get("distill_teacher") and config.get("distill_halving_steps") else []
    return [{"title": PAPERS[key][0], "url": f"https://arxiv.org/abs/{PAPERS[key][1]}"} for key in keys]


def render_card(output_dir: Path, repo_id: Optional[str] = None) -> ModelCard:
    """The model card of an output folder, metadata and body."""
    context = card_context(output_dir, repo_id)
    data = context["data_hub_id"] or context["data_name"]
    eval_results = [
        EvalResult(
            task_type="unconditional-image-generation",
            dataset_type=data,
            dataset_name=context["data_name"],
            dataset_split=result["reference"].get("split"),
            metric_type="fid",
            metric_name=f"FID ({result['num_samples']} samples, {result['sampler_text']}, clean-fid {result['mode']})",
            metric_value=result["fid"],
        )
        for result in context["results"]
    ]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=context["config"]["hub_license"],
        tags=list(TAGS),
        datasets=[context["data_hub_id"]] if context["data_hub_id"] else None,
        model_name=context["model_name"],
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE), **context)


def write_card(output_dir: Path, repo_id: Optional[str] = None) -> Path:
    """Render the card into <output_dir>/README.md (written whole, then moved into place)."""
    path = output_dir / "README.md"
    write_text(path, str(render_card(output_dir, repo_id)))
    return path


# ---------------------------------------------------------------------------------------------
# The upload


def regular_files(output_dir: Path) -> tuple[list[str], list[str]]:
    """Relative paths of the regular files under `output_dir`, and what was left out and why: symbolic links (to
    files or folders, which could point anywhere), hard links (a second name of a file that may live outside),
    anything that is not a regular file (FIFOs, devices, sockets), names starting with "." (.git, .env, staging
    folders) and names with control characters (a newline would split any listing)."""
    files, left_out = [], []

    def reason(path: Path, name: str) -> Optional[str]:
        if name.startswith("."):
            return "dot-file"
        if path.is_symlink():
            return "link"
        if any(ord(character) < 32 or ord(character) == 127 for character in name):
            return "control characters in the name"
        mode = path.lstat()
        if not stat.S_ISDIR(mode.st_mode) and not stat.S_ISREG(mode.st_mode):
            return "not a regular file"
        return "hard link" if stat.S_ISREG(mode.st_mode) and mode.st_nlink > 1 else None

    for current, folders, names in os.walk(output_dir):  # does not enter links to folders
        relative = Path(current).relative_to(output_dir)
        kept = []
        for name in sorted(folders):
            why = reason(Path(current, name), name)
            kept += [name] if why is None else []
            left_out += [f"{ascii((relative / name).as_posix())[1:-1]}/ ({why})"] if why else []
        folders[:] = kept
        for name in sorted(names):
            why = reason(Path(current, name), name)
            if why is None:
                files.append((relative / name).as_posix())
            else:
                left_out.append(f"{ascii((relative / name).as_posix())[1:-1]} ({why})")
    return files, left_out


def files_to_upload(output_dir: Path, include: tuple[str, ...] = ()) -> list[str]:
    """Exactly the files the upload sends: regular files inside the folder (no links, no dot-files) that match
    the upload patterns (`fnmatch`, as huggingface_hub matches them) or `include`."""
    files, _ = regular_files(Path(output_dir))
    return list(filter_repo_objects(files, allow_patterns=UPLOAD_PATTERNS + list(include)))


def _open_regular(path: Path):
    """Open a file for reading, refusing a symbolic link even if one replaced the file since it was listed."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise PipelineError(f"{path} is no longer a regular file; nothing was uploaded")
    return os.fdopen(descriptor, "rb")


def push_to_hub(
    output_dir: Path,
    repo_id: Optional[str] = None,
    private: bool = False,
    include: tuple[str, ...] = (),
    api: Optional[HfApi] = None,
) -> str:
    """Create (or reuse) the Hub repository and upload the files of `files_to_upload` in one commit, with the card
    rendered for that repository; returns the repository id. The local folder changes only after a successful
    upload (its README.md becomes the uploaded card).

    The token comes from HF_TOKEN or `hf auth login` (huggingface_hub's own lookup) and is handed to
    the client only: it is never printed, logged or written. Without one, nothing is uploaded.
    """
    output_dir = Path(output_dir)
    if not (output_dir / "model_index.json").is_file():
        raise PipelineError(f"{output_dir} holds no exported pipeline (model_index.json); train or export first")
    name = repo_id or output_dir.resolve().name
    if not HUB_ID.fullmatch(name):
        raise PipelineError(
            f"hub_model_id: must be 'name' or 'user/name' (letters, digits, '-', '_', '.'), got {name!r}"
            + ("" if repo_id else " (the folder's name); pass --hub_model_id")
        )
    token = hub_token()
    if not token:
        raise PipelineError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again; nothing was uploaded"
        )
    api = api or HfApi()
    has_record = (output_dir / RECORD_NAME).is_file()
    step = read_record(output_dir / RECORD_NAME).run.global_step if has_record else None
    files = files_to_upload(output_dir, include)
    opened = []
    try:
        repo_id = api.create_repo(name, token=token, private=private, exist_ok=True, repo_type="model").repo_id
        card = str(render_card(output_dir, repo_id)) if has_record else None
        operations = []
        for relative in files:
            if relative == "README.md" and card is not None:
                continue
            opened.append(_open_regular(output_dir / relative))
            operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=opened[-1]))
        if card is not None:
            operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=f"Upload DDPM pipeline at step {step}" if step is not None else "Upload DDPM pipeline",
            token=token,
            repo_type="model",
        )
    except HfHubHTTPError as error:
        raise PipelineError(
            f"the upload to {name} failed ({type(error).__name__}: {error}); the local folder is unchanged"
        ) from None
    except (OSError, HTTPError) as error:  # no network, DNS, TLS, time-outs
        raise PipelineError(
            f"the Hub cannot be reached ({type(error).__name__}: {error}); the local folder is unchanged"
        ) from None
    finally:
        for file in opened:
            file.close()
    if card is not None:
        write_text(output_dir / "README.md", card)
    print(f"uploaded {len(operations)} files to https://huggingface.co/{repo_id}" + (" (private)" if private else ""))
    return repo_id


if __name__ == "__main__":
    from pipeline.commands import hub_main  # the command line lives in pipeline/commands.py

    hub_main()
