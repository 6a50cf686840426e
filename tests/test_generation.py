"""generation: a prior run and its tokenizer as one generator. A prior run folder is complete on its own: copied
anywhere, with its tokenizer run moved away, it still samples and evaluates, and it still refuses a tokenizer whose
weights changed."""

import json
import os
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
    assert settings["tokenizer_run"] == os.path.join("..", "elsewhere", "COPY", "tokenizer")
    assert settings["prior_run"] == os.path.join("..", "elsewhere", "COPY")
    # The command draws what the library draws, and the copy draws what the original drew.
    tokens = np.load(tmp_path / "out" / "tokens" / "samples_maps.npy")
    images, library_tokens = ImageGenerator.load(copy).sample(5, seed=3)
    assert np.array_equal(tokens, library_tokens.numpy()) and torch.equal(images, before)

    config = EvaluationConfig(n_samples=6, batch_size=8, classifier=ClassifierConfig(width=8, feature_dim=16),
                              classifier_train=ClassifierTrainConfig(classifier_epochs=1, classifier_batch_size=32))
    report = evaluate(copy, config=config, output_root=tmp_path / "eval-root", progress=False)
    assert report["figures"]["fd_samples_vs_test"] is not None and report["figures"]["codes_used_test"] is not None
    assert report["runs"]["tokenizer_loaded_from"] == str((copy / "tokenizer").resolve())  # returned, not written

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
    assert generator.tokenizer.run_dir.resolve() == tokenizer_run.resolve()  # config.json: relative to the run
    shutil.move(tokenizer_run, tmp_path / "moved-away")
    with pytest.raises(ValueError, match="the tokenizer this prior was trained for, .* is missing"):
        ImageGenerator.load(prior_run)


def test_library_goes_from_a_prior_run_to_images(prior_run):
    images, tokens = ImageGenerator.load(prior_run).sample(3, label="Bag", temperature=0.8, top_p=0.9)
    assert images.shape == (3, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert tokens.shape == (3, 7, 7) and tokens.dtype == torch.int64
    with pytest.raises(ValueError, match="`n` must be a positive integer"):
        ImageGenerator.load(prior_run).sample(0)


def test_the_library_speaks_in_the_conventions_of_diffusers_pipelines(prior_run, tmp_path):
    from PIL import Image

    from generation.image_generator import GeneratorOutput

    generator = ImageGenerator.load(prior_run)
    names = generator.run.class_names
    # Per-sample class labels: ids, names or a tensor, one per sample, each sample drawn towards its own class.
    by_id = generator.sample(4, [1, 2, 3, 4], seed=5)
    assert isinstance(by_id, GeneratorOutput) and by_id.images.shape == (4, 1, 28, 28)
    by_name = generator.sample(4, [names[1], names[2], names[3], names[4]], seed=5)
    by_tensor = generator.sample(4, torch.tensor([1, 2, 3, 4]), seed=5)
    assert torch.equal(by_id.tokens, by_name.tokens) and torch.equal(by_id.tokens, by_tensor.tokens)
    assert not torch.equal(by_id.tokens, generator.sample(4, [4, 3, 2, 1], seed=5).tokens)
    for bad, message in (([1, 2], "one per sample: 4 ids or names, got 2"), ([1, 2, 3, 99], "label 99 outside"),
                         ([1, 2, 3, "Spaceship"], "unknown label 'Spaceship'"), ([1, 2, 3, 0.5], "class id or name")):
        with pytest.raises(ValueError, match=message):
            generator.sample(4, bad)
    # generator= as well as seed=: the generator's state decides the draw, and it moves on.
    first = generator.sample(3, generator=torch.Generator().manual_seed(7)).tokens
    assert torch.equal(first, generator.sample(3, generator=torch.Generator().manual_seed(7)).tokens)
    stream = torch.Generator().manual_seed(7)
    assert torch.equal(generator.sample(3, generator=stream).tokens, first)
    assert not torch.equal(generator.sample(3, generator=stream).tokens, first)
    with pytest.raises(ValueError, match="seed or generator, not both"):
        generator.sample(3, seed=1, generator=torch.Generator())
    # output_type: "pt" (default), "np" (n, H, W, c) float in [0, 1], "pil" images holding the PNGs' pixels.
    images = generator.sample(3, seed=2).images
    array = generator.sample(3, seed=2, output_type="np").images
    assert array.shape == (3, 28, 28, 1) and array.dtype == np.float32 and np.array_equal(array[..., 0], images[:, 0])
    pictures = generator.sample(3, seed=2, output_type="pil").images
    assert all(isinstance(p, Image.Image) and p.mode == "L" and p.size == (28, 28) for p in pictures)
    assert np.array_equal(np.asarray(pictures[1]), images[1, 0].mul(255).add(0.5).clamp(0, 255).byte().numpy())
    with pytest.raises(ValueError, match="output_type must be one of pt, np, pil"):
        generator.sample(3, output_type="jpeg")
    # .to(device) moves both networks and returns the generator.
    assert generator.to("cpu") is generator and generator.device.type == "cpu"


def test_save_pretrained_writes_a_folder_from_pretrained_loads_with_its_card(prior_run, tmp_path):
    generator = ImageGenerator.load(prior_run)
    saved = generator.save_pretrained(tmp_path / "shared")
    assert (saved / "README.md").read_text().startswith("---\nlibrary_name: vqprior")
    assert not any(name.startswith("training_state") for name in (p.name for p in saved.rglob("*")))
    again = ImageGenerator.from_pretrained(saved)
    assert torch.equal(again.sample(3, seed=4).tokens, generator.sample(3, seed=4).tokens)
    with pytest.raises(ValueError, match="exists already"):
        generator.save_pretrained(tmp_path / "shared")
    with pytest.raises(ValueError, match="lies inside"):
        generator.save_pretrained(prior_run / "inside")
    # A generator loaded with its raw weights saves those, and the saved folder samples with them.
    raw = ImageGenerator.load(prior_run, weights="model.safetensors")
    raw_saved = raw.save_pretrained(tmp_path / "raw")
    assert [p.name for p in raw_saved.glob("model*.safetensors")] == ["model.safetensors"]
    assert torch.equal(ImageGenerator.load(raw_saved).sample(2, seed=1).tokens, raw.sample(2, seed=1).tokens)
