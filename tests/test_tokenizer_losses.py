"""tokenizer.losses and tokenizer.discriminator: VQGAN's adversarial loss. Each network learns from its own loss
only, the tokenizer from the adversarial term only from --discriminator-start on, the adaptive weight is the ratio
of gradient norms, and an adversarial run resumes to the weights (discriminator included) of an uninterrupted one."""


import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_TOKENIZER, resume_matches_uninterrupted
from tokenizer.discriminator import PatchDiscriminator
from tokenizer.losses import (AdversarialTokenizer, TokenizerLossConfig, adaptive_weight, hinge_discriminator_loss,
                              hinge_generator_loss)
from tokenizer.model import TokenizerConfig, VQVAE

ADVERSARIAL = ["--adversarial-weight", "0.8", "--discriminator-channels", "8", "--reconstruction-loss", "l1"]


def tiny_pair(start=2, image_size=16):
    torch.manual_seed(0)
    vqvae = VQVAE(TokenizerConfig(image_size=image_size, hidden_channels=8, residual_channels=4, latent_dim=4,
                                  codebook_size=16, codebook_update="loss", dead_code_threshold=0))
    return AdversarialTokenizer(vqvae, TokenizerLossConfig(adversarial_weight=0.8, discriminator_start=start,
                                                           discriminator_channels=8))


def grads(module):
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()}


def test_the_patch_discriminator_gives_one_logit_per_patch_for_every_size():
    for size, channels in ((28, 1), (32, 3), (64, 3)):
        logits = PatchDiscriminator(channels, size, channels=8)(torch.rand(2, channels, size, size))
        assert logits.shape[:2] == (2, 1) and logits.shape[2] == logits.shape[3] > 1


def test_hinge_losses_and_the_adaptive_weight_against_hand_computed_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)
    last = torch.ones(4, requires_grad=True)
    reconstruction, adversarial = (2 * last).sum(), (3 * last).sum() ** 2 / 24  # grads 2 and 3 * 12 / 12 = 3
    # |grad rec| = 2 * sqrt(4) = 4, |grad adv| = 2 * 12 / 24 * 3 * 2 = 6 (d/dw (3 sum w)^2 / 24 = 0.75 sum w = 3)
    assert adaptive_weight(reconstruction, adversarial, last).item() == pytest.approx(4 / (6 + 1e-4))
    tiny = (1e-9 * last).sum()
    assert adaptive_weight(reconstruction, tiny, last, max_weight=100.0).item() == 100.0


def test_each_network_learns_from_its_own_loss_and_the_adversarial_term_waits_for_its_start():
    model = tiny_pair(start=2)
    images = torch.rand(4, 1, 16, 16)
    loss, logs = model(images, step=1)  # before the start: no adversarial term, no discriminator loss
    loss.backward()
    assert all(g is None for g in grads(model.discriminator).values())
    before_start = grads(model.vqvae)
    model.zero_grad()
    reconstructions, _, quantizer_loss, _ = model.vqvae(images)
    (F.mse_loss(reconstructions, images) + quantizer_loss).backward()  # l2, the default pixel loss
    assert all(torch.equal(before_start[n], p.grad) for n, p in model.vqvae.named_parameters() if p.grad is not None)
    assert "discriminator" not in logs

    model.zero_grad()
    loss, logs = model(images, step=2)
    loss.backward()
    together = grads(model)
    # The discriminator's gradient is that of its own hinge loss alone ...
    model.zero_grad()
    reconstructions = model.vqvae(images)[0].float().detach()
    hinge_discriminator_loss(model.discriminator(images), model.discriminator(reconstructions)).backward()
    for name, p in model.discriminator.named_parameters():
        assert torch.allclose(together[f"discriminator.{name}"], p.grad, atol=1e-6), name
    # ... and the tokenizer's now differs from the pixel loss alone by the adversarial term.
    assert any(not torch.allclose(together[f"vqvae.{n}"], before_start[n], atol=1e-7)
               for n in before_start if before_start[n] is not None)
    assert logs["adaptive_weight"] > 0 and "discriminator" in logs


def test_bad_factor_size_pairs_and_loss_flags_are_refused():
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 8: pass `image_size` 32"):
        TokenizerConfig(image_size=28, downsample=8)
    with pytest.raises(ValueError, match="`downsample` must be one of 4, 8, 16"):
        TokenizerConfig(image_size=32, downsample=2)
    with pytest.raises(ValueError, match="`stage_channels` must be 3 positive widths"):
        TokenizerConfig(image_size=32, downsample=8, stage_channels="16,32")
    for options, message in (({"adversarial_weight": -0.1}, "`adversarial_weight` must be >= 0"),
                             ({"discriminator_start": -1}, "`discriminator_start` must be >= 0"),
                             ({"reconstruction_loss": "l3"}, "`reconstruction_loss` must be l1 or l2")):
        with pytest.raises(ValueError, match=message):
            TokenizerLossConfig(**options)


def test_a_killed_adversarial_run_resumes_to_the_same_weights(fashion_dir, tmp_path):
    flags = [*TINY_TOKENIZER, *ADVERSARIAL, "--discriminator-start", "4", "--epochs", "6", "--checkpoint-every", "5",
             "--output-root", tmp_path / "runs"]
    # The discriminator and both optimizers' states are in the training state, and resume to the same values.
    _, whole = resume_matches_uninterrupted("pipelines.fit_tokenizer", flags, tmp_path / "runs" / "tokenizer",
                                            ("model.safetensors", "training_state.safetensors"))
    from safetensors.torch import load_file

    state = load_file(whole / "training_state.safetensors")
    assert any(k.startswith("model.discriminator.") for k in state) and any(k.startswith("optimizer1.") for k in state)
