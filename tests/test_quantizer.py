import itertools

import pytest
import torch
import torch.nn.functional as F

from tokenizer.model import TokenizerConfig, VQVAE
from tokenizer.quantizers import VectorQuantizer, perplexity_of

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
