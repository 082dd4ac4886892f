import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from pipeline.arguments import load_preset, parse_config
from pipeline.config import TrainingConfig
from pipeline.errors import PipelineError
from pipeline.record import RunRecord, read_record, write_record


PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def test_presets_exist():
    assert {path.stem for path in PRESETS} >= {"quickstart", "report_sfhq64", "sfhq64_improved"}


def test_quickstart_preset_is_the_defaults():
    """configs/quickstart.yaml spells out the dataclass defaults; the two must never drift apart."""
    preset = load_preset(REPO / "configs" / "quickstart.yaml")
    defaults = TrainingConfig().to_dict()
    assert preset == {name: defaults[name] for name in preset}
    assert set(preset) == set(defaults) - {"resume_from_checkpoint", "dry_run", "preset"}


def test_the_fast_quickstart_differs_from_the_quickstart_only_in_its_unet_and_prediction():
    """configs/quickstart_fast.yaml is the quickstart with the cheaper UNet of bench row small-vz-t1000, at the batch
    it was measured with."""
    fast = load_preset(REPO / "configs" / "quickstart_fast.yaml")
    quickstart = load_preset(REPO / "configs" / "quickstart.yaml")
    assert {name for name in quickstart if fast[name] != quickstart[name]} == {
        "block_out_channels", "prediction_type", "rescale_betas_zero_snr", "output_dir", "train_batch_size"
    }  # fmt: skip
    assert fast["block_out_channels"] == [16, 32, 64] and fast["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_each_preset_parses(preset):
    values = load_preset(preset)
    data = [] if values.get("train_data_dir") or values.get("dataset_name") else ["--train_data_dir", "my_photos"]
    config = parse_config(["--config", str(preset), *data])
    expected = TrainingConfig(**{**values, **({"train_data_dir": "my_photos"} if data else {})})
    assert config.to_dict() == {**expected.to_dict(), "preset": str(preset)}


def test_the_own_images_preset_asks_for_the_data():
    with pytest.raises(PipelineError, match="dataset_name: set --dataset_name or --train_data_dir"):
        parse_config(["--config", "configs/images64.yaml"])


def test_flags_override_the_preset():
    config = parse_config(["--config", "configs/report_sfhq64.yaml", "--learning_rate", "2e-4", "--no_random_flip"])
    assert load_preset(REPO / "configs" / "report_sfhq64.yaml")["random_flip"] is True  # faces: symmetric
    assert config.learning_rate == 2e-4
    assert config.random_flip is False
    assert config.block_out_channels == [64, 128, 256, 512, 1024]  # the rest still comes from the preset


def test_budget_and_source_flags_replace_the_presets_other_choice():
    config = parse_config(["--config", "configs/report_sfhq64.yaml", "--max_train_steps", "10"])
    assert (config.num_epochs, config.max_train_steps) == (None, 10)
    config = parse_config(["--num_epochs", "3"])  # the defaults budget in steps
    assert (config.num_epochs, config.max_train_steps) == (3, None)
    config = parse_config(["--train_data_dir", "/some/images"])
    assert (config.train_data_dir, config.dataset_name) == ("/some/images", None)


# A command-line value for every field, each different from its default.
FLAG_VALUES = {
    "train_data_dir": (["/data/x"], "/data/x"),
    "dataset_name": (["user/faces"], "user/faces"),
    "dataset_config_name": (["v2"], "v2"),
    "split": (["test"], "test"),
    "image_column": (["img"], "img"),
    "cache_dir": (["/tmp/cache"], "/tmp/cache"),
    "max_train_samples": (["100"], 100),
    "resolution": (["32"], 32),
    "image_channels": (["3"], 3),
    "intermediate_resolution": (["64"], 64),
    "center_crop": (["false"], False),
    "min_image_size": (["4"], 4),
    "strict_data": (["true"], True),
    "max_image_bytes": (["1000"], 1000),
    "preprocessing_num_workers": (["3"], 3),
    "random_flip": (["true"], True),
    "streaming": (["true"], True),
    "shuffle_buffer_size": (["64"], 64),
    "model_config_name_or_path": (["unet/config.json"], "unet/config.json"),
    "block_out_channels": (["16", "32", "64"], [16, 32, 64]),
    "layers_per_block": (["2"], 2),
    "down_block_types": (
        ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    ),
    "up_block_types": (["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
    "mid_block_type": (["none"], None),
    "add_attention": (["true"], True),
    "attention_head_dim": (["16"], 16),
    "norm_num_groups": (["16"], 16),
    "act_fn": (["relu"], "relu"),
    "flip_sin_to_cos": (["false"], False),
    "freq_shift": (["1"], 1),
    "dropout": (["0.1"], 0.1),
    "ddpm_num_steps": (["300"], 300),
    "ddpm_beta_schedule": (["linear"], "linear"),
    "ddpm_beta_start": (["0.0002"], 0.0002),
    "ddpm_beta_end": (["0.01"], 0.01),
    "ddpm_variance_type": (["fixed_large"], "fixed_large"),
    "ddpm_clip_sample": (["false"], False),
    "prediction_type": (["v_prediction"], "v_prediction"),
    "loss_type": (["l1"], "l1"),
    "snr_gamma": (["5"], 5.0),
    "timestep_density": (["lognormal"], "lognormal"),
    "timestep_lognormal_mean": (["-0.4"], -0.4),
    "timestep_lognormal_std": (["1.0"], 1.0),
    "timestep_uniform_share": (["0.2"], 0.2),
    "loss_weighting": (["learned"], "learned"),
    "rescale_betas_zero_snr": (["true", "--prediction_type", "v_prediction"], True),
    "ddpm_timestep_spacing": (["linspace"], "linspace"),
    "distill_teacher": (["ddpm-quickstart"], "ddpm-quickstart"),
    "distill_grid_steps": (["25"], 25),
    "distill_target": (["data"], "data"),
    "distill_reparam_steps": (["100"], 100),
    "distill_teacher_substeps": (["4"], 4),
    "distill_halving_steps": (["40"], 40),
    "train_batch_size": (["16"], 16),
    "gradient_accumulation_steps": (["4"], 4),
    "num_epochs": (["7"], 7),
    "max_train_steps": (["123"], 123),
    "optimizer": (["adam"], "adam"),
    "learning_rate": (["3e-4"], 3e-4),
    "lr_scheduler": (["linear"], "linear"),
    "lr_warmup_steps": (["7"], 7),
    "min_learning_rate": (["1e-6"], 1e-6),
    "adam_beta1": (["0.8"], 0.8),
    "adam_beta2": (["0.99"], 0.99),
    "adam_weight_decay": (["0.01"], 0.01),
    "adam_epsilon": (["1e-6"], 1e-6),
    "max_grad_norm": (["0"], 0.0),
    "mixed_precision": (["no"], "no"),
    "cpu_threads": (["3"], 3),
    "use_ema": (["false"], False),
    "ema_max_decay": (["0.9999"], 0.9999),
    "ema_extra_decays": (["0.99", "0.9999"], [0.99, 0.9999]),
    "ema_inv_gamma": (["2"], 2.0),
    "ema_power": (["0.5"], 0.5),
    "output_dir": (["/tmp/out"], "/tmp/out"),
    "seed": (["7"], 7),
    "logger": (["none"], "none"),
    "torch_compile_mode": (["max-autotune"], "max-autotune"),
    "fused_optimizer": (["false"], False),
    "logging_dir": (["tb"], "tb"),
    "log_level": (["warning"], "warning"),
    "logging_steps": (["5"], 5),
    "save_images_steps": (["0"], 0),
    "save_images_epochs": (["2"], 2),
    "save_model_steps": (["100"], 100),
    "save_model_epochs": (["3"], 3),
    "num_grid_images": (["9"], 9),
    "grid_sampler": (["ddim"], "ddim"),
    "grid_inference_steps": (["30"], 30),
    "checkpointing_steps": (["50"], 50),
    "checkpoints_total_limit": (["5"], 5),
    "overwrite_output_dir": (["true"], True),
    "resume_from_checkpoint": (["latest"], "latest"),
    "dry_run": (["true"], True),
    "preset": (["recorded.yaml"], "recorded.yaml"),
    "push_to_hub": (["true"], True),
    "max_bad_steps": (["3"], 3),
    "torch_compile": (["true"], True),
    "allow_tf32": (["false"], False),
    "fid_steps": (["500", "--fid_reference", "ref.npz"], 500),
    "fid_reference": (["ref.npz"], "ref.npz"),
    "fid_num_images": (["64"], 64),
    "fid_sampler": (["ddim"], "ddim"),
    "fid_inference_steps": (["50"], 50),
    "fid_mode": (["legacy_pytorch"], "legacy_pytorch"),
    "inception_weights": (["/weights/inception.pt"], "/weights/inception.pt"),
    "hub_model_id": (["me/faces-64"], "me/faces-64"),
    "hub_private_repo": (["true"], True),
    "hub_license": (["cc-by-4.0"], "cc-by-4.0"),
    "hub_dataset_id": (["me/sfhq"], "me/sfhq"),
}


def test_every_field_is_settable_from_the_command_line():
    assert set(FLAG_VALUES) == {f.name for f in dataclasses.fields(TrainingConfig)}
    defaults = TrainingConfig()
    for name, (values, expected) in FLAG_VALUES.items():
        assert getattr(defaults, name) != expected, name
        config = parse_config([f"--{name}", *values])
        assert getattr(config, name) == expected, name


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--resolution", "30"], "resolution"),  # not divisible by 4 (3 levels)
        (["--ddpm_beta_start", "0.02", "--ddpm_beta_end", "0.01"], "ddpm_beta_end"),
        (["--ddpm_beta_end", "1.5"], "ddpm_beta_end"),
        (["--train_batch_size", "0"], "train_batch_size"),
        (["--train_batch_size", "-4"], "train_batch_size"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
        (["--learning_rate", "0"], "learning_rate"),
        (["--ddpm_beta_schedule", "cosine"], "ddpm_beta_schedule"),
        (["--loss_type", "huber"], "loss_type"),
        (["--mixed_precision", "fp8"], "mixed_precision"),
        (["--prediction_type", "x0"], "prediction_type"),
        (["--lr_scheduler", "exp"], "lr_scheduler"),
        (["--optimizer", "sgd"], "optimizer"),
        (["--grid_sampler", "euler"], "grid_sampler"),
        (["--ddpm_variance_type", "learned"], "ddpm_variance_type"),
        (["--image_channels", "2"], "image_channels"),
        (["--block_out_channels", "32", "64"], "down_block_types"),  # 2 levels, 3 block types
        (["--down_block_types", "DownBlock2D", "FancyBlock", "DownBlock2D"], "down_block_types"),
        (["--norm_num_groups", "12"], "block_out_channels"),
        (["--add_attention", "--attention_head_dim", "48"], "attention_head_dim"),
        (["--max_train_steps", "10", "--num_epochs", "2"], "max_train_steps"),
        (["--train_data_dir", "a", "--dataset_name", "b"], "train_data_dir"),
        (["--min_learning_rate", "0.1"], "min_learning_rate"),
        (["--ema_max_decay", "1"], "ema_max_decay"),
        (["--ema_extra_decays", "0.999"], "ema_extra_decays"),  # the same as ema_max_decay
        (["--ema_extra_decays", "1.5"], "ema_extra_decays"),
        (["--adam_beta2", "1"], "adam_beta2"),
        (["--max_grad_norm", "-1"], "max_grad_norm"),
        (["--dropout", "1"], "dropout"),
        (["--checkpoints_total_limit", "0"], "checkpoints_total_limit"),
        (["--max_train_samples", "0"], "max_train_samples"),
        (["--intermediate_resolution", "16"], "intermediate_resolution"),  # below --resolution 28
        (["--min_image_size", "-1"], "min_image_size"),
        (["--streaming", "--train_data_dir", "/images"], "streaming"),
        (["--streaming", "--num_epochs", "2"], "num_epochs"),
        (["--streaming", "--max_train_samples", "20"], "max_train_samples"),
        (["--shuffle_buffer_size", "0"], "shuffle_buffer_size"),
        (["--learning_rate", "nan"], "learning_rate"),
        (["--logger", "visdom"], "logger"),
        (["--logging_dir", "/tmp/elsewhere"], "logging_dir"),
        (["--log_level", "loud"], "log_level"),
        (["--save_images_epochs", "0"], "save_images_epochs"),
        (["--image_channels", "2"], "image_channels"),
        (["--not_an_option", "1"], "not_an_option"),
        (["--config", "configs/does_not_exist.yaml"], "config"),
        (["--hub_model_id", "me/faces/64"], "hub_model_id"),
        (["--hub_model_id", "my model"], "hub_model_id"),
        (["--hub_dataset_id", "a/b/c"], "hub_dataset_id"),
        (["--hub_license", ""], "hub_license"),
        (["--max_bad_steps", "-1"], "max_bad_steps"),
        (["--fid_steps", "100"], "fid_reference"),
        (["--fid_num_images", "1"], "fid_num_images"),
        (["--fid_sampler", "heun"], "fid_sampler"),
        (["--fid_mode", "legacy_tensorflow"], "fid_mode"),
        (["--snr_gamma", "0"], "snr_gamma"),
        (["--rescale_betas_zero_snr"], "rescale_betas_zero_snr"),  # with epsilon prediction
        (["--ddpm_timestep_spacing", "uniform"], "ddpm_timestep_spacing"),
        (["--grid_sampler", "unipc", "--grid_inference_steps", "1001"], "grid_inference_steps"),
    ],
)
def test_invalid_values_name_the_field(argv, field):
    with pytest.raises(PipelineError) as error:
        parse_config(argv)
    assert str(error.value).startswith(f"{field}:"), str(error.value)


@pytest.mark.parametrize(
    "preset, field",
    [
        ({"no_such_option": 1}, "no_such_option"),
        ({"train_batch_size": "64"}, "train_batch_size"),  # a string where an int belongs
        ({"train_batch_size": 6.5}, "train_batch_size"),
        ({"use_ema": "yes"}, "use_ema"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"block_out_channels": 64}, "block_out_channels"),
        ({"block_out_channels": [64, "x", 256]}, "block_out_channels"),
        ({"resolution": None}, "resolution"),
        ({"num_epochs": 3, "max_train_steps": 5}, "num_epochs"),
        ({"ddpm_beta_schedule": "cosine"}, "ddpm_beta_schedule"),
        ({"resolution": 30}, "resolution"),
    ],
)
def test_invalid_presets_name_the_field(tmp_path, preset, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(PipelineError) as error:
        parse_config(["--config", str(path)])
    assert str(error.value).startswith(f"{field}:"), str(error.value)


def test_optional_fields_take_none_on_the_command_line():
    config = parse_config(["--config", "configs/sfhq64_improved.yaml", "--checkpoints_total_limit", "none"])
    assert config.checkpoints_total_limit is None
    config = parse_config(["--max_train_steps", "null", "--num_epochs", "2", "--dataset_name", "user/data"])
    assert (config.max_train_steps, config.num_epochs, config.dataset_name) == (None, 2, "user/data")


def test_yaml_numbers_without_a_dot_are_read_as_numbers(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("learning_rate: 1e-4\nmin_learning_rate: 1e-6\n")  # PyYAML reads these as strings
    config = parse_config(["--config", str(path)])
    assert (config.learning_rate, config.min_learning_rate) == (1e-4, 1e-6)


def test_training_config_json_round_trips_and_is_a_valid_preset(tmp_path):
    config = parse_config(["--config", "configs/sfhq64_improved.yaml", "--seed", "3"])
    run = RunRecord(
        hardware="a machine", num_processes=2, global_step=7, best_fid={"step": 5, "fid": 1.5, "ema_decay": 0.999}
    )
    write_record(tmp_path / "training_config.json", config, run)
    saved = json.loads((tmp_path / "training_config.json").read_text())
    assert saved["run"]["hardware"] == "a machine" and saved["config"]["seed"] == 3
    record = read_record(tmp_path / "training_config.json")
    assert record.config == config and record.run == run
    repeated = parse_config(["--config", str(tmp_path / "training_config.json")])
    assert repeated == dataclasses.replace(config, preset=str(tmp_path / "training_config.json"))
    # a record written by another version: unknown facts are ignored, missing ones take their defaults
    saved["run"] = {"hardware": "older", "a_fact_from_the_future": 1}
    (tmp_path / "training_config.json").write_text(json.dumps(saved))
    assert read_record(tmp_path / "training_config.json").run == RunRecord(hardware="older")
    (tmp_path / "training_config.json").write_text("{")
    with pytest.raises(PipelineError, match="training_config.json: not valid JSON"):
        read_record(tmp_path / "training_config.json")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "train_ddpm.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_invalid_value_stops_before_any_work(tmp_path):
    result = run_cli("--output_dir", str(tmp_path / "out"), "--ddpm_beta_end", "0.00001")
    assert result.returncode == 2
    assert "error: ddpm_beta_end:" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_dry_run_on_the_report_preset_shows_the_mirrored_unet(tmp_path):
    result = run_cli("--config", "configs/report_sfhq64.yaml", "--dry_run", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    end_of_json = result.stdout.index("\n}\n") + 2
    printed, table = json.loads(result.stdout[:end_of_json]), result.stdout[end_of_json:]
    assert printed["block_out_channels"] == [64, 128, 256, 512, 1024]
    assert "parameters: 114,433,219" in table
    assert table.count("DownBlock2D") == 5 and table.count("UpBlock2D") == 5 and "mid block: none" in table
    assert "64x64" in table and "4x4" in table
    # 500 epochs of the 20,000-image subset at 128 images per step; the SFHQ folder is not here
    assert "training steps: 78,125 of 128 images" in result.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_on_the_quickstart_counts_the_embedded_images():
    result = run_cli("--dry_run", "--num_epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "training steps: 375 of 32 images on 6000 training images" in result.stdout  # 2 * 6000 / 32
