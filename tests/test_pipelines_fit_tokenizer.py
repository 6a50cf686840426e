import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (REPO, TINY_PRIOR, TINY_TOKENIZER, labelled_image_folder,
                      resume_matches_uninterrupted, run_module, synthetic_images)
from pipelines import fit_prior, fit_tokenizer, sample
from store.index_maps import read_index_maps
from tokenizer import Tokenizer


def test_a_run_writes_every_promised_file(tokenizer_run):
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "reconstructions.png", "results.json",
                 "training_state.safetensors", "maps/meta.json", "maps/train_maps.npy", "maps/test_maps.npy"):
        assert (tokenizer_run / name).is_file(), name
    config = json.loads((tokenizer_run / "config.json").read_text())
    assert config["model"]["image_channels"] == 1 and config["model"]["image_size"] == 28
    metrics = [json.loads(line) for line in (tokenizer_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 * (256 // 32)
    assert {"loss", "mse", "perplexity", "codes_used", "restarts"} <= set(metrics[-1])
    with Image.open(tokenizer_run / "reconstructions.png") as png:
        png.load()  # a complete PNG
        assert png.size == (16 * (3 * 28 + 1) + 1, 2 * (3 * 28 + 1) + 1)  # 16 pairs, each image drawn at 3x
    assert not list(tokenizer_run.rglob("*.tmp")), "a temporary file was left behind"


def test_dumped_maps_round_trip_through_the_library(tokenizer_run, fashion_dir):
    tokenizer = Tokenizer.load(tokenizer_run)
    maps = read_index_maps(tokenizer_run / "maps", "test")
    assert maps.maps.dtype == np.uint8 and maps.maps.shape == (64, 7, 7)  # 32 codes fit in uint8
    assert maps.meta.weights_sha256 == tokenizer.weights_sha256
    assert maps.meta.grid_height == 7 and maps.meta.codebook_size == 32
    split = maps.meta.splits["test"]
    assert sum(split["usage_histogram"]) == 64 * 49
    assert 1 <= split["perplexity"] <= 32 and split["dead_codes"] == 32 - round(32 * split["codes_used"])
    images, labels = synthetic_images(64, seed=1)
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    tokens = tokenizer.encode(images)
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, torch.from_numpy(maps.maps.astype(np.int64)))
    assert np.array_equal(maps.labels, labels)
    decoded = tokenizer.decode(torch.from_numpy(maps.maps.astype(np.int64)))
    assert decoded.shape == (64, 1, 28, 28) and 0 <= decoded.min() and decoded.max() <= 1
    assert torch.equal(decoded, tokenizer.decode(tokens))


def test_dump_only_rewrites_the_same_maps(tokenizer_run):
    before = np.load(tokenizer_run / "maps" / "train_maps.npy")
    (tokenizer_run / "maps" / "train_maps.npy").unlink()
    (tokenizer_run / "maps" / "meta.json").unlink()
    fit_tokenizer.main(["--dump-only", tokenizer_run])
    assert np.array_equal(np.load(tokenizer_run / "maps" / "train_maps.npy"), before)
    read_index_maps(tokenizer_run / "maps", "train")


def test_a_weight_average_is_what_the_tokenizer_encodes_with_from_the_dump_to_sampling(fashion_dir, tmp_path):
    from generation import ImageGenerator
    from store.runs import file_sha256, load_tensors

    root = tmp_path / "runs"
    fit_tokenizer.main([*TINY_TOKENIZER, "--epochs", "2", "--weight-ema-decay", "0.9", "--output-root", root,
                        "--run-name", "avg"])
    run_dir = root / "tokenizer" / "avg"
    raw, averaged = load_tensors(run_dir / "model.safetensors"), load_tensors(run_dir / "model_ema.safetensors")
    assert raw.keys() == averaged.keys() and not all(torch.equal(raw[k], averaged[k]) for k in raw)
    tokenizer = Tokenizer.load(run_dir)
    assert tokenizer.weights_sha256 == file_sha256(run_dir / "model_ema.safetensors")
    assert all(torch.equal(v, averaged[k]) for k, v in tokenizer.model.state_dict().items())
    maps = read_index_maps(run_dir / "maps", "test")
    assert maps.meta.weights_sha256 == tokenizer.weights_sha256
    images = torch.from_numpy(synthetic_images(64, seed=1)[0]).permute(0, 3, 1, 2)
    assert torch.equal(tokenizer.encode(images), torch.from_numpy(maps.maps.astype(np.int64)))
    assert Tokenizer.load(run_dir, weights="model.safetensors").weights_sha256 == file_sha256(run_dir /
                                                                                              "model.safetensors")
    # The prior trains on those maps, carries the averaged weights, and samples through them.
    fit_prior.main([*TINY_PRIOR, "--tokenizer", run_dir, "--output-root", root, "--run-name", "p"])
    assert (root / "prior" / "p" / "tokenizer" / "model_ema.safetensors").is_file()
    assert ImageGenerator.load(root / "prior" / "p").tokenizer.weights_sha256 == tokenizer.weights_sha256


def test_killed_run_resumes_to_the_same_weights(fashion_dir, tmp_path):
    flags = [*TINY_TOKENIZER, "--epochs", "12", "--checkpoint-every", "5", "--output-root", tmp_path / "runs"]
    killed, _ = resume_matches_uninterrupted("pipelines.fit_tokenizer", flags, tmp_path / "runs" / "tokenizer")
    metrics = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert metrics == sorted(set(metrics)), "resumed metrics repeat or skip steps"


@pytest.mark.parametrize("case", ["missing-dataset", "corrupt-image", "existing-run", "bad-choice", "unknown-dataset"])
def test_bad_input_is_one_line_and_exit_status_2(case, tmp_path):
    env, args = {}, ["--output-root", tmp_path / "runs", "--epochs", "1"]
    expect = ""
    if case == "missing-dataset":
        env["FASHION_MNIST_DIR"] = str(tmp_path / "nowhere")
        args += ["--fashion-mnist-mirror", "http://127.0.0.1:9/", "--data-dir", tmp_path / "data"]  # no mirror either
        expect = "apt-get install -y dataset-fashion-mnist"
    elif case == "corrupt-image":
        folder = tmp_path / "images"
        folder.mkdir()
        for i in range(12):
            Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8)).save(folder / f"{i:02d}.png")
        (folder / "05.png").write_bytes(b"not a png at all")
        args += ["--dataset", f"folder:{folder}"]
        expect = "05.png"
    elif case == "existing-run":
        (tmp_path / "runs" / "tokenizer" / "taken").mkdir(parents=True)
        args += ["--run-name", "taken"]
        expect = "exists already"
    elif case == "bad-choice":
        args += ["--codebook-update", "sgd"]
        expect = "invalid choice"
    else:
        args += ["--dataset", "imagenet"]
        expect = "unknown dataset"
    result = run_module("pipelines.fit_tokenizer", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expect in lines[0]
    assert not (tmp_path / "runs" / "tokenizer").exists() or case == "existing-run"


def test_ci_runs_the_test_command_the_readme_shows():
    readme = (REPO / "README.md").read_text()
    test_command = [line for line in readme.splitlines() if "pytest" in line and line.startswith("python3 -m venv")]
    assert len(test_command) == 1
    assert test_command[0] in (REPO / ".ci" / "run").read_text().splitlines()


def test_a_folder_of_rgb_images_goes_through_all_three_commands(tmp_path):
    folder = labelled_image_folder(tmp_path / "pictures", 120, size=32, channels=3, seed=3)
    runs = tmp_path / "runs"
    fit_tokenizer.main([*TINY_TOKENIZER, "--dataset", f"folder:{folder}", "--image-size", "32", "--epochs", "2",
                        "--output-root", runs, "--run-name", "rgb"])
    run = runs / "tokenizer" / "rgb"
    tokenizer = Tokenizer.load(run)
    assert (tokenizer.config.image_channels, tokenizer.config.image_size, tokenizer.config.grid_size) == (3, 32, 8)
    maps = read_index_maps(run / "maps", "train")
    assert maps.maps.shape == (108, 8, 8)  # every tenth file is the test split
    # The dumped maps are the library's tokens for the same pictures, in the folder's sorted order.
    paths = sorted(folder.rglob("*.png"))
    train_paths = [p for i, p in enumerate(paths) if i % 10 != 9]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in train_paths[:4]]).permute(0, 3, 1, 2)
    assert torch.equal(tokenizer.encode(pixels), torch.from_numpy(maps.maps[:4].astype(np.int64)))
    assert list(maps.labels[:4]) == [["kind0", "kind1", "kind2"].index(p.parent.name) for p in train_paths[:4]]

    fit_prior.main([*TINY_PRIOR, "--tokenizer", run, "--output-root", runs, "--run-name", "rgb-prior",
                    "--condition", "class"])
    out = tmp_path / "samples"
    sample.main(["--prior", runs / "prior" / "rgb-prior", "--n", 3, "--label", "kind2", "--out", out])
    written = sorted((out / "images").iterdir())
    assert len(written) == 3
    with Image.open(written[0]) as picture:
        assert (picture.mode, picture.size) == ("RGB", (32, 32))
    assert json.loads((out / "sample.json").read_text())["n"] == 3


