"""generation: a prior run and its tokenizer as one generator. A prior run folder is complete on its own: copied
anywhere, with its tokenizer run moved away, it still samples and evaluates, and it still refuses a tokenizer whose
weights changed."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import run_module
from evaluation import EvaluationConfig, evaluate
from evaluation.classifier import ClassifierConfig
from evaluation.reference import ClassifierTrainConfig
from generation import ImageGenerator


def test_a_copied_prior_run_samples_without_its_tokenizer_run_and_refuses_changed_weights(prior_run, tokenizer_run,
                                                                                          tmp_path):
    before, _ = ImageGenerator.load(prior_run).sample(5, seed=3)
    copy = tmp_path / "elsewhere" / "COPY"
    shutil.copytree(prior_run, copy)
    shutil.move(tokenizer_run, tmp_path / "moved-away")
    result = run_module("pipelines.sample", "--prior", copy, "--n", 5, "--seed", 3, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "grid.png").is_file()
    settings = json.loads((tmp_path / "out" / "sample.json").read_text())
    assert settings["tokenizer_run"] == str((copy / "tokenizer").resolve())
    # The command draws what the library draws, and the copy draws what the original drew.
    tokens = np.load(tmp_path / "out" / "tokens" / "samples_maps.npy")
    images, library_tokens = ImageGenerator.load(copy).sample(5, seed=3)
    assert np.array_equal(tokens, library_tokens.numpy()) and torch.equal(images, before)

    config = EvaluationConfig(n_samples=6, batch_size=8, classifier=ClassifierConfig(width=8, feature_dim=16),
                              classifier_train=ClassifierTrainConfig(classifier_epochs=1, classifier_batch_size=32))
    report = evaluate(copy, config=config, output_root=tmp_path / "eval-root", progress=False)
    assert report["figures"]["fd_samples_vs_test"] is not None and report["figures"]["codes_used_test"] is not None
    assert report["runs"]["tokenizer_loaded_from"] == str((copy / "tokenizer").resolve())

    weights = copy / "tokenizer" / "model.safetensors"
    state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(weights)
    __import__("safetensors.torch", fromlist=["save_file"]).save_file(
        {k: v * 2 if v.is_floating_point() else v for k, v in state.items()}, weights)
    result = run_module("pipelines.sample", "--prior", copy, "--n", 2, "--out", tmp_path / "refused")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()]
    # The copy's own results.json records the weights it finished with: the first check that fails.
    assert "is not the weights file its run finished with" in result.stderr and not (tmp_path / "refused").exists()


def test_an_older_prior_run_finds_its_tokenizer_at_the_recorded_path(prior_run, tokenizer_run, tmp_path):
    shutil.rmtree(prior_run / "tokenizer")  # as runs were made before they carried a copy
    generator = ImageGenerator.load(prior_run)
    assert generator.tokenizer.run_dir == tokenizer_run.resolve() or generator.tokenizer.run_dir == tokenizer_run
    shutil.move(tokenizer_run, tmp_path / "moved-away")
    with pytest.raises(ValueError, match="the tokenizer this prior was trained for, .* is missing"):
        ImageGenerator.load(prior_run)


def test_library_goes_from_a_prior_run_to_images(prior_run):
    images, tokens = ImageGenerator.load(prior_run).sample(3, label="Bag", temperature=0.8, top_p=0.9)
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert tokens.shape == (3, 7, 7) and tokens.dtype == torch.int64
    with pytest.raises(ValueError, match="n must be a positive integer"):
        ImageGenerator.load(prior_run).sample(0)
