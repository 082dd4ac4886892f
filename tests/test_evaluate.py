"""Sampling and FID/KID: our path against clean-fid's own and against an independent float64 computation.

The Inception weights cannot be downloaded here, so the distances run on clean-fid's
`custom_feat_extractor` contract with a small deterministic network; everything else (resizing,
statistics, the distance, the commands, the weights handling) is the real code.
"""

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from conftest import TINY, TinyFeatures
from pipeline import commands, inception, metrics
from pipeline import evaluate as ev
from pipeline.config import TrainingConfig
from pipeline.data import prepare_training_images
from pipeline.model import build_noise_scheduler, build_unet
from pipeline.train import export_pipeline


FEATURES = "tiny test network"


@pytest.fixture(scope="module")
def garments():
    """80 real 16x16 images through the training data loader, and the same images made brighter."""
    config = TrainingConfig(**{**TINY, "max_train_samples": 80})
    pixels = np.asarray(prepare_training_images(config).pixels)
    brighter = np.clip(pixels.astype(np.int16) + 60, 0, 255).astype(np.uint8)
    return pixels, brighter


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    """A saved DDPMPipeline with the tiny UNet (untrained: the commands' plumbing is what is under test)."""
    torch.manual_seed(0)
    config = TrainingConfig(**TINY)
    folder = tmp_path_factory.mktemp("tiny_pipeline")
    export_pipeline(build_unet(config), build_noise_scheduler(config), folder)
    return folder


def independent_fid(features1, features2):
    """The textbook formula in float64 with scipy's sqrtm: nothing shared with our implementation."""
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1 = (f1 - mu1).T @ (f1 - mu1) / (len(f1) - 1)
    c2 = (f2 - mu2).T @ (f2 - mu2) / (len(f2) - 1)
    root = scipy.linalg.sqrtm(c1 @ c2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(root).real)


def features_of(images, mode="clean"):
    return metrics.extract_features(images, TinyFeatures(), mode, batch_size=32)


# ---------------------------------------------------------------------------------------------
# The distance


@pytest.mark.parametrize("size", [2, 16, 128, 512])
def test_frechet_distance_matches_scipy_sqrtm_on_random_spd_matrices(size):
    rng = np.random.default_rng(size)
    a, b = rng.normal(size=(2 * size, size)), rng.normal(size=(2 * size, size))
    sigma1, sigma2 = a.T @ a / size + 0.1 * np.eye(size), b.T @ b / size + 0.1 * np.eye(size)
    mu1, mu2 = rng.normal(size=size), rng.normal(size=size)
    expected = (
        ((mu1 - mu2) ** 2).sum()
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2 * np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real
    )
    assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_rank_deficient_covariances_is_finite_and_symmetric():
    rng = np.random.default_rng(1)
    features1, features2 = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 0.5  # 10 samples, 64 dimensions
    forward = metrics.frechet_distance(*metrics.statistics(features1), *metrics.statistics(features2))
    backward = metrics.frechet_distance(*metrics.statistics(features2), *metrics.statistics(features1))
    assert np.isfinite(forward) and forward > 0
    assert forward == pytest.approx(backward, rel=1e-9)
    # the square roots of the null space's rounding noise (~1e-15) add up to ~1e-6 against a trace of ~64
    assert metrics.frechet_distance(*metrics.statistics(features1), *metrics.statistics(features1)) == pytest.approx(
        0, abs=1e-5
    )


