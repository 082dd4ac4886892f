import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Nothing in the tests may reach the network; datasets caches go to a throw-away folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def isolated_hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    previous = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = Path(home / "datasets")
    yield home
    if previous is not None:
        os.environ["HF_HOME"] = previous


# A tiny configuration: a 2-level UNet with 8 and 16 channels at 16x16, 50 diffusion steps,
# 64 images of the embedded dataset. Every run of it is a real run, just small.
TINY = {
    "dataset_name": "data/fashion_mnist",
    "max_train_samples": 64,
    "resolution": 16,
    "image_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 8,
    "add_attention": True,
    "norm_num_groups": 4,
    "layers_per_block": 1,
    "ddpm_num_steps": 50,
    "train_batch_size": 8,
    "max_train_steps": 6,
    "learning_rate": 0.001,
    "lr_warmup_steps": 2,
    "logging_steps": 2,
    "save_images_steps": 3,
    "num_grid_images": 4,
    "grid_sampler": "dpmsolver++",
    "grid_inference_steps": 3,
    "checkpointing_steps": 3,
    "checkpoints_total_limit": 2,
    "mixed_precision": "bf16",
}


@pytest.fixture
def tiny_config_file(tmp_path):
    """Write the tiny config as a YAML preset and return its path."""
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(autouse=True)
def run_from_repo(monkeypatch):
    """The embedded dataset's path is relative to the repository root, as in the README."""
    monkeypatch.chdir(REPO)
