"""The model card and the Hub push, on a real (tiny) training output folder.

The Hub cannot be reached from here: the push runs the real huggingface_hub client, with the
HfApi methods that would reach the network (create_repo, the README validation, the commit)
recorded instead of sent. The file selection is the client's own.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import httpx2
import pytest
from huggingface_hub import HfApi, ModelCard, RepoUrl
from huggingface_hub.errors import HfHubHTTPError

from conftest import REPO, TINY, TinyFeatures, train
from pipeline import commands, hub
from pipeline import evaluate as ev
from pipeline.config import TrainingConfig
from pipeline.errors import PipelineError


FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (export, card, checkpoints, logs) evaluated once, so metrics.json exists."""
    output_dir = tmp_path_factory.mktemp("run") / "tiny-faces"
    train(
        TrainingConfig(
            **{**TINY, "output_dir": str(output_dir), "hub_model_id": "someone/tiny-faces", "random_flip": True}
        )
    )
    args = commands.parse_evaluate_args(
        [
            "fid",
            "--model",
            str(output_dir),
            "--reference_dataset",
            "data/fashion_mnist",
            "--reference_max_images",
            "64",
            "--num_images",
            "24",
            "--steps",
            "3",
            "--device",
            "cpu",
        ]
    )
    ev.evaluate(args, TinyFeatures(), "tiny test network")
    return output_dir


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home_without_token"))


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)


def folder_digest(folder):
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class RecordingApi(HfApi):
    """The real client; the calls that would reach the Hub are recorded and answered here."""

    def __init__(self, fail_upload=False):
        super().__init__()
        self.calls = []
        self.fail_upload = fail_upload

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, repo_type=None, **kwargs):
        self.calls.append(
            ("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": exist_ok, "token": token})
        )
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def _validate_yaml(self, content, *, repo_type=None, token=None):
        self.calls.append(("validate_yaml", {"content": content}))

    def create_commit(self, *, repo_id, operations, commit_message=None, token=None, repo_type=None, **kwargs):
        operations = list(operations)
        contents = {}
        for operation in operations:
            with operation.as_file() as file:
                contents[operation.path_in_repo] = file.read()
        if "README.md" in contents:  # what the real create_commit does before any upload
            self._validate_yaml(contents["README.md"].decode(), repo_type=repo_type, token=token)
        self.calls.append(
            (
                "create_commit",
                {
                    "repo_id": repo_id,
                    "files": sorted(contents),
                    "contents": contents,
                    "commit_message": commit_message,
                    "token": token,
                },
            )
        )
        if self.fail_upload:
            url = f"https://huggingface.co/api/models/{repo_id}/commit/main"
            response = httpx2.Response(500, request=httpx2.Request("POST", url))
            raise HfHubHTTPError(f"500 Server Error: Internal Server Error for url: {url}", response=response)


# ---------------------------------------------------------------------------------------------
# The card


