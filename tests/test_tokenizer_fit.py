"""tokenizer.fit: the loss of one training step, and the VQ-VAE's own weights out of what was trained."""

import pytest
import torch

from conftest import synthetic_images
from tokenizer.fit import tokenizer_step, tokenizer_weights, trained_module
from tokenizer.losses import TokenizerLossConfig
from tokenizer.model import TokenizerConfig, VQVAE


def test_the_step_loss_is_the_reconstruction_error_plus_the_quantizer_loss():
    torch.manual_seed(0)
    # Eval mode: a training forward moves the EMA codebook, so a second forward would quantize differently.
    model = VQVAE(TokenizerConfig(hidden_channels=8, residual_channels=4, latent_dim=4, codebook_size=16)).eval()
    images = torch.from_numpy(synthetic_images(4)[0]).permute(0, 3, 1, 2)
    loss, logs = tokenizer_step(model, (images, torch.zeros(4, dtype=torch.long)), 0)
    reconstructions, _, quantizer_loss, _ = model(images.float() / 255)
    mse = torch.nn.functional.mse_loss(reconstructions, images.float() / 255)
    assert loss.item() == pytest.approx((mse + quantizer_loss).item(), rel=1e-6) and loss.requires_grad
    assert logs["mse"] == pytest.approx(mse.item(), rel=1e-6) and 0 <= logs["codes_used"] <= 1


@pytest.mark.parametrize("adversarial_weight", [0.0, 0.5])
def test_the_tokenizers_weights_are_the_vqvaes_entries_of_what_was_trained(adversarial_weight):
    vqvae = VQVAE(TokenizerConfig(hidden_channels=8, residual_channels=4, latent_dim=4, codebook_size=16))
    loss = TokenizerLossConfig(adversarial_weight=adversarial_weight)
    trained = trained_module(vqvae, loss)
    weights = tokenizer_weights(trained.state_dict(), loss)
    assert weights.keys() == vqvae.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in vqvae.state_dict().items())