def test_statistics_of_different_sizes_are_refused():
    with pytest.raises(ev.PipelineError, match="different sizes"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------------
# Features: our path against clean-fid's folder path and an independent computation


def test_fid_of_a_set_with_itself_is_zero_and_a_shifted_set_is_far(garments):
    pixels, brighter = garments
    real = features_of(pixels)
    assert real.dtype == np.float64 and real.shape == (80, 32)
    assert metrics.frechet_distance(*metrics.statistics(real), *metrics.statistics(real)) == pytest.approx(0, abs=1e-6)
    halves = metrics.frechet_distance(*metrics.statistics(real[:40]), *metrics.statistics(real[40:]))
    shifted = metrics.frechet_distance(*metrics.statistics(real), *metrics.statistics(features_of(brighter)))
    assert shifted > 5 * halves > 0


def test_fid_equals_an_independent_float64_computation_on_the_same_features(garments):
    pixels, brighter = garments
    real, bright = features_of(pixels), features_of(brighter)
    ours = metrics.frechet_distance(*metrics.statistics(real), *metrics.statistics(bright))
    assert ours == pytest.approx(independent_fid(real, bright), rel=1e-6)


@pytest.mark.parametrize("mode", ["clean", "legacy_pytorch"])
def test_fid_equals_clean_fids_own_folder_computation(garments, tmp_path, mode):
    """Same images written as PNGs and read by clean-fid itself: same resizing, same number."""
    from cleanfid import fid as cleanfid

    pixels, brighter = garments
    for name, images in (("real", pixels), ("bright", brighter)):
        (tmp_path / name).mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image[..., 0]).save(tmp_path / name / f"{index:04d}.png")
    extractor = TinyFeatures()
    theirs = cleanfid.compute_fid(
        str(tmp_path / "real"),
        str(tmp_path / "bright"),
        mode=mode,
        custom_feat_extractor=extractor,
        num_workers=0,
        batch_size=32,
        device=torch.device("cpu"),
        verbose=False,
    )
    ours = metrics.frechet_distance(
        *metrics.statistics(features_of(pixels, mode)), *metrics.statistics(features_of(brighter, mode))
    )
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_wrongly_laid_out_images_never_reach_the_extractor(garments):
    pixels, _ = garments
    with pytest.raises(ev.PipelineError, match="channel-last"):
        features_of(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))  # channel-first
    with pytest.raises(ev.PipelineError, match="uint8"):
        features_of(pixels.astype(np.float32) / 127.5 - 1)  # [-1, 1] floats
    with pytest.raises(ev.PipelineError, match="uint8"):
        features_of(torch.from_numpy(pixels))
    with pytest.raises(ev.PipelineError, match="at least 2"):
        features_of(pixels[:1])


def test_kid_is_reproducible_and_orders_sets(garments):
    pixels, brighter = garments
    real, bright = features_of(pixels), features_of(brighter)
    same = metrics.kernel_inception_distance(real[:40], real[40:], seed=3)
    assert same == metrics.kernel_inception_distance(real[:40], real[40:], seed=3)
    assert metrics.kernel_inception_distance(real, bright, seed=3) > same + 1e-3


# ---------------------------------------------------------------------------------------------
# Inception weights: offline, given, corrupt


def test_missing_weights_without_network_stop_with_a_message_naming_the_file(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        with pytest.raises(ev.PipelineError) as raised:
            inception.find_weights("legacy_pytorch", url="http://127.0.0.1:9/pt_inception-2015-12-05-6726825d.pth")
    finally:
        torch.hub.set_dir(previous)
    message = str(raised.value)
    expected = tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert str(expected) in message and "--inception_weights" in message and "could not be downloaded" in message
    assert not list((tmp_path / "hub" / "checkpoints").iterdir())  # no partial file left behind


@pytest.mark.parametrize("mode", metrics.MODES)
def test_corrupt_weights_are_refused_with_a_clear_message(tmp_path, mode):
    corrupt = tmp_path / "weights.bin"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ev.PipelineError, match="is not a usable .*download .* again"):
        inception.build_inception(mode, corrupt)


