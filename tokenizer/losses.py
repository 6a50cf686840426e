"""The tokenizer's losses: the pixel loss every run trains on (l2, the VQ-VAE paper's, or l1) with the quantizer's
own, and VQGAN's adversarial loss on top (Esser et al. 2021, "Taming Transformers for High-Resolution Image
Synthesis"): hinge losses against a patch discriminator (tokenizer/discriminator.py) and the adaptive weight that
scales the adversarial gradient to the reconstruction gradient at the decoder's last layer. The adversarial loss is
off by default (adversarial_weight 0).
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from tokenizer.discriminator import PatchDiscriminator
from tokenizer.model import top_level_logs

RECONSTRUCTION_LOSSES = ("l2", "l1")


def reconstruction_loss(reconstructions, images, kind):
    """Mean absolute (l1) or squared (l2) error per pixel."""
    if kind == "l1":
        return F.l1_loss(reconstructions, images)
    return F.mse_loss(reconstructions, images)


def pixel_loss(vqvae, images, kind):
    """(reconstructions float, pixel loss + quantizer loss, logs, the pixel loss alone) of images in [0, 1]: the
    tokenizer's own loss, with or without a discriminator. "mse" is always logged; "reconstruction" too when the
    pixel loss is l1."""
    reconstructions, _, quantizer_loss, stats = vqvae(images)
    reconstructions = reconstructions.float()
    pixels = reconstruction_loss(reconstructions, images, kind)
    logs = {"mse": pixels.item() if kind == "l2" else F.mse_loss(reconstructions.detach(), images).item()}
    if kind != "l2":
        logs["reconstruction"] = pixels.item()
    logs.update(perplexity=stats["perplexity"], codes_used=stats["codes_used"], restarts=stats["restarts"],
                **top_level_logs(stats))
    return reconstructions, pixels + quantizer_loss, logs, pixels


def hinge_discriminator_loss(real_logits, fake_logits):
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))]): the discriminator's loss, as VQGAN's."""
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_generator_loss(fake_logits):
    return -fake_logits.mean()


def adaptive_weight(reconstruction, adversarial, last_layer, max_weight=1e4):
    """|grad of the reconstruction loss| / (|grad of the adversarial loss| + 1e-4) at last_layer, clamped to
    [0, max_weight] and detached: the adversarial term then pulls the decoder about as hard as the pixels do."""
    reconstruction_grad, = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)
    adversarial_grad, = torch.autograd.grad(adversarial, last_layer, retain_graph=True)
    return (reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)).clamp(0, max_weight).detach()


@dataclass
class TokenizerLossConfig:
    reconstruction_loss: str = "l2"
    adversarial_weight: float = 0.0
    discriminator_start: int = 0
    discriminator_channels: int = 64
    discriminator_layers: int = 0

    def __post_init__(self):
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"`reconstruction_loss` must be l1 or l2, not {self.reconstruction_loss!r}")
        if not self.adversarial_weight >= 0:
            raise ValueError(f"`adversarial_weight` must be >= 0, not {self.adversarial_weight}")
        if self.discriminator_start < 0:
            raise ValueError(f"`discriminator_start` must be >= 0, not {self.discriminator_start}")
        if self.discriminator_channels < 1 or self.discriminator_layers < 0:
            raise ValueError("`discriminator_channels` must be positive and `discriminator_layers` >= 0")

    @property
    def adversarial(self):
        return self.adversarial_weight > 0


class AdversarialTokenizer(nn.Module):
    """What an adversarial tokenizer run trains: the VQ-VAE and its patch discriminator, as one module whose
    forward gives the loss of both, so that one backward pass (and, across processes, one gradient all-reduce)
    serves both networks.

    The discriminator's weights enter the tokenizer's adversarial term detached, and the reconstructions enter the
    discriminator's loss detached: each network gets gradients from its own loss only. Before
    loss.discriminator_start neither adversarial term is computed."""

    def __init__(self, vqvae, loss):
        super().__init__()
        self.vqvae, self.loss = vqvae, loss
        config = vqvae.config
        self.discriminator = PatchDiscriminator(config.image_channels, config.image_size,
                                                loss.discriminator_channels, loss.discriminator_layers)

    def optimizer_groups(self):
        """(parameters, AdamW options) per optimizer: the tokenizer's, then the discriminator's with VQGAN's betas."""
        return [(list(self.vqvae.parameters()), {}), (list(self.discriminator.parameters()), {"betas": (0.5, 0.9)})]

    def forward(self, images, step):
        """images (b, c, H, W) in [0, 1] -> (loss of both networks, logs)."""
        reconstructions, loss, logs, pixels = pixel_loss(self.vqvae, images, self.loss.reconstruction_loss)
        if step >= self.loss.discriminator_start:
            frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
            generator_term = hinge_generator_loss(functional_call(self.discriminator, frozen, (reconstructions,)))
            weight = adaptive_weight(pixels, generator_term, self.vqvae.decoder.last_layer)
            discriminator_term = hinge_discriminator_loss(self.discriminator(images),
                                                          self.discriminator(reconstructions.detach()))
            loss = loss + self.loss.adversarial_weight * weight * generator_term + discriminator_term
            logs.update(generator_adversarial=generator_term.item(), adaptive_weight=weight.item(),
                        discriminator=discriminator_term.item())
        return loss, {"loss": loss.item(), **logs}
