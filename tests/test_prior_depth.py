"""Several tokens per position (a residual quantizer's levels): the prior orders them as PixelCNN orders R, G, B.

Level g at position p may depend on every level of every earlier position and on levels 0..g-1 of p, nothing
else; the cached sampler still writes the naive sampler's grids; the whole pipeline runs on depth-4 maps.
"""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_TOKENIZER, logits_and_embedding
from pipelines import fit_prior, fit_tokenizer, sample
from pipelines.data import read_index_maps
from prior import Prior, PriorConfig, generate
from tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch, depth=3, seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(arch=arch, codebook_size=7, grid_height=4, grid_width=4, embed_dim=4, hidden_channels=12,
                  num_layers=4, first_kernel_size=3, kernel_size=3, depth=depth)
    model = Prior(PriorConfig(**{**config, **overrides}))
    with torch.no_grad():
        model.head[-1].weight.mul_(4)
    return model


def level_dependencies(model, grids=3):
    """dep[p, q]: output p = (position, level) has a non-zero gradient w.r.t. input q = (position', level')."""
    config = model.config
    model = model.double()
    h, w, depth = config.grid_height, config.grid_width, config.depth
    outputs = h * w * depth
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(config.codebook_size, (grids, 1, h, w, depth), generator=gen)
    tokens = tokens.expand(grids, outputs, h, w, depth).flatten(0, 1)
    logits, embedding = logits_and_embedding(model, tokens)  # (grids * outputs, K, h, w, depth)
    assert logits.shape == (grids * outputs, config.codebook_size, h, w, depth)
    own = torch.arange(outputs).repeat(grids)
    own = logits.flatten(2)[torch.arange(len(own)), :, own]
    (own @ torch.randn(own.shape[1], generator=gen, dtype=own.dtype)).sum().backward()
    seen = embedding.grad.abs().sum(-1).flatten(1) != 0  # (grids * outputs, h * w * depth)
    return seen.unflatten(0, (grids, outputs)).any(0)


def allowed(h, w, depth):
    """Earlier positions in full; at the same position, the levels before."""
    position = torch.arange(h * w).repeat_interleave(depth)
    level = torch.arange(depth).repeat(h * w)
    earlier = position.unsqueeze(0) < position.unsqueeze(1)
    same_position_lower_level = (position.unsqueeze(0) == position.unsqueeze(1)) & (level.unsqueeze(0) < level.unsqueeze(1))
    return earlier | same_position_lower_level


def test_gated_level_g_reads_earlier_positions_and_the_levels_below_g():
    dep = level_dependencies(tiny("gated"))
    assert torch.equal(dep, allowed(4, 4, 3))


def test_pixelcnn_levels_never_read_the_future_and_read_every_level_below_at_their_position():
    dep = level_dependencies(tiny("pixelcnn"))
    rule = allowed(4, 4, 3)
    assert not (dep & ~rule).any()
    same_position = torch.arange(16).repeat_interleave(3)
    same_position = same_position.unsqueeze(0) == same_position.unsqueeze(1)
    assert torch.equal(dep & same_position, rule & same_position)


def test_depth_one_is_the_plain_prior():
    torch.manual_seed(0)
    plain = tiny("gated", depth=1)
    tokens = torch.randint(7, (2, 4, 4))
    torch.testing.assert_close(plain(tokens.unsqueeze(-1)).squeeze(-1), plain(tokens))
    assert plain(tokens).shape == (2, 7, 4, 4)


@pytest.mark.parametrize("arch", ["gated", "pixelcnn"])
def test_cached_equals_naive_level_by_level(arch):
    model = tiny(arch, num_classes=3)
    prefix = torch.randint(7, (5, 4, 4, 3), generator=torch.Generator().manual_seed(3))
    for kwargs in (dict(), dict(temperature=0.8, top_k=5), dict(labels=1, guidance_scale=2.0),
                   dict(prefix=prefix, keep_rows=2)):
        naive = generate(model, 5, sampler="naive", generator=torch.Generator().manual_seed(1), **kwargs)
        cached = generate(model, 5, sampler="cached", generator=torch.Generator().manual_seed(1), **kwargs)
        assert naive.shape == (5, 4, 4, 3)
        assert torch.equal(naive, cached), kwargs
        assert len(naive.unique()) > 3
    assert torch.equal(cached[:, :2], prefix[:, :2])


def test_prior_needs_channels_for_every_level():
    with pytest.raises(ValueError, match="multiple of 3"):
        PriorConfig(arch="gated", hidden_channels=16, depth=3)
    with pytest.raises(ValueError, match="multiple of 6"):
        PriorConfig(arch="pixelcnn", hidden_channels=12 + 3, depth=3)


def test_residual_pipeline_end_to_end(fashion_dir, tmp_path):
    root = tmp_path / "runs"
    fit_tokenizer.main([*TINY_TOKENIZER, "--quantizer", "residual", "--depth", "2", "--epochs", "1",
                        "--output-root", root, "--run-name", "rq"])
    tokenizer_dir = root / "tokenizer" / "rq"
    maps = read_index_maps(tokenizer_dir / "maps", "train")
    assert maps.maps.shape == (256, 7, 7, 2) and maps.meta["depth"] == 2
    histogram = maps.meta["splits"]["train"]["usage_histogram"]
    assert len(histogram) == 2 and [sum(level) for level in histogram] == [256 * 49] * 2
    tokenizer = Tokenizer.load(tokenizer_dir)
    assert np.array_equal(tokenizer.encode(torch.zeros(1, 1, 28, 28)).shape, (1, 7, 7, 2))

    fit_prior.main(["--embed-dim", "4", "--hidden-channels", "8", "--num-layers", "2", "--batch-size", "32",
                    "--warmup-steps", "2", "--epochs", "1", "--tokenizer", tokenizer_dir, "--output-root", root,
                    "--run-name", "p"])
    prior_dir = root / "prior" / "p"
    config = json.loads((prior_dir / "config.json").read_text())
    assert config["model"]["depth"] == 2
    results = json.loads((prior_dir / "results.json").read_text())
    assert results["test_bits_per_image"] == pytest.approx(7 * 7 * 2 * results["test_bits_per_token"])

    out = tmp_path / "samples"
    sample.main(["--prior", prior_dir, "--n", 3, "--out", out])
    tokens = read_index_maps(out / "tokens", "samples").maps
    assert tokens.shape == (3, 7, 7, 2)
    images, grids = sample.sample_images(prior_dir, 3)
    assert images.shape == (3, 1, 28, 28) and grids.shape == (3, 7, 7, 2)
    assert np.array_equal(grids.numpy(), tokens.astype(np.int64))