def test_card_is_written_at_export_and_parses_back_with_the_metadata(trained):
    card = ModelCard.load(trained / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "unconditional-image-generation"
    assert data["license"] == "mit"
    assert set(hub.TAGS) <= set(data["tags"])
    assert data["datasets"] == [
        "zalando-datasets/fashion_mnist"
    ]  # the embedded subset's origin, found at training time
    assert "https://arxiv.org/abs/2006.11239" in card.text  # DDPM, which the Hub lists on the model page
    text = card.text
    for needle in (
        'DDPMPipeline.from_pretrained("someone/tiny-faces")',
        "DPMSolverMultistepScheduler",
        "samples/step-6.png",
        "## Training recipe",
        "## Relation to the report",
        "## Limitations",
        "ho2020denoising",
        "xiao2017fashionmnist",
        "random horizontal flips",
        "8 images per step, 6 steps",
    ):
        assert needle in text, needle
    parameters = json.loads((trained / "training_config.json").read_text())["run"]["unet_parameters"]
    assert f"{parameters:,} parameters" in text


def test_card_metrics_equal_metrics_json(trained):
    results = json.loads((trained / "eval" / "metrics.json").read_text())["results"]
    card = ModelCard.load(trained / "README.md")
    index = card.data.eval_results
    assert [result.metric_value for result in index] == [result["fid"] for result in results]
    assert index[0].metric_type == "fid" and index[0].task_type == "unconditional-image-generation"
    assert f"| {results[0]['fid']:.2f} | {results[0]['kid']:.4f} | 24 |" in card.text
    assert "## Evaluation" in card.text and "Not evaluated yet" not in card.text


def test_card_holds_no_machine_path_and_no_token(trained, token):
    hub.write_card(trained)
    text = (trained / "README.md").read_text()
    for private in (str(trained), str(trained.parent), str(REPO), os.path.expanduser("~"), "/tmp", FAKE_TOKEN):
        assert private not in text, private


def test_card_of_a_folder_without_a_training_record_is_refused(tmp_path):
    with pytest.raises(hub.PipelineError, match="not a training output folder"):
        hub.write_card(tmp_path)


# ---------------------------------------------------------------------------------------------
# What is uploaded


def test_upload_list_keeps_checkpoints_optimizer_states_and_logs_local(trained):
    files = hub.files_to_upload(trained)
    assert {
        "model_index.json",
        "README.md",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "samples/step-6.png",
        "eval/metrics.json",
    } <= set(files)
    assert (trained / "checkpoints").is_dir() and (trained / "logs").is_dir()
    assert not [
        name
        for name in files
        if name.startswith(("checkpoints/", "logs/")) or "optimizer" in name or name.endswith(".bin")
    ]
    assert "training_config.json" not in files  # holds the training machine's paths
    with_checkpoints = hub.files_to_upload(trained, ("checkpoints/*",))
    assert any(name.startswith("checkpoints/") and "optimizer" in name for name in with_checkpoints)


def test_push_creates_the_repository_with_its_private_flag_and_uploads_the_files(trained, token, capsys):
    api = RecordingApi()
    repo_id = hub.push_to_hub(trained, "someone/tiny-faces", private=True, api=api)
    assert repo_id == "someone/tiny-faces"
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "validate_yaml", "create_commit"]
    create, validate, upload = (arguments for _, arguments in api.calls)
    assert create["repo_id"] == "someone/tiny-faces" and create["private"] is True and create["exist_ok"] is True
    assert upload["repo_id"] == "someone/tiny-faces"
    assert upload["files"] == sorted(hub.files_to_upload(trained))
    assert not [name for name in upload["files"] if name.startswith(("checkpoints/", "logs/"))]
    assert upload["commit_message"] == "Upload DDPM pipeline at step 6"
    assert create["token"] == upload["token"] == FAKE_TOKEN  # handed to the client, and nowhere else:
    assert "library_name: diffusers" in validate["content"] and FAKE_TOKEN not in validate["content"]
    out = capsys.readouterr()
    assert FAKE_TOKEN not in out.out + out.err and "https://huggingface.co/someone/tiny-faces (private)" in out.out
    for path in trained.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_push_without_a_token_stops_before_any_call(trained, no_token):
    api = RecordingApi()
    with pytest.raises(hub.PipelineError, match="no Hugging Face token: set HF_TOKEN"):
        hub.push_to_hub(trained, "someone/tiny-faces", api=api)
    assert api.calls == []


def test_an_invalid_repository_id_stops_before_any_call(trained, token):
    """Probe: `push --hub_model_id 'bad id!!'` was huggingface_hub's HFValidationError traceback."""
    api = RecordingApi()
    with pytest.raises(hub.PipelineError, match="hub_model_id: must be 'name' or 'user/name' .*got 'bad id!!'"):
        hub.push_to_hub(trained, "bad id!!", api=api)
    assert api.calls == []