def run_module(*args, check=True):
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_evaluate_command_stops_on_missing_or_corrupt_weights(tiny_pipeline, tmp_path, capsys):
    base = [
        "pipeline.evaluate",
        "fid",
        "--model",
        str(tiny_pipeline),
        "--reference_dataset",
        "data/fashion_mnist",
        "--device",
        "cpu",
    ]
    missing = run_module(*base, "--inception_weights", str(tmp_path / "nowhere.pt"), check=False)
    assert missing.returncode == 2
    assert "error: inception_weights: no file at" in missing.stderr and "inception-2015-12-05.pt" in missing.stderr
    corrupt = tmp_path / "inception-2015-12-05.pt"
    corrupt.write_bytes(b"not a torchscript archive" * 100)
    with pytest.raises(SystemExit) as stopped:  # in this process: the first call covered `python -m`'s start
        commands.evaluate_main([*base[1:], "--inception_weights", str(corrupt)])
    assert stopped.value.code == 2 and "is not a usable inception-2015-12-05.pt" in capsys.readouterr().err
    assert not (tiny_pipeline / "eval").exists()


# ---------------------------------------------------------------------------------------------
# The two commands end to end on a saved pipeline


def test_sample_command_writes_pngs_grid_and_record_and_is_seeded(tiny_pipeline, tmp_path):
    common = [
        "pipeline.sample",
        "--model",
        str(tiny_pipeline),
        "--num_images",
        "6",
        "--sampler",
        "ddpm",
        "--steps",
        "4",
        "--device",
        "cpu",
    ]
    run_module(*common, "--batch_size", "6", "--output_dir", str(tmp_path / "a"))
    commands.sample_main([*common[1:], "--batch_size", "4", "--output_dir", str(tmp_path / "b")])  # in this process
    record = json.loads((tmp_path / "a" / "samples.json").read_text())
    assert record["num_images"] == 6 and record["sampler"] == "ddpm" and record["model_evaluations_per_image"] == 4
    assert (tmp_path / "a" / "grid.png").is_file()
    for index in range(6):  # the same seed gives the same images, whatever the batch size
        a = np.asarray(Image.open(tmp_path / "a" / f"{index:06d}.png"))
        b = np.asarray(Image.open(tmp_path / "b" / f"{index:06d}.png"))
        assert a.shape == (16, 16) and np.array_equal(a, b)
    first, second = (np.asarray(Image.open(tmp_path / "a" / f"00000{i}.png")) for i in (0, 1))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sampler", "ddpm", "--eta", "1"], "error: eta: applies to the ddim sampler only"),
        (["--steps", "0"], "error: argument --steps: must be at least 1"),
        (["--sampler", "euler"], "invalid choice"),
    ],
)
def test_sample_command_refuses_bad_options_before_loading_anything(tmp_path, capsys, argv, message):
    from pipeline.commands import sample_main as main

    with pytest.raises(SystemExit) as stopped:
        main(["--model", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out"), *argv])
    assert stopped.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fid", "--reference", "r.npz"], "one of the arguments --model --samples is required"),
        (["fid", "--model", "m", "--samples", "s", "--reference", "r.npz"], "not allowed with argument --model"),
        (["fid", "--model", "m"], "give exactly one of --reference, --reference_data_dir and --reference_dataset"),
        (
            ["fid", "--model", "m", "--reference", "r.npz", "--reference_dataset", "d"],
            "give exactly one of --reference",
        ),
        (["fid", "--model", "m", "--reference", "r.npz", "--num_images", "1"], "a covariance needs at least 2"),
        (["reference", "--reference_dataset", "d", "--output", "o.npz"], "--model --resolution is required"),
        (["reference", "--resolution", "8", "--output", "o.npz"], "exactly one of --reference_data_dir and"),
        (
            ["fid", "--model", "m", "--reference", "r.npz", "--sampler", "ddpm", "--eta", "1"],
            "eta: applies to the ddim",
        ),
    ],
)
def test_evaluate_command_refuses_bad_options_before_loading_anything(tmp_path, capsys, argv, message):
    from pipeline.commands import evaluate_main

    with pytest.raises(SystemExit) as stopped:
        evaluate_main([*argv, "--device", "cpu"] if argv[0] == "fid" else argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_sample_command_names_a_folder_that_is_not_a_pipeline(tmp_path, capsys):
    from pipeline.commands import sample_main as main

    with pytest.raises(SystemExit) as stopped:
        main(["--model", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "error: model: " in err and "holds no model_index.json" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "sampler, extra, evaluations",
    [
        ("ddim", {"eta": 1.0}, 3),
        ("dpmsolver++", {"solver_order": 3}, 3),
        ("sde-dpmsolver++", {}, 3),
        ("ddpm", {}, 3),
        ("unipc", {}, 3),
    ],
)
def test_every_sampler_runs_from_the_saved_scheduler(tiny_pipeline, sampler, extra, evaluations):
    from pipeline.sample import CountingUNet, generate, load_pipeline, make_sampler

    pipeline = load_pipeline(str(tiny_pipeline))
    unet = CountingUNet(pipeline.unet)
    built = make_sampler(sampler, pipeline.scheduler.config, extra.get("solver_order", 2))
    assert built.config.num_train_timesteps == TINY["ddpm_num_steps"]
    images = generate(unet, built, 3, 3, seed=1, eta=extra.get("eta", 0.0))
    assert images.shape == (3, 16, 16, 1) and images.min() >= 0 and images.max() <= 1
    assert unet.evaluations == 3 * evaluations
    again = generate(
        unet,
        make_sampler(sampler, pipeline.scheduler.config, extra.get("solver_order", 2)),
        3,
        3,
        seed=1,
        eta=extra.get("eta", 0.0),
    )
    assert np.array_equal(images, again)


def evaluate_args(*extra):
    return commands.parse_evaluate_args(
        [
            "fid",
            "--device",
            "cpu",
            "--num_images",
            "40",
            "--batch_size",
            "20",
            "--sampler",
            "dpmsolver++",
            "--steps",
            "3",
            *extra,
        ]
    )


def test_evaluate_command_end_to_end_with_saved_reference_statistics(tiny_pipeline, tmp_path):
    stats = tmp_path / "reference.npz"
    reference_args = commands.parse_evaluate_args(
        [
            "reference",
            "--model",
            str(tiny_pipeline),
            "--reference_dataset",
            "data/fashion_mnist",
            "--reference_max_images",
            "64",
            "--output",
            str(stats),
            "--device",
            "cpu",
        ]
    )
    meta = ev.make_reference(reference_args, feature_fn=TinyFeatures(), feature_name=FEATURES)
    assert meta["images"] == 64 and meta["resolution"] == 16 and stats.is_file()

    from_stats = ev.evaluate(
        evaluate_args("--model", str(tiny_pipeline), "--reference", str(stats)), TinyFeatures(), FEATURES
    )
    from_source = ev.evaluate(
        evaluate_args(
            "--model", str(tiny_pipeline), "--reference_dataset", "data/fashion_mnist", "--reference_max_images", "64"
        ),
        TinyFeatures(),
        FEATURES,
    )
    assert from_stats["fid"] == pytest.approx(from_source["fid"], rel=1e-4)  # stats keep features as float32
    assert from_stats["fid"] > 0 and from_stats["num_reference"] == 64

    metrics = json.loads((tiny_pipeline / "eval" / "metrics.json").read_text())["results"]
    assert len(metrics) == 2  # one entry per reference; a rerun would replace its own
    entry = metrics[0]
    for key in (
        "fid",
        "kid",
        "num_samples",
        "sampler",
        "steps",
        "seed",
        "reference",
        "mode",
        "clean_fid_version",
        "wall_seconds",
    ):
        assert key in entry
    assert (
        entry["num_samples"] == 40
        and entry["sampler"] == "dpmsolver++"
        and entry["steps"] == 3
        and entry["mode"] == "clean"
    )
    assert (
        entry["reference"]["source"] == "data/fashion_mnist"
        and entry["reference"]["statistics_file"] == "reference.npz"
    )
    assert (tiny_pipeline / "eval" / "samples-dpmsolver++-3.png").is_file()

    ev.evaluate(evaluate_args("--model", str(tiny_pipeline), "--reference", str(stats)), TinyFeatures(), FEATURES)
    assert len(json.loads((tiny_pipeline / "eval" / "metrics.json").read_text())["results"]) == 2

    with pytest.raises(ev.PipelineError, match="holds tiny test network features in mode clean"):
        ev.evaluate(
            evaluate_args("--model", str(tiny_pipeline), "--reference", str(stats), "--mode", "legacy_pytorch"),
            TinyFeatures(),
            FEATURES,
        )


def test_evaluating_a_samples_folder_equals_evaluating_the_model(tiny_pipeline, tmp_path):
    run_module(
        "pipeline.sample",
        "--model",
        str(tiny_pipeline),
        "--num_images",
        "40",
        "--batch_size",
        "20",
        "--steps",
        "3",
        "--sampler",
        "dpmsolver++",
        "--device",
        "cpu",
        "--output_dir",
        str(tmp_path / "samples"),
    )
    reference = [
        "--reference_dataset",
        "data/fashion_mnist",
        "--reference_max_images",
        "64",
        "--output_dir",
        str(tmp_path / "eval"),
    ]
    from_folder = ev.evaluate(
        evaluate_args("--samples", str(tmp_path / "samples"), *reference), TinyFeatures(), FEATURES
    )
    from_model = ev.evaluate(evaluate_args("--model", str(tiny_pipeline), *reference), TinyFeatures(), FEATURES)
    assert from_folder["fid"] == from_model["fid"] and from_folder["kid"] == from_model["kid"]


def test_unipc_runs_here_but_not_through_the_stock_ddpm_pipeline(tiny_pipeline):
    """diffusers 0.42's DDPMPipeline passes a generator to scheduler.step, which UniPC's step does not take:
    the README and the model card say so, and pipeline.sample / pipeline.evaluate run it instead."""
    from diffusers import DDPMPipeline, UniPCMultistepScheduler

    pipeline = DDPMPipeline.from_pretrained(str(tiny_pipeline))
    pipeline.scheduler = UniPCMultistepScheduler.from_config(pipeline.scheduler.config)
    with pytest.raises(TypeError, match="generator"):
        pipeline(batch_size=1, num_inference_steps=2)


def test_the_stochastic_dpm_solver_runs_through_the_stock_ddpm_pipeline_with_the_same_images(tiny_pipeline):
    """SDE-DPM-Solver++ takes the pipeline's generators: a user of stock diffusers gets the images that
    pipeline.sample gives for the same per-image generators."""
    from diffusers import DDPMPipeline, DPMSolverMultistepScheduler

    from pipeline.sample import generate, image_generators, load_pipeline, make_sampler

    pipeline = load_pipeline(str(tiny_pipeline))
    ours = generate(pipeline.unet, make_sampler("sde-dpmsolver++", pipeline.scheduler.config), 3, 4, seed=3)
    stock = DDPMPipeline.from_pretrained(str(tiny_pipeline))
    stock.scheduler = DPMSolverMultistepScheduler.from_config(stock.scheduler.config, algorithm_type="sde-dpmsolver++")
    theirs = stock(batch_size=3, generator=image_generators(3, 0, 3), num_inference_steps=4, output_type="np").images
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    deterministic = generate(pipeline.unet, make_sampler("dpmsolver++", pipeline.scheduler.config), 3, 4, seed=3)
    assert np.abs(ours - deterministic).max() > 1e-3  # the noise it adds at each step is real


def test_timestep_spacing_overrides_the_saved_one_for_sampling_only(tiny_pipeline, tmp_path):
    """--timestep_spacing replaces the spacing the model saved (trailing starts the sampler at t = T - 1, leading
    below it); pipeline.sample records it, and a bad value is refused before anything is sampled."""
    from pipeline.commands import sample_main as main
    from pipeline.sample import SamplingRequest, load_pipeline, make_sampler, sample_unet

    pipeline = load_pipeline(str(tiny_pipeline))
    saved = dict(pipeline.scheduler.config)
    other = "leading" if saved["timestep_spacing"] == "trailing" else "trailing"
    first = {}
    for spacing in ("leading", "trailing"):
        sampler = make_sampler("ddim", {**saved, "timestep_spacing": spacing})
        sampler.set_timesteps(3)
        first[spacing] = int(sampler.timesteps[0])
    assert first["trailing"] == saved["num_train_timesteps"] - 1 > first["leading"]

    def request(spacing):
        return SamplingRequest("ddim", 3, 2, 2, seed=4, timestep_spacing=spacing)

    saved_images = sample_unet(pipeline.unet, saved, request(None))
    other_images = sample_unet(pipeline.unet, saved, request(other))
    assert np.array_equal(
        other_images, sample_unet(pipeline.unet, {**saved, "timestep_spacing": other}, request(None))
    )
    assert not np.array_equal(saved_images, other_images)
    with pytest.raises(SystemExit):  # argparse's choices: refused before anything is loaded
        main(["--model", str(tiny_pipeline), "--output_dir", str(tmp_path / "bad"), "--timestep_spacing", "uniform"])
    assert not (tmp_path / "bad").exists()
    main(["--model", str(tiny_pipeline), "--output_dir", str(tmp_path / "out"), "--num_images", "2", "--steps", "2",
          "--timestep_spacing", other])  # fmt: skip
    assert json.loads((tmp_path / "out" / "samples.json").read_text())["timestep_spacing"] == other


def test_noise_drawn_on_the_device_keeps_images_independent_of_the_batch_size(tiny_pipeline):
    """The device path (per-image generators on the UNet's device; on a GPU it saves a copy per step) gives the
    same images at any batch size; on the CPU it is the CPU path itself."""
    from pipeline.sample import generate, load_pipeline, make_sampler

    pipeline = load_pipeline(str(tiny_pipeline))

    def images(batch_size, on_device):
        sampler = make_sampler("ddpm", pipeline.scheduler.config)
        return generate(pipeline.unet, sampler, 5, 3, seed=7, batch_size=batch_size, noise_on_device=on_device)

    whole, split = images(5, True), images(2, True)
    np.testing.assert_allclose(whole, split, rtol=0, atol=1e-5)  # the UNet's float sums differ with the batch shape
    assert np.array_equal(whole, images(5, False))  # the device here is the CPU


def test_the_default_sampler_is_the_one_the_training_run_chose(tiny_pipeline, tmp_path):
    """Without --sampler, pipeline.sample and pipeline.evaluate use the model's recorded grid sampler (its preset's,
    chosen by measurement); a folder without a training record falls back to the DDPM chain at 100 steps."""
    from pipeline.commands import add_sampling_arguments, sampling_request
    from pipeline.record import RunRecord, write_record

    parser = argparse.ArgumentParser()
    add_sampling_arguments(parser)
    args = parser.parse_args([])
    default = sampling_request(parser, args, str(tiny_pipeline))
    assert (default.sampler, default.steps) == ("ddpm", 100)
    trained = tmp_path / "trained"
    shutil.copytree(tiny_pipeline, trained)
    write_record(
        trained / "training_config.json",
        TrainingConfig(**{**TINY, "grid_sampler": "unipc", "grid_inference_steps": 7}),
        RunRecord(),
    )
    request = sampling_request(parser, args, str(trained))
    assert (request.sampler, request.steps) == ("unipc", 7)
    other = sampling_request(parser, parser.parse_args(["--sampler", "ddim"]), str(trained))
    assert (other.sampler, other.steps) == ("ddim", 100)


def test_a_grid_takes_its_column_count_or_is_as_square_as_the_count_allows():
    from pipeline.sample import image_grid

    images = np.zeros((32, 4, 4, 1), dtype=np.float32)
    assert image_grid(images).size == (6 * 6 + 2, 6 * 6 + 2)  # 6 columns, 6 rows (the last one part full)
    assert image_grid(images, columns=8).size == (8 * 6 + 2, 4 * 6 + 2)  # 4 rows of 8, 2-pixel gaps


def test_samples_replace_a_samples_folder_whole_and_never_write_into_another_folder(tiny_pipeline, tmp_path, capsys):
    """Probe: a re-sample wrote PNGs in place (a kill left a mix that `evaluate fid --samples` scored as one), and
    into another model's folder."""
    from pipeline.commands import sample_main as main

    common = ["--model", str(tiny_pipeline), "--sampler", "ddpm", "--steps", "2", "--device", "cpu"]
    main([*common, "--num_images", "5", "--output_dir", str(tmp_path / "s")])
    main([*common, "--num_images", "3", "--output_dir", str(tmp_path / "s")])
    assert sorted(path.name for path in (tmp_path / "s").iterdir()) == [
        "000000.png", "000001.png", "000002.png", "grid.png", "samples.json"
    ]  # fmt: skip
    before = {path: path.read_bytes() for path in tiny_pipeline.rglob("*") if path.is_file()}
    with pytest.raises(SystemExit) as stopped:
        main([*common, "--num_images", "2", "--output_dir", str(tiny_pipeline)])
    assert stopped.value.code == 2 and "model_index.json, scheduler/, unet/)" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in tiny_pipeline.rglob("*") if path.is_file()} == before


def test_image_generators_are_the_spawned_streams_and_cost_nothing_for_a_late_start():
    """Probe: each batch used to re-spawn start + count streams (quadratic in the image count)."""
    import time

    from pipeline.sample import image_generators

    spawned = [int(s.generate_state(1, dtype=np.uint64)[0] >> 1) for s in np.random.SeedSequence(5).spawn(12)[4:]]
    assert [g.initial_seed() for g in image_generators(5, 4, 8)] == spawned
    started = time.perf_counter()
    image_generators(5, 10**9, 4)  # a batch a billion images in
    assert time.perf_counter() - started < 1.0


def test_a_corrupt_metrics_file_stops_the_fid_command_before_any_sampling(tiny_pipeline, tmp_path, monkeypatch):
    """Probe: a corrupt eval/metrics.json used to be read after the sampling and the features (a traceback)."""
    from pipeline import sample

    output = tmp_path / "eval"
    output.mkdir()
    (output / "metrics.json").write_text('{"results": 42}')
    sampled = []
    monkeypatch.setattr(ev, "sample_images", lambda *args: sampled.append(args) or sample.sample_images(*args))
    args = ["--model", str(tiny_pipeline), "--reference_dataset", "data/fashion_mnist", "--output_dir", str(output)]
    with pytest.raises(ev.PipelineError, match="metrics.json: 'results' must be a list of objects"):
        ev.evaluate(evaluate_args(*args), TinyFeatures(), FEATURES)
    assert not sampled and (output / "metrics.json").read_text() == '{"results": 42}'


def test_a_samples_folder_with_a_file_that_is_not_its_image_is_refused_by_name(tmp_path):
    """Probe: a numbered PNG that was not an image (or another size) was a PIL or NumPy traceback."""
    folder = tmp_path / "samples"
    folder.mkdir()
    info = {"model": "m", "sampler": "ddpm", "steps": 2, "num_images": 2}
    (folder / "samples.json").write_text(json.dumps(info))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "00000.png")
    (folder / "00001.png").write_text("not a png")
    with pytest.raises(ev.PipelineError, match="samples: .*00001.png is not a readable image"):
        ev.read_samples(folder)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "00001.png")
    with pytest.raises(
        ev.PipelineError, match="samples: .*00001.png is \\(16, 16, 1\\) uint8, 00000.png \\(8, 8, 1\\)"
    ):
        ev.read_samples(folder)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "00001.png")
    images, read = ev.read_samples(folder)
    assert images.shape == (2, 8, 8, 1) and read == info