@pytest.mark.parametrize("size,channels,factor", [(64, 1, 8), (32, 3, 8)])
def test_the_pipeline_runs_at_other_sizes_and_factors(tmp_path, size, channels, factor):
    folder = labelled_image_folder(tmp_path / "pictures", 60, size=size, channels=channels, seed=2)
    runs, grid = tmp_path / "runs", size // factor
    fit_tokenizer.main([*TINY_TOKENIZER, "--dataset", f"folder:{folder}", "--image-size", size, "--downsample",
                        factor, "--epochs", "1", "--output-root", runs, "--run-name", "t"])
    tokenizer = Tokenizer.load(runs / "tokenizer" / "t")
    assert tokenizer.image_shape == (channels, size, size) and tokenizer.grid_shape == (grid, grid)
    assert read_index_maps(runs / "tokenizer" / "t" / "maps", "train").maps.shape == (54, grid, grid)
    fit_prior.main([*TINY_PRIOR, "--tokenizer", runs / "tokenizer" / "t", "--output-root", runs, "--run-name", "p"])
    sample.main(["--prior", runs / "prior" / "p", "--n", 2, "--out", tmp_path / "samples"])
    with Image.open(tmp_path / "samples" / "images" / "00000.png") as picture:
        assert picture.size == (size, size)


def test_fashion_mnist_resized_by_image_size(fashion_dir, tmp_path):
    fit_tokenizer.main([*TINY_TOKENIZER, "--image-size", "32", "--downsample", "8", "--epochs", "1",
                        "--output-root", tmp_path, "--run-name", "t32"])
    config = json.loads((tmp_path / "tokenizer" / "t32" / "config.json").read_text())
    assert config["data"]["image_size"] == 32 and config["model"]["image_size"] == 32
    assert read_index_maps(tmp_path / "tokenizer" / "t32" / "maps", "test").maps.shape == (64, 4, 4)

