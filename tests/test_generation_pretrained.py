"""The shipped generator (checkpoints/fashion-mnist/), the run a command reads when none is named, exporting a run
to share, and its model card (pipelines.card).

The first test reads the files committed in the repository: a change to the code that can no longer load them
fails it, so that a format change comes with a re-export (python -m bench.pretrained) or a loader for the old files.
"""

import os
import shutil

import pytest
import torch

from conftest import run_in_process, synthetic_images
from generation.card import model_card
from generation import ImageGenerator
from generation.pretrained import SHIPPED_GENERATOR, choose_prior, choose_tokenizer, export_generator
from pipelines import card, encode, sample
from store.figures import FIGURES
from store.runs import (AVERAGED_WEIGHTS, MODEL_WEIGHTS, TOKENIZER_COPY, WEIGHTS_HASHES, file_sha256, read_json,
                        weights_file, write_json)
from tokenizer import Tokenizer

SHIPPED_FILES = {"config.json", "results.json", "metrics.jsonl", "README.md", "samples.png",
                 "tokenizer/config.json", "tokenizer/results.json", "tokenizer/metrics.jsonl",
                 "tokenizer/maps/meta.json"}


def files_under(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_the_shipped_generator_loads_matches_its_hashes_samples_and_tokenizes():
    files = files_under(SHIPPED_GENERATOR)
    weights = {name for name in files if name.endswith(".safetensors")}
    assert files - weights == SHIPPED_FILES and len(weights) == 2, files  # one weights file per stage
    assert sum((SHIPPED_GENERATOR / name).stat().st_size for name in files) < 10 * 2 ** 20
    # Every weights file is the one its results.json recorded, and the tokenizer's the one the prior's config names.
    for folder in (SHIPPED_GENERATOR, SHIPPED_GENERATOR / TOKENIZER_COPY):
        name = weights_file(folder)
        assert read_json(folder / "results.json")[WEIGHTS_HASHES] == {name: file_sha256(folder / name)}
    assert read_json(SHIPPED_GENERATOR / "config.json")["tokenizer"]["run"] == TOKENIZER_COPY  # no builder's path
    tokenizer_weights = SHIPPED_GENERATOR / TOKENIZER_COPY / weights_file(SHIPPED_GENERATOR / TOKENIZER_COPY)
    assert read_json(SHIPPED_GENERATOR / "config.json")["tokenizer"]["weights_sha256"] == file_sha256(tokenizer_weights)

    generator = ImageGenerator.from_pretrained(SHIPPED_GENERATOR)
    images, tokens = generator.sample(4, label="Sneaker", seed=0)
    assert images.shape == (4, 1, 28, 28) and tokens.shape == (4, 7, 7) and tokens.dtype == torch.long
    assert 0 <= images.min() and images.max() <= 1 and images.std() > 0.05  # pictures, not a flat field
    tokenizer = Tokenizer.from_pretrained(SHIPPED_GENERATOR)
    pictures, _ = synthetic_images(1)
    encoded = tokenizer.encode(torch.from_numpy(pictures).permute(0, 3, 1, 2).contiguous())  # uint8 pictures too
    assert encoded.shape == (1, 7, 7) and tokenizer.decode(encoded).shape == (1, 1, 28, 28)
    # One image through the tokens and back: a sample, a Fashion-MNIST-like picture, comes back close (the card's
    # test MSE is 0.0035; an untrained or mis-loaded tokenizer is off by ten times that).
    _, reconstruction, squared_error = tokenizer.reconstruct(images[:1])
    assert reconstruction.shape == (1, 1, 28, 28) and squared_error / reconstruction.numel() < 0.01


def test_the_shipped_card_holds_the_figures_of_the_shipped_files():
    text = (SHIPPED_GENERATOR / "README.md").read_text()
    header = text.split("---\n")[1]
    assert "library_name: vqprior" in header and "license:" in header and "zalando-datasets/fashion_mnist" in header
    assert "metrics:" in header
    prior_bits = read_json(SHIPPED_GENERATOR / "results.json")["test_bits_per_token"]
    tokenizer_mse = read_json(SHIPPED_GENERATOR / TOKENIZER_COPY / "results.json")["test_mse"]
    name = {figure.key: figure.name for figure in FIGURES}  # the card names each figure as the report page does
    assert f"| {name['prior_test_bits_per_token']} | {prior_bits:.4f} | {prior_bits:.4f} |" in text
    assert f"| {name['reconstruction_mse']} | {tokenizer_mse:.5f} | {tokenizer_mse:.5f} |" in text
    assert "| figure | seed 0 | seed 1 |" in text and "python -m bench.pretrained" in text


def test_a_command_without_a_run_takes_the_users_newest_and_else_the_shipped_one(prior_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    assert choose_prior(None, empty) == SHIPPED_GENERATOR
    assert "using the shipped Fashion-MNIST generator" in capsys.readouterr().err
    assert choose_tokenizer(None, empty) == SHIPPED_GENERATOR / TOKENIZER_COPY
    assert "using the shipped Fashion-MNIST tokenizer" in capsys.readouterr().err
    runs = tmp_path / "runs"
    assert choose_prior(None, runs) == prior_run and choose_tokenizer(None, runs) == runs / "tokenizer" / "tiny"
    assert "shipped" not in capsys.readouterr().err
    assert choose_tokenizer(prior_run, empty) == prior_run / TOKENIZER_COPY  # a generator names its tokenizer
    with pytest.raises(ValueError, match="no finished prior run under"):
        choose_prior(None, empty, shipped=tmp_path / "not-shipped")

    # The command: sample with no run of the user's own draws from the shipped generator, and says so in one line.
    status, _, err = run_in_process(sample.main, ["--n", "3", "--output-root", empty, "--out", tmp_path / "s"], capsys)
    assert status == 0 and [line for line in err if "shipped" in line] == [
        f"no prior run of your own under {empty / 'prior'}: using the shipped Fashion-MNIST generator "
        f"{SHIPPED_GENERATOR} (see its README.md)"]
    assert (tmp_path / "s" / read_json(tmp_path / "s" / "sample.json")["prior_run"]).resolve() == SHIPPED_GENERATOR
    status, _, _ = run_in_process(sample.main, ["--n", "3", "--output-root", runs, "--out", tmp_path / "mine"], capsys)
    assert status == 0 and read_json(tmp_path / "mine" / "sample.json")["prior_run"] == os.path.relpath(
        prior_run.resolve(), (tmp_path / "mine").resolve())
    # encode alike, with the shipped generator's tokenizer.
    status, _, err = run_in_process(encode.main, ["--images", "fashion-mnist", "--split", "test", "--output-root",
                                                  empty, "--out", tmp_path / "e"], capsys)
    assert status == 0 and any("shipped Fashion-MNIST tokenizer" in line for line in err)
    assert read_json(tmp_path / "e" / "meta.json")["weights_sha256"] == file_sha256(
        SHIPPED_GENERATOR / TOKENIZER_COPY / weights_file(SHIPPED_GENERATOR / TOKENIZER_COPY))


def test_an_exported_run_holds_only_what_loading_reads_and_samples_as_the_run(prior_run, tmp_path):
    out = export_generator(prior_run, tmp_path / "shared")
    assert files_under(out) == {"config.json", "results.json", "metrics.jsonl", AVERAGED_WEIGHTS,
                                "tokenizer/config.json", "tokenizer/results.json", "tokenizer/metrics.jsonl",
                                "tokenizer/maps/meta.json", f"tokenizer/{weights_file(prior_run / 'tokenizer')}"}
    assert read_json(out / "results.json")[WEIGHTS_HASHES] == {AVERAGED_WEIGHTS: file_sha256(out / AVERAGED_WEIGHTS)}
    assert read_json(out / "results.json")["test_bits_per_token"] == read_json(prior_run / "results.json")[
        "test_bits_per_token"]
    shared, _ = ImageGenerator.load(out).sample(3, seed=2)
    original, _ = ImageGenerator.load(prior_run).sample(3, seed=2)
    assert torch.equal(shared, original)
    # Nothing in it names a folder of the machine it was made on: the tokenizer is the copy it carries.
    assert read_json(out / "config.json")["tokenizer"]["run"] == TOKENIZER_COPY
    assert read_json(out / "tokenizer" / "maps" / "meta.json")["tokenizer_run"] == TOKENIZER_COPY
    runs_root = str(prior_run.parent.parent.resolve())
    assert not [p for p in out.rglob("*.json*") if runs_root in p.read_text()]
    with pytest.raises(ValueError, match="exists already"):
        export_generator(prior_run, out)
    with pytest.raises(ValueError, match="is not a prior config"):
        export_generator(prior_run / "tokenizer", tmp_path / "other")
    older = prior_run.parent / "older"  # beside it: the tokenizer run it names relative to itself is found
    shutil.copytree(prior_run, older, ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(ValueError, match="carries no copy of its tokenizer"):
        export_generator(older, tmp_path / "other")
    assert not (tmp_path / "other").exists()
    # A run records the hashes of both its weights files; one that finished before runs did still loads.
    results = read_json(prior_run / "results.json")
    assert results.pop(WEIGHTS_HASHES) == {name: file_sha256(prior_run / name) for name in (MODEL_WEIGHTS,
                                                                                           AVERAGED_WEIGHTS)}
    write_json(older / "results.json", results)
    shutil.copyfile(prior_run / MODEL_WEIGHTS, older / AVERAGED_WEIGHTS)  # unchecked: nothing recorded
    ImageGenerator.load(older)


def test_the_card_command_writes_a_hub_card_from_the_run_and_its_evaluations(prior_run, tmp_path, capsys):
    report = {"runs": {"tokenizer_weights_sha256": file_sha256(prior_run / "tokenizer" / MODEL_WEIGHTS)},
              "settings": {"seed": 0, "n_samples": 100, "guidance_scale": 1.5, "temperature": 1.0},
              "figures": {"fd_samples_vs_test": 3.14159, "reconstruction_mse": 0.0123456}}
    text = model_card(prior_run, [report, {**report, "settings": {**report["settings"], "seed": 1}}],
                      {"commands": ["python -m pipelines.fit_prior"], "commit": "abc", "seconds": {"fit": 12.3}},
                      name="you/gen")
    assert text.startswith("---\nlibrary_name: vqprior\nlicense: mit\n")
    assert "| figure | seed 0 | seed 1 |" in text and "| 3.142 | 3.142 |" in text and "| 0.01235 | 0.01235 |" in text
    assert 'ImageGenerator.from_pretrained("you/gen")' in text and "- fit: 12 s" in text and "- commit: abc" in text
    with pytest.raises(ValueError, match="of other tokenizer weights"):
        model_card(prior_run, [{**report, "runs": {"tokenizer_weights_sha256": "0" * 64}}])

    status, out, err = run_in_process(card.main, [prior_run], capsys)
    assert status == 0 and (prior_run / "README.md").read_text().startswith("---\nlibrary_name: vqprior")
    status, _, err = run_in_process(card.main, [prior_run], capsys)
    assert status == 2 and len(err) == 1 and "exists already" in err[0]
    status, _, err = run_in_process(card.main, [prior_run / "tokenizer", "--evaluation", tmp_path], capsys)
    assert status == 2 and len(err) == 1 and "holds no report.json" in err[0]
    status, _, _ = run_in_process(card.main, [prior_run, "--out", tmp_path / "shared", "--name", "you/gen"],
                                  capsys)
    assert status == 0 and "README.md" in files_under(tmp_path / "shared")
    assert "training_state.safetensors" not in files_under(tmp_path / "shared")
    assert 'ImageGenerator.from_pretrained("you/gen")' in (tmp_path / "shared" / "README.md").read_text()
    status, _, _ = run_in_process(card.main, [prior_run / "tokenizer"], capsys)  # a tokenizer run's card
    assert status == 0 and 'Tokenizer.from_pretrained' in (prior_run / "tokenizer" / "README.md").read_text()