def test_the_fid_and_reference_commands_write_only_what_they_own(tiny_pipeline, tmp_path, monkeypatch):
    """Probes: `fid --output_dir <another model>/eval` put this model's FID into that model's metrics and card, a
    user's file in --output_dir could be replaced, and `reference --output` replaced any file. Each is refused
    before any sampling or encoding, leaving the files as they were."""
    sampled = []
    monkeypatch.setattr(ev, "sample_images", lambda *args: sampled.append(args))
    other = tmp_path / "other"
    (other / "eval").mkdir(parents=True)
    (other / "model_index.json").write_text("{}")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    common = ["--model", str(tiny_pipeline), "--reference_dataset", "data/fashion_mnist", "--output_dir"]
    with pytest.raises(ev.PipelineError, match=f"is inside {other.resolve()}, the folder of another model than"):
        ev.evaluate(evaluate_args(*common, str(other / "eval")), TinyFeatures(), FEATURES)
    with pytest.raises(
        ev.PipelineError, match=r"holds files that are not metrics or grids of this command \(notes.txt\)"
    ):
        ev.evaluate(evaluate_args(*common, str(mine)), TinyFeatures(), FEATURES)
    assert not sampled and list((other / "eval").iterdir()) == [] and (mine / "notes.txt").read_text() == "mine"
    reference = commands.parse_evaluate_args(
        ["reference", "--reference_dataset", "data/fashion_mnist", "--resolution", "16", "--channels", "1",
         "--output", str(mine / "notes.txt")]
    )  # fmt: skip
    with pytest.raises(ev.PipelineError, match="notes.txt exists and is not reference statistics of this command"):
        ev.make_reference(reference, feature_fn=TinyFeatures(), feature_name=FEATURES)
    assert (mine / "notes.txt").read_text() == "mine"


