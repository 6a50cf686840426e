"""prior.model: the gated body has no blind spot (the pixelcnn body has the known one, exactly where the masks
predict; the masks themselves: test_prior_layers.py), the model learns a deterministic rule, configs are checked; and
several tokens per position (a residual quantizer's levels), ordered as PixelCNN orders R, G, B: level g at
position p depends on every level of every earlier position and on levels 0..g-1 of p, nothing else."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import (TINY_TOKENIZER, conditioned_prior, from_offsets, logits_and_embedding, masked_offsets,
                      minkowski_sum, wake_attention, generate)
from generation import ImageGenerator
from pipelines import fit_prior, fit_tokenizer, sample
from prior import Prior, PriorConfig
from store.index_maps import read_index_maps
from tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def dependencies(model, h, w, labels=None, grids=4):
    """dep[p, q]: the logits at raster position p have a non-zero gradient w.r.t. the embedded token at q.

    One copy per (random grid, output position p); copy p backpropagates a random projection of its own
    logits at p, so one backward pass gives the whole (h*w, h*w) matrix. A few grids, so that a ReLU that
    happens to be off on one grid cannot pass for a masked-out position.
    """
    model = model.double()
    gen = torch.Generator().manual_seed(0)
    positions = h * w
    tokens = torch.randint(model.config.codebook_size, (grids, 1, h, w), generator=gen)
    tokens = tokens.expand(grids, positions, h, w).flatten(0, 1)
    if labels is not None:
        labels = labels.repeat(grids)
    logits, embedding = logits_and_embedding(model, tokens, labels)  # (grids * p, K, h, w)
    own = torch.arange(positions).repeat(grids)
    own = logits.flatten(2)[torch.arange(len(own)), :, own]  # (grids * p, K)
    projection = torch.randn(own.shape[1], generator=gen, dtype=own.dtype)
    (own @ projection).sum().backward()
    seen = embedding.grad.abs().sum(-1).flatten(1) != 0  # (grids * p, q)
    return seen.unflatten(0, (grids, positions)).any(0)


def strictly_before(h, w):
    return torch.ones(h * w, h * w, dtype=torch.bool).tril(diagonal=-1)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    base = dict(codebook_size=11, embed_dim=6, hidden_channels=16, first_kernel_size=3, kernel_size=3)
    return Prior(PriorConfig(**{**base, **overrides}))


# ------------------------------------------------------------------------------------------ causality


@pytest.mark.parametrize("num_classes, embed_dim", [(0, 6), (3, 16)])
def test_gated_sees_every_earlier_position_and_nothing_else(num_classes, embed_dim):
    # Reach 1 + 3 * 1 = 4 covers a 5x5 grid both to the left in the current row and up-right. With
    # embed_dim == hidden_channels a residual around the first block would fit, and leak the current token.
    model = tiny(arch="gated", num_layers=4, num_classes=num_classes, embed_dim=embed_dim)
    labels = torch.full((25,), 1) if num_classes else None
    assert torch.equal(dependencies(model, 5, 5, labels), strictly_before(5, 5))


def test_gated_first_block_alone_reads_its_two_stacks():
    # Horizontal type A: (i, j-1). Vertical 2x3 over rows i-1..i, shifted down a row: rows i-2..i-1, cols j-1..j+1.
    model = tiny(arch="gated", num_layers=1)
    offsets = {(0, -1)} | {(dy, dx) for dy in (-2, -1) for dx in (-1, 0, 1)}
    assert torch.equal(dependencies(model, 5, 6), from_offsets(offsets, 5, 6))


@pytest.mark.parametrize("num_layers", [2, 3, 6])
def test_pixelcnn_reads_what_its_stacked_masks_reach(num_layers):
    model = tiny(arch="pixelcnn", num_layers=num_layers)
    reach = masked_offsets(3, "A")
    for _ in range(num_layers - 1):
        reach = minkowski_sum(reach, masked_offsets(3, "B"))
    dep = dependencies(model, 5, 5)
    assert torch.equal(dep, from_offsets(reach, 5, 5))
    assert not (dep & ~strictly_before(5, 5)).any()


def test_pixelcnn_blind_spot():
    # Deep enough to reach everything else on a 5x5 grid. A type B tap moves right only by climbing a row, so
    # d rows up the stack sees at most p0 + d - 1 = d columns right (p0 = 1, the first layer's reach):
    # (i - d, j + e) with e > d is never seen, however deep the stack.
    h, w = 5, 5
    dep = dependencies(tiny(arch="pixelcnn", num_layers=6), h, w)
    blind = strictly_before(h, w) & ~dep
    expected = from_offsets({(-d, e) for d in range(1, h) for e in range(d + 1, w)}, h, w)
    assert torch.equal(blind, expected)

    def hidden_from(i, j):
        return {divmod(q, w) for q in blind[i * w + j].nonzero().flatten().tolist()}

    assert hidden_from(1, 1) == {(0, 3), (0, 4)}
    assert hidden_from(2, 2) == {(1, 4)}
    assert hidden_from(4, 0) == {(3, 2), (3, 3), (3, 4), (2, 3), (2, 4), (1, 4)}
    assert hidden_from(4, 4) == set()


@pytest.mark.parametrize("num_classes", [0, 3])
def test_pixelsnail_sees_every_earlier_position_and_nothing_else(num_classes):
    # Two residual blocks and one attention block: the masks alone reach 3 columns up-right at most (the blind
    # spot of test_pixelcnn_blind_spot); the attention fills it, and its reading of the position itself leaks
    # nothing, since what it reads there was computed from earlier tokens only.
    model = wake_attention(tiny(arch="pixelsnail", num_layers=3, num_classes=num_classes))
    assert len(model.attentions) == 1
    labels = torch.full((36,), 2) if num_classes else None
    assert torch.equal(dependencies(model, 6, 6, labels), strictly_before(6, 6))


def test_a_new_pixelsnail_is_its_pixelcnn_until_its_attention_learns():
    # The attention blocks start as the identity, so adding them does not disturb what the convolutions learn first.
    snail, cnn = tiny(arch="pixelsnail", num_layers=5), tiny(arch="pixelcnn", num_layers=5)
    cnn.load_state_dict({k: v for k, v in snail.state_dict().items() if not k.startswith("attentions.")})
    tokens = torch.randint(11, (3, 5, 5))
    assert torch.equal(snail(tokens), cnn(tokens))
    assert torch.equal(dependencies(wake_attention(snail), 5, 5), strictly_before(5, 5))


# -------------------------------------------------------------------------------------------- forward


def test_forward_shapes_and_labels():
    model = tiny(arch="gated", num_layers=2, num_classes=4)
    tokens = torch.randint(11, (3, 4, 6))
    logits = model(tokens, torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 11, 4, 6)
    # None means "no label" for every sample.
    assert torch.equal(model(tokens), model(tokens, torch.full((3,), 4)))
    assert not torch.allclose(model(tokens, torch.tensor([0, 0, 0])), model(tokens, torch.tensor([3, 3, 3])))
    with pytest.raises(ValueError, match="unconditional"):
        tiny(arch="gated")(tokens, torch.tensor([0, 1, 2]))


def test_pixelcnn_class_bias_changes_the_logits():
    model = tiny(arch="pixelcnn", num_layers=3, num_classes=2)
    tokens = torch.randint(11, (2, 4, 4))
    assert not torch.allclose(model(tokens, torch.tensor([0, 0])), model(tokens, torch.tensor([1, 1])))


def test_default_sizes():
    gated, pixelcnn = Prior(PriorConfig()), Prior(PriorConfig(arch="pixelcnn"))
    assert 300_000 <= gated.num_parameters() <= 1_500_000
    assert pixelcnn.num_parameters() == sum(p.numel() for p in pixelcnn.parameters())
    assert gated(torch.randint(512, (2, 7, 7))).shape == (2, 512, 7, 7)


# ------------------------------------------------------------------------------------------- learning


def copy_rule_grids(n, h, w, k, gen):
    """Row 0 uniform at random, every later row a copy of the row above."""
    return torch.randint(k, (n, 1, w), generator=gen).expand(n, h, w).contiguous()


def test_learns_a_deterministic_rule():
    torch.manual_seed(0)
    k, h, w = 8, 6, 6
    model = tiny(arch="gated", codebook_size=k, grid_height=h, grid_width=w, embed_dim=16, hidden_channels=32,
                 num_layers=3)
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(250):
        tokens = copy_rule_grids(32, h, w, k, gen)
        loss = F.cross_entropy(model(tokens), tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        tokens = copy_rule_grids(256, h, w, k, gen)
        bits = F.cross_entropy(model(tokens), tokens, reduction="none") / math.log(2)  # (n, h, w)
    assert bits[:, 1:].mean() < 0.1
    # Row 0 is uniform: a model that could peek at the token it predicts would score far below log2(8) = 3.
    assert 2.5 < bits[:, 0].mean() < 3.5
    samples = generate(model, 64, generator=torch.Generator().manual_seed(2))
    assert (samples[:, 1:] == samples[:, :-1]).float().mean() > 0.97


# --------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, message", [
    (dict(arch="transformer"), "`arch` must be one of gated, pixelcnn, pixelsnail"),
    (dict(kernel_size=4), "`kernel_size` must be odd"),
    (dict(kernel_size=0), "`kernel_size` must be odd"),
    (dict(first_kernel_size=1), "`first_kernel_size` must be odd and >= 3"),
    (dict(first_kernel_size=6), "`first_kernel_size` must be odd and >= 3"),
    (dict(codebook_size=0), "`codebook_size` must be >= 1"),
    (dict(grid_height=0), "`grid_height` must be >= 1"),
    (dict(grid_width=-3), "`grid_width` must be >= 1"),
    (dict(embed_dim=0), "`embed_dim` must be >= 1"),
    (dict(hidden_channels=0), "`hidden_channels` must be >= 1"),
    (dict(arch="pixelcnn", hidden_channels=1), "`hidden_channels` must be >= 2"),
    (dict(num_layers=0), "`num_layers` must be >= 1"),
    (dict(arch="pixelsnail", depth=2), "arch 'pixelsnail' models one token per position"),
    (dict(arch="pixelsnail", hidden_channels=112, attention_heads=5), "`hidden_channels` must be a multiple of "
                                                                      "`attention_heads`"),
    (dict(arch="pixelsnail", attention_every=0), "`attention_every` and `attention_heads` must be >= 1"),
    (dict(num_classes=-1), "`num_classes` must be >= 0"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        PriorConfig(**overrides)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ several tokens per position


def tiny_with_levels(arch, depth=3, seed=0, **overrides):
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
    dep = level_dependencies(tiny_with_levels("gated"))
    assert torch.equal(dep, allowed(4, 4, 3))


def test_pixelcnn_levels_never_read_the_future_and_read_every_level_below_at_their_position():
    dep = level_dependencies(tiny_with_levels("pixelcnn"))
    rule = allowed(4, 4, 3)
    assert not (dep & ~rule).any()
    same_position = torch.arange(16).repeat_interleave(3)
    same_position = same_position.unsqueeze(0) == same_position.unsqueeze(1)
    assert torch.equal(dep & same_position, rule & same_position)


def test_depth_one_is_the_plain_prior():
    torch.manual_seed(0)
    plain = tiny_with_levels("gated", depth=1)
    tokens = torch.randint(7, (2, 4, 4))
    torch.testing.assert_close(plain(tokens.unsqueeze(-1)).squeeze(-1), plain(tokens))
    assert plain(tokens).shape == (2, 7, 4, 4)


@pytest.mark.parametrize("arch", ["gated", "pixelcnn"])
def test_cached_equals_naive_level_by_level(arch):
    model = tiny_with_levels(arch, num_classes=3)
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
    assert maps.maps.shape == (256, 7, 7, 2) and maps.meta.depth == 2
    histogram = maps.meta.splits["train"]["usage_histogram"]
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
    images, grids = ImageGenerator.load(prior_dir).sample(3)
    assert images.shape == (3, 1, 28, 28) and grids.shape == (3, 7, 7, 2)
    assert np.array_equal(grids.numpy(), tokens.astype(np.int64))


# --------------------------------------------------------------------------------- conditioned on a token map


@pytest.mark.parametrize("arch,num_classes", [("gated", 0), ("gated", 3), ("pixelcnn", 0), ("pixelcnn", 3),
                                              ("pixelsnail", 3)])
def test_a_bottom_prior_reads_every_top_code_and_only_the_bottom_tokens_before(arch, num_classes):
    """VQ-VAE-2's bottom prior: the logits at (i, j) have a non-zero gradient w.r.t. every top code and a zero
    gradient w.r.t. every bottom position not strictly before (i, j)."""
    model, (h, w), grids = conditioned_prior(arch, num_classes).double(), (7, 7), 3
    positions, gen = h * w, torch.Generator().manual_seed(0)
    tokens = torch.randint(16, (grids, 1, h, w), generator=gen).expand(grids, positions, h, w).flatten(0, 1)
    top = torch.randint(8, (grids, 1, 4, 4), generator=gen).expand(grids, positions, 4, 4).flatten(0, 1)
    labels = torch.randint(num_classes, (grids,), generator=gen).repeat_interleave(positions) if num_classes else None
    captured = {}

    def keep(name):
        def hook(module, inputs, out):
            out.retain_grad()
            captured[name] = out
        return hook

    hooks = [model.embed.register_forward_hook(keep("bottom")),
             model.condition_embed.register_forward_hook(keep("top"))]
    try:
        logits = model(tokens, labels, top)
    finally:
        for hook in hooks:
            hook.remove()
    own = torch.arange(positions).repeat(grids)
    own = logits.flatten(2)[torch.arange(len(own)), :, own]
    (own @ torch.randn(own.shape[1], generator=gen, dtype=own.dtype)).sum().backward()
    bottom = (captured["bottom"].grad.abs().sum(-1).flatten(1) != 0).unflatten(0, (grids, positions)).any(0)
    top_seen = (captured["top"].grad.abs().sum(-1).flatten(1) != 0).unflatten(0, (grids, positions)).any(0)
    assert not (bottom & ~strictly_before(h, w)).any(), "a bottom position saw itself or the future"
    assert bottom[h * w - 1, h * w - 2] and bottom[w, 0], "the condition cut the tokens before out"
    assert top_seen.all(), "some position does not read some top code"


def test_a_conditioned_prior_refuses_a_missing_or_foreign_condition():
    model = conditioned_prior("pixelcnn")
    with pytest.raises(ValueError, match="pass condition"):
        model(torch.zeros(2, 7, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="not conditioned on one"):
        Prior(PriorConfig(codebook_size=16, hidden_channels=16, embed_dim=8, num_layers=2))(
            torch.zeros(2, 7, 7, dtype=torch.long), None, torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="a conditioning map needs"):
        PriorConfig(condition_codebook_size=8, condition_height=0, condition_width=4)
