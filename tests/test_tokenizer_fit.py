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


def test_a_new_run_takes_its_image_shape_from_the_images_and_refuses_other_than_square():
    """tokenizer.fit.new_tokenizer_run, the tokenizer's twin of prior.fit.new_prior_run: the images say the channels
    and size, the other fields are the caller's; a shape the model cannot take is one ValueError in library words."""
    from types import SimpleNamespace

    from store.images import DataConfig
    from tokenizer.fit import new_tokenizer_run
    from tokenizer.losses import TokenizerLossConfig
    from tokenizer.run import DUMP_BATCH_SIZE
    from training import TrainConfig

    images = SimpleNamespace(images=torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    run = new_tokenizer_run(images, TrainConfig(), DataConfig(), TokenizerLossConfig(), codebook_size=64, downsample=8)
    assert (run.model.image_channels, run.model.image_size, run.model.grid_size) == (3, 32, 4)
    assert run.model.codebook_size == 64 and run.dump_batch_size == DUMP_BATCH_SIZE
    with pytest.raises(ValueError, match="images must be square, these are 32x28: give a folder of images an "
                                         "`image_size`"):
        new_tokenizer_run(SimpleNamespace(images=torch.zeros(1, 1, 32, 28)), TrainConfig(), DataConfig(),
                          TokenizerLossConfig())
    with pytest.raises(ValueError, match="pass `image_size` 32"):
        new_tokenizer_run(SimpleNamespace(images=torch.zeros(1, 1, 30, 30)), TrainConfig(), DataConfig(),
                          TokenizerLossConfig())