def test_failed_upload_leaves_the_local_folder_intact(trained, token):
    hub.write_card(trained, "someone/else")  # the push renders a different card: the local one must not change
    before = folder_digest(trained)
    with pytest.raises(
        hub.PipelineError, match="the upload to someone/tiny-faces failed .* the local folder is unchanged"
    ):
        hub.push_to_hub(trained, "someone/tiny-faces", api=RecordingApi(fail_upload=True))
    assert folder_digest(trained) == before


def test_push_sends_regular_files_inside_the_folder_only(trained, tmp_path, token):
    """Links (to files or folders outside) and dot-files are never listed nor sent, whatever the patterns say."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub\n")
    planted = [trained / "unet" / "leak.json", trained / "samples" / "leak.png", trained / "samples" / "outside"]
    planted[0].symlink_to(secret)
    planted[1].symlink_to(secret)
    planted[2].symlink_to(tmp_path, target_is_directory=True)
    (trained / "unet" / ".env").write_text("HF_TOKEN=hf_should_never_leave\n")
    (trained / ".git").mkdir()
    (trained / ".git" / "config").write_text("[core]\n")
    try:
        listed = hub.files_to_upload(trained, ("*", "**/*", ".git/*"))
        assert not [name for name in listed if "leak" in name or "outside" in name or ".env" in name or ".git" in name]
        api = RecordingApi()
        hub.push_to_hub(trained, "someone/tiny-faces", include=("*", "**/*", ".git/*"), api=api)
        ((_, commit),) = [call for call in api.calls if call[0] == "create_commit"]
        assert commit["files"] == sorted(listed)
        assert not [
            content
            for content in commit["contents"].values()
            if b"not for the Hub" in content or b"hf_should" in content
        ]
        dry_run = subprocess.run(
            [sys.executable, "-m", "pipeline.hub", "push", "--output_dir", str(trained), "--dry_run"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dry_run.stdout.split() == hub.files_to_upload(trained)
        assert "unet/leak.json" in dry_run.stderr and "unet/.env" in dry_run.stderr and ".git/" in dry_run.stderr
    finally:
        for path in planted + [trained / "unet" / ".env"]:
            path.unlink()
        shutil.rmtree(trained / ".git")


def test_push_command_without_token_exits_with_the_message(trained, tmp_path):
    environment = {key: value for key, value in os.environ.items() if key != "HF_TOKEN"}
    environment["HF_HOME"] = str(tmp_path / "empty_hf_home")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.hub", "push", "--output_dir", str(trained), "--private"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 2 and "error: no Hugging Face token" in result.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "pipeline.hub", "push", "--output_dir", str(trained), "--dry_run"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert listing.returncode == 0 and listing.stdout.split() == hub.files_to_upload(trained)


def test_training_with_push_to_hub_and_no_token_stops_before_any_work(tmp_path, no_token):
    output_dir = tmp_path / "never"
    with pytest.raises(PipelineError, match="push_to_hub: no Hugging Face token"):
        train(TrainingConfig(**{**TINY, "output_dir": str(output_dir), "push_to_hub": True}))
    assert not output_dir.exists()


def test_push_with_the_real_client_and_no_network_fails_cleanly(trained, token):
    """The unrecorded client, offline (as the tests run): a clear message, nothing changed but nothing lost."""
    hub.write_card(trained, "someone/tiny-faces")
    before = folder_digest(trained)
    with pytest.raises(hub.PipelineError, match="cannot be reached .* the local folder is unchanged"):
        hub.push_to_hub(trained, "someone/tiny-faces")
    assert folder_digest(trained) == before


def test_card_command_rewrites_the_card_for_a_repository_id(trained, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.hub", "card", "--output_dir", str(trained), "--hub_model_id", "other/name"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert 'DDPMPipeline.from_pretrained("other/name")' in (trained / "README.md").read_text()
    refused = subprocess.run(
        [sys.executable, "-m", "pipeline.hub", "card", "--output_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "error: " in refused.stderr and "not a training output folder" in refused.stderr
