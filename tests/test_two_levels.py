"""VQ-VAE-2 end to end (tokenizer --hierarchy 2, a top prior and a bottom prior conditioned on the top, sampling
both): the maps of both levels round-trip through the library, a killed two-level prior run resumes to the
uninterrupted weights, sampling draws both levels and completion keeps the given rows of both, and every
level mismatch is one ValueError. (Shapes: test_tokenizer.py; the bottom prior's gradients and cached == naive:
test_prior_model.py and test_generate.py.)"""


import numpy as np
import pytest
import torch

import prior
from conftest import TINY_PRIOR, TINY_TOKENIZER, resume_matches_uninterrupted
from generation import ImageGenerator
from pipelines import fit_prior, fit_tokenizer
from prior import Prior, PriorRun
from prior.model import PriorConfig, TwoLevelPrior
from store.images import DataConfig, load_images
from store.index_maps import read_index_maps
from tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def two_level_run(fashion_dir, tmp_path):
    fit_tokenizer.main([*TINY_TOKENIZER, "--hierarchy", "2", "--epochs", "2", "--output-root", tmp_path / "runs",
                        "--run-name", "vq2"])
    return tmp_path / "runs" / "tokenizer" / "vq2"


def test_the_maps_of_both_levels_are_the_librarys_tokens(two_level_run, fashion_dir):
    tokenizer = Tokenizer.load(two_level_run)
    maps = read_index_maps(two_level_run / "maps", "test")
    assert maps.levels == 2 and maps.meta.levels == 2 and maps.maps.shape == (64, 7, 7)
    assert isinstance(maps.top, np.memmap) and maps.top.shape == (64, 4, 4) and maps.top.dtype == np.uint8
    images = load_images(DataConfig(fashion_mnist_dir=str(fashion_dir)), "test").images[:10]
    top, bottom = tokenizer.encode(images)
    assert np.array_equal(top.numpy(), maps.top[:10]) and np.array_equal(bottom.numpy(), maps.maps[:10])
    entry = maps.meta.splits["test"]
    assert sum(entry["top_usage_histogram"]) == 64 * 16 and sum(entry["usage_histogram"]) == 64 * 49


def test_a_two_level_prior_samples_both_levels_and_completes_the_rows_of_both(two_level_run, tmp_path):
    fit_prior.main([*TINY_PRIOR, "--tokenizer", two_level_run, "--output-root", tmp_path / "runs", "--run-name", "p"])
    run_dir = tmp_path / "runs" / "prior" / "p"
    model, run = TwoLevelPrior.load(run_dir), PriorRun.load(run_dir)
    with pytest.raises(ValueError, match="models two levels of codes: load it with TwoLevelPrior.load"):
        Prior.load(run_dir)
    assert isinstance(model, TwoLevelPrior) and run.top.token_shape == (4, 4)
    assert run.model.condition_shape == (4, 4) and run.model.num_classes == 10
    generator = ImageGenerator.load(run_dir)
    images, (top, bottom) = generator.sample(5, label="Bag", seed=1)
    assert images.shape == (5, 1, 28, 28) and top.shape == (5, 4, 4) and bottom.shape == (5, 7, 7)
    # Completion: 4 bottom rows kept, and the 2 top rows they cover.
    grids = generate_pair(model, top, bottom, keep_rows=4)
    assert torch.equal(grids[0][:, :2], top[:, :2]) and torch.equal(grids[1][:, :4], bottom[:, :4])
    assert not torch.equal(grids[1], bottom), "nothing was sampled"


def generate_pair(model, top, bottom, keep_rows):
    return prior.generate(model, len(top), prefix=(top, bottom), keep_rows=keep_rows,
                          generator=torch.Generator().manual_seed(7))


def test_a_killed_two_level_prior_run_resumes_to_the_same_weights(two_level_run, tmp_path):
    flags = [*TINY_PRIOR, "--epochs", "12", "--checkpoint-every", "5", "--tokenizer", two_level_run,
             "--output-root", tmp_path / "runs", "--weight-ema-decay", "0.95"]
    resume_matches_uninterrupted("pipelines.fit_prior", flags, tmp_path / "runs" / "prior",
                                 ("model.safetensors", "model_ema.safetensors"))


def test_level_mismatches_are_one_line_errors(two_level_run):
    tokenizer = Tokenizer.load(two_level_run)
    top, bottom = tokenizer.encode(torch.rand(2, 1, 28, 28))
    for tokens, message in ((bottom, "decodes a pair of token grids"), ((bottom, top), "top tokens must have shape"),
                            ((top, bottom[:1]), "of 2 and 1 images")):
        with pytest.raises(ValueError, match=message):
            tokenizer.decode(tokens)
    kw = dict(codebook_size=8, embed_dim=4, hidden_channels=8, num_layers=2)
    with pytest.raises(ValueError, match="conditioned on \\(4, 4\\) maps, the top prior writes 3x3"):
        TwoLevelPrior(PriorConfig(grid_height=3, grid_width=3, **kw),
                      PriorConfig(condition_codebook_size=8, condition_height=4, condition_width=4, **kw))
    model = TwoLevelPrior(PriorConfig(grid_height=4, grid_width=4, **kw),
                          PriorConfig(condition_codebook_size=8, condition_height=4, condition_width=4, **kw))
    with pytest.raises(ValueError, match="no condition"):
        prior.generate(model, 2, condition=torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pair of prefixes"):
        prior.generate(model, 2, prefix=torch.zeros(2, 7, 7, dtype=torch.long), keep_rows=2)


def test_a_two_level_prior_refuses_a_one_level_tokenizer(tokenizer_run, tmp_path):
    from generation import load_tokenizer_of
    from prior.run import PriorRun, TokenizerReference
    from store.runs import file_sha256

    kw = dict(codebook_size=32, embed_dim=4, hidden_channels=8, num_layers=2)
    run = PriorRun(model=PriorConfig(condition_codebook_size=32, condition_height=4, condition_width=4, **kw),
                   top=PriorConfig(grid_height=4, grid_width=4, **kw),
                   tokenizer=TokenizerReference(str(tokenizer_run), file_sha256(tokenizer_run / "model.safetensors")))
    with pytest.raises(ValueError, match="models 2 level\\(s\\) of codes, tokenizer .* makes 1"):
        load_tokenizer_of(tmp_path, run)
