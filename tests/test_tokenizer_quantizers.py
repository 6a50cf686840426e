"""tokenizer.quantizers: the VectorQuantizer (shapes, lookup, EMA and loss updates, restarts, cosine, low-dimensional
codes), and the family behind --quantizer and --estimator, each keeping the one contract."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from tokenizer import Tokenizer
from tokenizer.model import QUANTIZERS, TokenizerConfig, VQVAE, build_quantizer
from tokenizer.quantizers import (BinaryQuantizer, FiniteScalarQuantizer, ResidualQuantizer, SimVQ, VectorQuantizer,
                                  perplexity_of, rotation_trick)


OPTIONS = list(itertools.product(["ema", "loss"], [0, 4], [False, True]))


@pytest.mark.parametrize("update,code_dim,cosine", OPTIONS)
def test_shapes_and_lookup_gives_back_the_quantized_output(update, code_dim, cosine):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 16, code_dim=code_dim, codebook_update=update, cosine=cosine)
    z = torch.randn(3, 8, 5, 6)
    z_q, indices, loss, stats = quantizer(z)
    assert z_q.shape == z.shape and z_q.dtype == z.dtype
    assert indices.shape == (3, 5, 6) and indices.dtype == torch.int64
    assert 0 <= int(indices.min()) and int(indices.max()) < 16
    assert loss.ndim == 0 and loss.item() >= 0
    assert 1 <= stats["perplexity"] <= 16
    quantizer.eval()
    z_q, indices, _, _ = quantizer(z)
    torch.testing.assert_close(quantizer.lookup(indices), z_q)


@pytest.mark.parametrize("cosine", [False, True])
def test_nearest_matches_brute_force_in_small_chunks(cosine):
    torch.manual_seed(1)
    quantizer = VectorQuantizer(6, 40, cosine=cosine, search_chunk=7)
    flat = torch.randn(100, 6)
    if cosine:
        flat = F.normalize(flat, dim=-1)
    expected = torch.cdist(flat, quantizer.codes()).argmin(dim=1)
    assert torch.equal(quantizer.nearest(flat), expected)


def test_straight_through_copies_the_decoder_gradient_and_spares_the_codebook():
    torch.manual_seed(0)
    model = VQVAE(TokenizerConfig(hidden_channels=8, residual_channels=4, latent_dim=4, codebook_size=8,
                                  codebook_update="loss"))
    images = torch.rand(2, 1, 28, 28)
    z = model.encoder(images)
    z.retain_grad()
    z_q, _, _, _ = model.quantizer(z)
    z_q.retain_grad()
    reconstruction_loss = F.mse_loss(model.decoder(z_q), images)
    reconstruction_loss.backward()
    # The "gradient copy": the encoder output receives exactly the gradient at the decoder's input.
    assert z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, z_q.grad, rtol=0, atol=0)
    assert model.quantizer.codebook.grad is None or model.quantizer.codebook.grad.abs().sum() == 0


def test_codebook_and_commitment_losses_reach_their_own_sides():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4, 8, codebook_update="loss", beta=0.25)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    _, _, loss, _ = quantizer(z)
    loss.backward()
    assert quantizer.codebook.grad.abs().sum() > 0  # codebook loss |sg[z] - e|^2
    assert z.grad.abs().sum() > 0  # commitment loss beta |z - sg[e]|^2


def test_ema_update_matches_a_hand_computed_example():
    quantizer = VectorQuantizer(1, 2, decay=0.5, epsilon=0.0, dead_code_threshold=0)
    quantizer.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.embed_sum.copy_(quantizer.codebook)
    quantizer.cluster_size.fill_(1.0)
    # Three vectors near code 0 (0, 1, 2) and one near code 1 (8).
    z = torch.tensor([0.0, 1.0, 2.0, 8.0]).reshape(1, 1, 2, 2)
    _, indices, _, stats = quantizer(z)
    assert indices.flatten().tolist() == [0, 0, 0, 1]
    # cluster_size = 0.5 * 1 + 0.5 * [3, 1] = [2, 1]; embed_sum = 0.5 * [0, 10] + 0.5 * [3, 8] = [1.5, 9]
    torch.testing.assert_close(quantizer.cluster_size, torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(quantizer.embed_sum, torch.tensor([[1.5], [9.0]]))
    torch.testing.assert_close(quantizer.codebook, torch.tensor([[0.75], [9.0]]))
    assert stats["restarts"] == 0


def test_ema_training_quantizes_with_the_codebook_before_the_step():
    # As Sonnet's VectorQuantizerEMA: the batch gets the codes its search found, not the codes after the update.
    quantizer = VectorQuantizer(1, 2, decay=0.5, epsilon=0.0, dead_code_threshold=0)
    quantizer.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.embed_sum.copy_(quantizer.codebook)
    quantizer.cluster_size.fill_(1.0)
    z_q, _, _, _ = quantizer(torch.tensor([0.0, 1.0, 2.0, 8.0]).reshape(1, 1, 2, 2))
    assert z_q.flatten().tolist() == [0.0, 0.0, 0.0, 10.0]  # after the step the codes are 0.75 and 9
    torch.testing.assert_close(quantizer.codebook, torch.tensor([[0.75], [9.0]]))


def test_laplace_smoothing_keeps_an_unused_code_finite():
    quantizer = VectorQuantizer(1, 3, decay=0.0, epsilon=1e-5, dead_code_threshold=0)
    z = torch.zeros(1, 1, 1, 4)
    quantizer(z)
    assert torch.isfinite(quantizer.codebook).all()
    # With total n and K codes: (c + eps) / (n + K eps) * n; an unused code keeps a tiny positive size.
    total = 4.0
    counts = quantizer.cluster_size
    assert counts.sum().item() == pytest.approx(total)


def test_dead_codes_are_restarted_from_the_batch():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(2, 4, decay=0.5, dead_code_threshold=1.0)
    quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]]))
    quantizer.embed_sum.copy_(quantizer.codebook)
    z = torch.randn(1, 2, 4, 4) * 0.1  # every vector is nearest to code 0
    # After one update the far codes' usage is 0.5 * 1 < 1: all three are re-seeded in that same step.
    assert quantizer(z)[3]["restarts"] == 3
    batch_vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for code in quantizer.codebook[1:]:
        assert (batch_vectors - code).abs().sum(dim=1).min() < 1e-6, "a restarted code is not a batch vector"


def test_kmeans_init_puts_codes_on_the_data():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(2, 2, kmeans_init=True, dead_code_threshold=0)
    centres = torch.tensor([[5.0, 5.0], [-5.0, -5.0]])
    flat = torch.cat([centres[0] + 0.01 * torch.randn(50, 2), centres[1] + 0.01 * torch.randn(50, 2)])
    quantizer(flat.t().reshape(1, 2, 10, 10))
    found = quantizer.codebook[quantizer.codebook[:, 0].argsort(descending=True)]
    torch.testing.assert_close(found, centres, atol=0.1, rtol=0)
    assert bool(quantizer.initialized)


def test_bf16_autocast_keeps_the_search_in_float32():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 64).eval()
    z = torch.randn(2, 8, 4, 4)
    _, expected, _, _ = quantizer(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, indices, _, _ = quantizer(z)
    assert torch.equal(indices, expected)


def test_perplexity_of_a_uniform_histogram_is_its_size():
    assert perplexity_of(torch.ones(10)) == pytest.approx(10)
    assert perplexity_of(torch.tensor([5.0, 0, 0])) == pytest.approx(1)


# ------------------------------------------------------ the family behind --quantizer and --estimator

FAMILY = [("vq", "ste"), ("vq", "rotation"), ("residual", "ste"), ("residual", "rotation"), ("simvq", "ste"),
          ("simvq", "rotation"), ("fsq", "ste"), ("binary", "ste")]


def tiny_config(quantizer, estimator="ste", **overrides):
    options = dict(hidden_channels=8, residual_channels=4, latent_dim=4, codebook_size=16, quantizer=quantizer,
                   estimator=estimator, depth=3, fsq_levels="4,3,2")
    return TokenizerConfig(**{**options, **overrides})


@pytest.mark.parametrize("quantizer,estimator", FAMILY)
def test_every_quantizer_keeps_the_contract(quantizer, estimator):
    torch.manual_seed(0)
    model = VQVAE(tiny_config(quantizer, estimator))
    images = torch.rand(3, 1, 28, 28)
    reconstructions, indices, loss, stats = model(images)
    depth = 3 if quantizer == "residual" else 1
    assert reconstructions.shape == images.shape
    assert indices.dtype == torch.int64 and indices.shape == (3, 7, 7) + ((depth,) if depth > 1 else ())
    k = model.quantizer.codebook_size
    assert k == (24 if quantizer == "fsq" else 16)
    assert 0 <= int(indices.min()) and int(indices.max()) < k
    assert stats["counts"].shape == (depth, k) and int(stats["counts"].sum()) == 3 * 7 * 7 * depth
    assert loss.ndim == 0
    # Training reaches the encoder through the quantizer, whatever the estimator.
    (F.mse_loss(reconstructions, images) + loss).backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0
    # Decoding the indices gives back the quantized output exactly.
    model.eval()
    z_q, indices, _, _ = model.quantizer(model.encoder(images))
    torch.testing.assert_close(model.quantizer.lookup(indices), z_q, rtol=1e-5, atol=1e-5)
    tokenizer = Tokenizer(model)
    assert tokenizer.token_shape == tuple(indices.shape[1:])
    torch.testing.assert_close(tokenizer.decode(tokenizer.encode(images)), model.decoder(z_q))


def test_rotation_trick_gives_the_code_forward_and_the_rotated_gradient_backward():
    torch.manual_seed(0)
    e = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 4, dtype=torch.float64)
    upstream = torch.randn(5, 4, dtype=torch.float64)
    out = rotation_trick(e, q)
    torch.testing.assert_close(out, q)
    out.backward(upstream)
    for n in range(5):
        e_hat, q_hat = F.normalize(e[n].detach(), dim=0), F.normalize(q[n], dim=0)
        r = F.normalize(e_hat + q_hat, dim=0)
        rotation = torch.eye(4, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
        torch.testing.assert_close(rotation @ e_hat, q_hat)
        scale = q[n].norm() / e[n].detach().norm()
        torch.testing.assert_close(e.grad[n], scale * rotation.T @ upstream[n])
    # Not the straight-through copy: the gradient is turned by the angle between e and q.
    assert not torch.allclose(e.grad, upstream)


def test_rotation_trick_is_a_scaled_copy_when_code_and_vector_align():
    e = torch.tensor([[1.0, 2.0, 2.0]], requires_grad=True)
    rotation_trick(e, 2 * e.detach()).backward(torch.tensor([[0.5, -1.0, 3.0]]))
    torch.testing.assert_close(e.grad, 2 * torch.tensor([[0.5, -1.0, 3.0]]))


def test_fsq_reaches_every_code_and_its_digits_round_trip():
    quantizer = FiniteScalarQuantizer(3, [8, 5, 5, 5])
    assert quantizer.codebook_size == 1000
    assert TokenizerConfig(quantizer="fsq").codebook_size == 1000
    indices = torch.arange(1000).reshape(10, 10, 10)
    values = quantizer.from_digits(indices.reshape(-1, 1) // quantizer.place % quantizer.radices)
    # Feeding the centres of the levels back through the bound and the rounding gives the same indices.
    levels = quantizer.radices.float()
    half_range = (levels - 1) * (1 + quantizer.eps) / 2
    offset = (quantizer.radices % 2 == 0).float() * 0.5
    half_width = (quantizer.radices // 2).float()
    pre_bound = torch.atanh((values * half_width + offset) / half_range) - torch.atanh(offset / half_range)
    rounded, digits, _ = quantizer.quantize(pre_bound)
    assert torch.equal((digits * quantizer.place).sum(dim=1), indices.flatten())
    torch.testing.assert_close(rounded, values)


def test_fsq_rounding_passes_the_gradient_straight_through():
    quantizer = FiniteScalarQuantizer(2, [5, 5])
    flat = torch.zeros(4, 2, requires_grad=True)
    rounded, _, _ = quantizer.quantize(flat)
    rounded.sum().backward()
    # d/dx of tanh(x) * half_range / half_width at 0, unchanged by the rounding.
    torch.testing.assert_close(flat.grad, torch.full((4, 2), 2 * 1.001 / 2))


def test_entropy_penalty_is_minus_log_k_for_a_spread_batch_and_zero_for_a_collapsed_one():
    quantizer = BinaryQuantizer(4, 8, entropy_weight=1.0, entropy_temperature=0.01)  # one-hot assignments
    codes = quantizer.from_digits(torch.arange(8).unsqueeze(1) // quantizer.place % quantizer.radices)
    spread = quantizer.entropy_penalty(codes.repeat(4, 1))  # every code, each vector exactly on one
    collapsed = quantizer.entropy_penalty(codes[:1].repeat(32, 1))
    torch.testing.assert_close(spread, -torch.log(torch.tensor(8.0)), atol=1e-3, rtol=0)
    torch.testing.assert_close(collapsed, torch.tensor(0.0), atol=1e-3, rtol=0)


@pytest.mark.parametrize("make", [lambda w: BinaryQuantizer(8, 16, entropy_weight=w),
                                  lambda w: FiniteScalarQuantizer(8, [4, 3], entropy_weight=w)], ids=["binary", "fsq"])
def test_entropy_penalty_spreads_a_collapsed_encoder_over_the_codes(make):
    used = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)  # the same quantizer and encoder output with and without the penalty
        quantizer = make(weight).train()
        # An encoder output whose vectors all look alike: a shared offset and a little variation.
        z = (torch.randn(1, 8, 1, 1) * 2 + 0.1 * torch.randn(4, 8, 6, 6)).requires_grad_()
        optimizer = torch.optim.Adam([z, *quantizer.parameters()], lr=0.05)
        for _ in range(100):
            _, indices, loss, _ = quantizer(z)
            optimizer.zero_grad()
            (loss + 0 * z.sum()).backward()
            optimizer.step()
        used[weight] = len(quantizer.eval()(z)[1].unique())
    assert used[0.0] <= 2 and used[1.0] >= quantizer.codebook_size // 2, used
    assert quantizer(z)[2].item() == 0, "the penalty is a training loss only"
    with pytest.raises(ValueError, match="`entropy_weight` is for the fsq and binary"):
        TokenizerConfig(quantizer="vq", entropy_weight=0.1)


def test_binary_tokens_are_the_sign_bits_and_the_gradient_is_clipped():
    quantizer = BinaryQuantizer(4, 8)
    assert quantizer.codebook_size == 8
    flat = torch.tensor([[0.5, -0.5, 2.0], [-3.0, 0.9, -0.1]], requires_grad=True)
    signs, digits, _ = quantizer.quantize(flat)
    assert torch.equal(signs, torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]]))
    assert torch.equal((digits * quantizer.place).sum(dim=1), torch.tensor([1 + 4, 2]))
    signs.sum().backward()
    # hardtanh's gradient: 1 where |x| <= 1, 0 where the sign is saturated.
    assert torch.equal(flat.grad, torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="power-of-two"):
        TokenizerConfig(quantizer="binary", codebook_size=500)


def test_simvq_moves_every_code_through_the_shared_map_and_keeps_its_basis():
    torch.manual_seed(0)
    quantizer = SimVQ(4, 32, dead_code_threshold=0.0)  # no restarts: only the map may move the codes
    basis, before = quantizer.basis.clone(), quantizer.codes().detach().clone()
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.5)
    z = torch.randn(1, 4, 1, 2)  # two vectors: at most two of the 32 codes are picked
    _, indices, loss, _ = quantizer(z)
    loss.backward()
    optimizer.step()
    moved = (quantizer.codes().detach() - before).norm(dim=1) > 0
    assert len(indices.unique()) <= 2 and bool(moved.all())
    assert torch.equal(quantizer.basis, basis)
    assert [name for name, _ in quantizer.named_parameters()] == ["transform.weight"]


def test_simvq_restarts_a_dead_code_by_redrawing_its_basis_row_onto_a_vector():
    torch.manual_seed(0)
    quantizer = SimVQ(4, 32)
    with torch.no_grad():
        quantizer.transform.weight.copy_(torch.randn(4, 4))  # a map far from the identity it starts as
    z = torch.randn(1, 4, 1, 8)
    basis = quantizer.basis.clone()
    _, indices, _, stats = quantizer(z)
    used = torch.zeros(32, dtype=torch.bool)
    used[indices.flatten()] = True
    assert stats["restarts"] == int((~used).sum()) > 0
    assert torch.equal(quantizer.basis[used], basis[used]) and not torch.equal(quantizer.basis, basis)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 4)
    distance = torch.cdist(quantizer.codes().detach()[~used], vectors).min(dim=1).values
    assert distance.max() < 1e-2, "a restarted code should sit on one of the batch's vectors"


def test_residual_levels_quantize_what_the_levels_before_left_over():
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(4, 16, depth=3, codebook_update="loss").eval()
    z = torch.randn(2, 4, 3, 3)
    z_q, indices, _, _ = quantizer(z)
    residual = z.permute(0, 2, 3, 1).reshape(-1, 4)
    total = torch.zeros_like(residual)
    for n, level in enumerate(quantizer.levels):
        expected = torch.cdist(residual, level.codes()).argmin(dim=1)
        assert torch.equal(indices[..., n].flatten(), expected)
        residual = residual - level.codes()[expected]
        total = total + level.codes()[expected]
    torch.testing.assert_close(z_q.permute(0, 2, 3, 1).reshape(-1, 4), total)


@pytest.mark.parametrize("overrides,message", [
    (dict(quantizer="fsq", estimator="rotation"), "no code to rotate"),
    (dict(quantizer="residual", depth=1), "needs `depth` >= 2"),
    (dict(quantizer="fsq", fsq_levels="8,x"), "`fsq_levels` must be"),
    (dict(quantizer="lfq"), "`quantizer` must be one of"),
    (dict(estimator="gumbel"), "`estimator` must be one of"),
])
def test_bad_quantizer_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{"quantizer": "vq", **overrides})


def test_residual_tokenizer_refuses_tokens_without_the_depth_axis():
    tokenizer = Tokenizer(VQVAE(tiny_config("residual")))
    with pytest.raises(ValueError, match=r"shape \(batch, 7, 7, 3\)"):
        tokenizer.decode(torch.zeros(2, 7, 7, dtype=torch.long))


@pytest.mark.parametrize("flags", [["--quantizer", "simvq"], ["--quantizer", "fsq", "--fsq-levels", "4,4,2"],
                                   ["--quantizer", "binary"], ["--estimator", "rotation"]])
def test_every_quantizer_works_through_all_three_commands(flags, fashion_dir, tmp_path):
    from conftest import TINY_TOKENIZER
    from pipelines import fit_prior, fit_tokenizer, sample
    from store.index_maps import read_index_maps

    root = tmp_path / "runs"
    fit_tokenizer.main([*TINY_TOKENIZER, *flags, "--epochs", "1", "--output-root", root, "--run-name", "t"])
    maps = read_index_maps(root / "tokenizer" / "t" / "maps", "test")
    assert maps.maps.shape == (64, 7, 7) and maps.meta.codebook_size == 32
    fit_prior.main(["--embed-dim", "4", "--hidden-channels", "8", "--num-layers", "2", "--batch-size", "32",
                    "--warmup-steps", "2", "--epochs", "1", "--output-root", root, "--run-name", "p"])
    sample.main(["--prior", root / "prior" / "p", "--n", 2, "--out", tmp_path / "s"])
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 2


@pytest.mark.parametrize("kind", QUANTIZERS)
def test_bf16_autocast_leaves_the_search_and_the_codebook_statistics_in_float32(kind):
    torch.manual_seed(0)
    config = TokenizerConfig(quantizer=kind, latent_dim=8, codebook_size=16, depth=2, fsq_levels="4,4")
    reference, mixed = build_quantizer(config).train(), build_quantizer(config).train()
    mixed.load_state_dict(reference.state_dict())
    z = torch.randn(2, 8, 4, 4).bfloat16()  # what an encoder under bf16 autocast hands over
    _, expected, expected_loss, _ = reference(z.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, indices, loss, _ = mixed(z)
    assert torch.equal(indices, expected) and z_q.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.equal(loss, expected_loss)
    # The training step's EMA update and restarts saw the same float32 statistics, and kept float32 state.
    expected_state = reference.state_dict()
    for name, tensor in mixed.state_dict().items():
        assert tensor.dtype == expected_state[name].dtype and torch.equal(tensor, expected_state[name]), name
