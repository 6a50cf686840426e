import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_in_process, run_module, synthetic_images
from pipelines import sample
from prior.sampling import SETTINGS, SamplingConfig, resolve_sampling
from store.index_maps import read_index_maps
from store.runs import WEIGHTS_HASHES, read_json, weights_hashes, write_json
from tokenizer import Tokenizer



def run_cli(args, capsys):
    """(exit status, stderr lines) of the sample command run in-process."""
    status, _, err = run_in_process(sample.main, args, capsys)
    return status, err


def tokens_of(out):
    return read_index_maps(out / "tokens", "samples").maps.astype(np.int64)


def test_sample_writes_complete_images_tokens_and_settings(prior_run, tokenizer_run, tmp_path, capsys):
    out = tmp_path / "out"
    status, _ = run_cli(["--prior", prior_run, "--n", 5, "--batch-size", 2, "--out", out, "--label", "Coat"], capsys)
    assert status == 0
    with Image.open(out / "grid.png") as grid:
        grid.load()
    files = sorted((out / "images").iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(5)]
    tokens = tokens_of(out)
    assert tokens.shape == (5, 7, 7) and tokens.max() < 32
    assert read_index_maps(out / "tokens", "samples").labels.tolist() == [4] * 5
    decoded = Tokenizer.load(tokenizer_run).decode(torch.from_numpy(tokens))
    with Image.open(files[3]) as png:
        pixels = np.asarray(png.convert("L"))
    assert np.array_equal(pixels, decoded[3, 0].mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy())
    settings = json.loads((out / "sample.json").read_text())
    assert settings["seed"] == 0 and settings["label_name"] == "Coat" and settings["n"] == 5
    assert settings["seconds"]["sample"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "staging folder left behind"


def test_npz_holds_the_pixels_of_the_pngs_in_the_evaluators_layout(prior_run, tmp_path, capsys):
    out = tmp_path / "out"
    status, _ = run_cli(["--prior", prior_run, "--n", 5, "--batch-size", 2, "--out", out, "--npz"], capsys)
    assert status == 0
    with np.load(out / "samples.npz", allow_pickle=False) as archive:
        assert archive.files == ["arr_0"]
        images = archive["arr_0"]
    assert images.dtype == np.uint8 and images.shape == (5, 28, 28, 3)
    for i, file in enumerate(sorted((out / "images").iterdir())):
        with Image.open(file) as png:
            assert np.array_equal(np.asarray(png.convert("RGB")), images[i])
    assert json.loads((out / "sample.json").read_text())["npz"] is True
    status, _ = run_cli(["--prior", prior_run, "--n", 2, "--out", tmp_path / "plain"], capsys)
    assert status == 0 and not (tmp_path / "plain" / "samples.npz").exists()


def test_without_a_label_the_classes_follow_the_training_split_and_none_means_no_label(prior_run, tokenizer_run,
                                                                                          tmp_path, capsys):
    train_labels = read_index_maps(tokenizer_run / "maps", "train").labels
    counts = np.bincount(train_labels, minlength=10)
    assert run_cli(["--prior", prior_run, "--n", 20, "--out", tmp_path / "mix"], capsys)[0] == 0
    asked = read_index_maps(tmp_path / "mix" / "tokens", "samples").labels
    # Each class's share of 20 is within one grid of its share of the training split, in class order.
    assert len(asked) == 20 and (np.abs(np.bincount(asked, minlength=10) - 20 * counts / counts.sum()) < 1).all()
    assert np.array_equal(asked, np.sort(asked))
    assert json.loads((tmp_path / "mix" / "sample.json").read_text())["class_counts"] == np.bincount(
        asked, minlength=10).tolist()
    assert run_cli(["--prior", prior_run, "--n", 4, "--label", "none", "--out", tmp_path / "none"], capsys)[0] == 0
    assert read_index_maps(tmp_path / "none" / "tokens", "samples").labels.tolist() == [-1] * 4


def test_same_seed_same_grids_and_samplers_agree(prior_run, tmp_path, capsys):
    common = ["--prior", prior_run, "--n", 4, "--batch-size", 3, "--label", "2", "--guidance-scale", "2",
              "--top-k", "10"]
    for name, extra in (("a", []), ("b", []), ("naive", ["--sampler", "naive"]), ("other", ["--seed", "1"])):
        assert run_cli([*common, *extra, "--out", tmp_path / name], capsys)[0] == 0
    assert np.array_equal(tokens_of(tmp_path / "a"), tokens_of(tmp_path / "b"))
    assert np.array_equal(tokens_of(tmp_path / "a"), tokens_of(tmp_path / "naive"))
    assert not np.array_equal(tokens_of(tmp_path / "a"), tokens_of(tmp_path / "other"))


def test_guidance_schedules_are_flags_recorded_in_sample_json_and_drawn_as_the_library_draws(prior_run, tmp_path,
                                                                                            capsys):
    from generation import ImageGenerator

    flags = ["--guidance-scale", "1:2.5", "--guidance-schedule", "linear", "--guidance-from", "3",
             "--temperature", "1.1:0.9"]
    assert run_cli(["--prior", prior_run, "--n", 4, "--batch-size", 3, *flags, "--out", tmp_path / "ramp"],
                   capsys)[0] == 0
    recorded = json.loads((tmp_path / "ramp" / "sample.json").read_text())
    assert (recorded["guidance_scale"], recorded["guidance_schedule"], recorded["guidance_from"]) == (
        [1.0, 2.5], "linear", 3)
    # A pair without its schedule takes the default's ramp, linear where the default is constant.
    assert (recorded["temperature"], recorded["temperature_schedule"]) == ([1.1, 0.9], "linear")
    tokens, _, _ = ImageGenerator.load(prior_run).sample_tokens(
        4, batch_size=3, guidance_scale=(1.0, 2.5), guidance_schedule="linear", guidance_from=3,
        temperature=(1.1, 0.9), temperature_schedule="linear")
    assert np.array_equal(tokens_of(tmp_path / "ramp"), tokens.numpy())
    # The old constant form still works and is recorded as constant; the default is SamplingConfig's ramp.
    assert run_cli(["--prior", prior_run, "--n", 4, "--guidance-scale", "2", "--out", tmp_path / "two"], capsys)[0] == 0
    constant = json.loads((tmp_path / "two" / "sample.json").read_text())
    assert (constant["guidance_scale"], constant["guidance_schedule"]) == (2.0, "constant")
    assert run_cli(["--prior", prior_run, "--n", 4, "--out", tmp_path / "default"], capsys)[0] == 0
    default = json.loads((tmp_path / "default" / "sample.json").read_text())
    expected = json.loads(json.dumps(resolve_sampling(torch.tensor([0]), SamplingConfig()).record()))
    assert {name: default[name] for name in SETTINGS} == expected
    assert not np.array_equal(tokens_of(tmp_path / "default"), tokens_of(tmp_path / "ramp"))


def test_completion_keeps_the_given_rows(prior_run, tokenizer_run, tmp_path, capsys):
    image = synthetic_images(1, seed=5)[0][0][..., 0]
    Image.fromarray(image).save(tmp_path / "shoe.png")
    out = tmp_path / "done"
    assert run_cli(["--prior", prior_run, "--n", 3, "--complete", tmp_path / "shoe.png", "--keep-rows", 3,
                    "--out", out], capsys)[0] == 0
    expected = Tokenizer.load(tokenizer_run).encode(torch.from_numpy(image)[None, None]).numpy()
    tokens = tokens_of(out)
    assert (tokens[:, :3] == expected[:, :3]).all()
    with Image.open(out / "grid.png") as grid:  # the original plus three completions, two a row, drawn at 3x
        assert grid.size[0] == 2 + 2 * (3 * 28 + 2)


def test_existing_output_is_kept_unless_overwrite(prior_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(["--prior", prior_run, "--n", 2, "--out", out], capsys)[0] == 0
    first = tokens_of(out)
    status, lines = run_cli(["--prior", prior_run, "--n", 2, "--out", out, "--seed", 9], capsys)
    assert status == 2 and "exists already" in lines[0]
    assert np.array_equal(tokens_of(out), first)
    assert run_cli(["--prior", prior_run, "--n", 2, "--out", out, "--seed", 9, "--overwrite"], capsys)[0] == 0
    assert not np.array_equal(tokens_of(out), first)


def _wrong_size_image(tmp_path):
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "small.png")
    return ["--complete", tmp_path / "small.png"]


@pytest.mark.parametrize("case,extra,message", [
    ("n", ["--n", "0"], "argument --n/--num-samples/--n-samples: must be a positive integer, not 0"),
    ("temperature", ["--temperature", "-1"], "temperature"),
    ("top-k", ["--top-k", "999"], "--top-k must be an integer in 1..32"),
    ("top-p", ["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ("label-index", ["--label", "42"], "label 42 outside 0..9"),
    ("label-name", ["--label", "Spaceship"], "unknown label 'Spaceship'"),
    ("guidance-without-label", ["--label", "none", "--guidance-scale", "3"], "needs labels"),
    ("guidance-not-a-ramp", ["--guidance-scale", "1:2:3"], "argument --guidance-scale: must be a number or START:END"),
    ("guidance-ramp-constant", ["--guidance-scale", "1:3", "--guidance-schedule", "constant"],
     "--guidance-scale 1:3 changes along the grid: give --guidance-schedule"),
    ("guidance-schedule", ["--guidance-schedule", "steep"], "argument --guidance-schedule: invalid choice"),
    ("guidance-from", ["--guidance-from", "-2"], "argument --guidance-from: must be a position (an integer >= 0) or"),
    ("guidance-from-fraction", ["--guidance-from", "1.5"], "argument --guidance-from: must be a position"),
    ("temperature-ramp", ["--temperature", "1:0"], "temperature must be a finite number > 0"),
    ("keep-rows-alone", ["--keep-rows", "2"], "--keep-rows needs --complete"),
    ("keep-rows-too-many", ["--complete", "IMAGE", "--keep-rows", "9"], "--keep-rows must be an integer in 0..7"),
    ("wrong-size-image", "WRONG_SIZE", "the tokenizer takes 28x28"),
    ("missing-image", ["--complete", "/nonexistent.png"], "cannot read image"),
    ("batch-size", ["--batch-size", "0"], "argument --batch-size: must be a positive integer, not 0"),
])
def test_bad_arguments_give_one_line_and_write_nothing(prior_run, tmp_path, capsys, case, extra, message):
    if extra == "WRONG_SIZE":
        extra = _wrong_size_image(tmp_path)
    if "IMAGE" in extra:
        Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "ok.png")
        extra = [tmp_path / "ok.png" if a == "IMAGE" else a for a in extra]
    out = tmp_path / "out"
    status, lines = run_cli(["--prior", prior_run, "--n", 2, "--out", out, *extra], capsys)
    assert status == 2
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_a_changed_tokenizer_is_refused_from_the_command_line(prior_run, tmp_path):
    weights = prior_run / "tokenizer" / "model.safetensors"  # the copy the prior run carries and samples with
    state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(weights)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    __import__("safetensors.torch", fromlist=["save_file"]).save_file(state, weights)
    # A whole other tokenizer run in its place (its results.json recording its own weights): the prior's record of
    # the weights it was trained with refuses it.
    results = read_json(prior_run / "tokenizer" / "results.json")
    write_json(prior_run / "tokenizer" / "results.json", {**results, WEIGHTS_HASHES: weights_hashes(weights.parent)})
    result = run_module("pipelines.sample", "--prior", prior_run, "--n", 2, "--out", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "changed since the prior" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_newest_prior_run_is_the_default(prior_run, tmp_path, capsys):
    status, _ = run_cli(["--output-root", tmp_path / "runs", "--n", 2, "--out", tmp_path / "newest"], capsys)
    assert status == 0
    settings = json.loads((tmp_path / "newest" / "sample.json").read_text())
    assert (tmp_path / "newest" / settings["prior_run"]).resolve() == prior_run.resolve()  # relative to --out


def test_each_batch_is_written_before_the_next_is_drawn(prior_run, tmp_path, capsys, monkeypatch):
    """Memory flat in --n: the command holds one batch, the folder receiving batch k before batch k + 1 is drawn."""
    from generation import ImageGenerator

    draw_batches, written_before = ImageGenerator.draw_batches, []

    def watched(self, *args, **kwargs):
        for start, tokens, images in draw_batches(self, *args, **kwargs):
            staged = [p for p in tmp_path.iterdir() if p.name.startswith(".out.") and p.name.endswith(".tmp")]
            written_before.append(len(list((staged[0] / "images").iterdir())) if staged else None)
            yield start, tokens, images

    monkeypatch.setattr(ImageGenerator, "draw_batches", watched)
    status, err = run_cli(["--prior", prior_run, "--n", 7, "--batch-size", 2, "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    # The first batch is drawn before the folder exists (a bad setting writes nothing); then 2, 4, 6 images are in.
    assert written_before == [None, 2, 4, 6]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 7


@pytest.mark.parametrize("flags,message", [
    (["--n", 10**13], "need at least"),  # 10**13 PNG files fit on no disk here
    (["--n", 10**9, "--batch-size", 10**9], "would take about"),  # nor a batch of 10**9 grids in memory
    (["--seed", 2**64], "--seed: must be an integer from 0 to 2**64 - 1"),
    (["--seed", -1], "--seed: must be an integer from 0 to 2**64 - 1"),
])
def test_requests_that_cannot_fit_or_be_seeded_are_one_line_before_any_work(prior_run, tmp_path, capsys, flags,
                                                                             message):
    status, err = run_cli(["--prior", prior_run, "--out", tmp_path / "out", *flags], capsys)
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_the_largest_seed_samples_and_wraps_per_batch(prior_run, tmp_path, capsys):
    from generation import ImageGenerator

    status, err = run_cli(["--prior", prior_run, "--n", 3, "--seed", 2**64 - 1, "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    _, tokens = ImageGenerator.load(prior_run).sample(3, seed=2**64 - 1)
    assert np.array_equal(tokens_of(tmp_path / "out"), tokens.numpy())
    with pytest.raises(ValueError, match="`seed` must be an integer from 0 to 2\\*\\*64 - 1"):
        ImageGenerator.load(prior_run).sample(3, seed=2**64)


def test_mixed_precision_auto_is_chosen_for_this_machine_and_recorded(prior_run, tmp_path, capsys):
    from training import TrainConfig

    status, err = run_cli(["--prior", prior_run, "--n", 2, "--mixed-precision", "auto", "--out", tmp_path / "out"],
                          capsys)
    assert status == 0, err
    recorded = json.loads((tmp_path / "out" / "sample.json").read_text())["mixed_precision"]
    assert recorded == TrainConfig(mixed_precision="auto").mixed_precision and recorded in ("no", "bf16")
