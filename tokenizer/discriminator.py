"""The patch discriminator of VQGAN's adversarial loss (Esser et al. 2021, after the PatchGAN of Isola et al. 2017):
it scores overlapping patches of an image as real or reconstructed. The losses it takes part in: tokenizer/losses.py.
"""

import math

import torch.nn as nn


class PatchDiscriminator(nn.Module):
    """Stride-2 4x4 convolutions with LeakyReLU, then two stride-1 ones, to one logit per patch. GroupNorm where
    pix2pix has BatchNorm: no running statistics, so every process and every resumed run sees the same network.

    layers 0: sized to the image, log2(size) - 3 stride-2 layers between 1 and 3 (28 -> 2, 64 -> 3, 256 -> 3)."""

    def __init__(self, image_channels, image_size, channels=64, layers=0):
        super().__init__()
        layers = layers or min(3, max(1, round(math.log2(image_size)) - 3))
        widths = [channels * min(2 ** i, 8) for i in range(layers + 1)]
        modules = [nn.Conv2d(image_channels, widths[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(1, layers + 1):
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(widths[i - 1], widths[i], 4, stride=stride, padding=1, bias=False),
                        nn.GroupNorm(min(32, widths[i] // 4), widths[i]), nn.LeakyReLU(0.2)]
        modules.append(nn.Conv2d(widths[-1], 1, 4, stride=1, padding=1))  # (b, 1, patches, patches)
        self.net = nn.Sequential(*modules)
        for module in self.modules():  # as pix2pix and VQGAN initialise it
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images):
        """images (b, c, H, W) in [0, 1] -> logits (b, 1, p, p), one per patch."""
        return self.net(images * 2 - 1)