def _scripted_inception(path, offset: float):
    """A TorchScript file with the interface clean-fid's InceptionV3W loads (`layers`, 2048 features): each feature a
    pixel mean of the normalised image plus `offset`. Not Inception: the checks below must tell."""

    class Layers(torch.nn.Module):
        def __init__(self, offset: float):
            super().__init__()
            self.offset = offset

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 683)[:, :2048] + self.offset

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers(offset)

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    torch.jit.script(Network()).save(str(path))
    return path


def test_a_clean_mode_file_that_is_not_inception_is_refused_and_every_file_is_named_by_its_digest(tmp_path):
    """Probe: any TorchScript file with 2048 outputs was recorded as clean-fid's Inception. One whose features are
    negative (Inception's pool3 averages ReLU outputs) is refused; the name a result records carries the file's
    SHA-256, so statistics of two different files never pass as the same extractor's."""
    negative = _scripted_inception(tmp_path / "negative.pt", 0.0)  # the black image gives -1
    with pytest.raises(
        ev.PipelineError, match="gives negative or non-finite features.*it is not inception-2015-12-05.pt"
    ):
        inception.build_inception("clean", negative)
    names = []
    for offset in (2.0, 3.0):
        _, name = inception.inception_extractor("clean", str(_scripted_inception(tmp_path / f"{offset}.pt", offset)))
        names.append(name)
    digest = inception.file_sha256(tmp_path / "2.0.pt")[:16]
    assert names[0] == f"clean-fid Inception-V3 (inception-2015-12-05.pt, SHA-256 {digest})" and names[1] != names[0]
    with pytest.raises(ev.PipelineError, match="this evaluation uses"):
        metrics.check_reference({"mode": "clean", "feature_extractor": names[0]}, "reference", "clean", names[1])


def test_metrics_of_two_models_in_one_folder_are_kept_apart_and_a_rerun_replaces_its_own(tmp_path):
    """Probe: entries were keyed without the model, so a second model's FID with the same sampler replaced the
    first model's in a shared ./eval/metrics.json."""
    path = tmp_path / "metrics.json"
    entry = {"sampler": "ddpm", "steps": 20, "num_samples": 40, "seed": 0, "reference": {}, "mode": "clean"}
    ev.append_metrics(path, {**entry, "model": "user/a", "fid": 1.0}, [])
    ev.append_metrics(path, {**entry, "model": "user/b", "fid": 2.0}, ev.read_metrics(path))
    ev.append_metrics(path, {**entry, "model": "user/a", "fid": 3.0}, ev.read_metrics(path))
    assert [(e["model"], e["fid"]) for e in ev.read_metrics(path)] == [("user/b", 2.0), ("user/a", 3.0)]
