"""The VQ-VAE of van den Oord et al. 2017, "Neural Discrete Representation Learning" (section 4.1):
two stride-2 convolutions down (28x28 -> 7x7, 32x32 -> 8x8), 3x3 residual blocks, a vector quantizer,
and the mirror image up. Outputs pass through a sigmoid, so decoded images lie in [0, 1].
"""

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from tokenizer.quantizers import VectorQuantizer


class ResidualBlock(nn.Module):
    def __init__(self, channels, bottleneck_channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, bottleneck_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(bottleneck_channels, channels, 1),
        )

    def forward(self, x):
        return x + self.body(x)


class Encoder(nn.Module):
    def __init__(self, config):
        c = config.hidden_channels
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(config.image_channels, c // 2, 4, stride=2, padding=1),  # (b, c/2, H/2, W/2)
            nn.ReLU(),
            nn.Conv2d(c // 2, c, 4, stride=2, padding=1),  # (b, c, H/4, W/4)
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
            *[ResidualBlock(c, config.residual_channels) for _ in range(config.num_residual_blocks)],
            nn.ReLU(),
            nn.Conv2d(c, config.latent_dim, 1),
        )

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, config):
        c = config.hidden_channels
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(config.latent_dim, c, 3, padding=1),
            *[ResidualBlock(c, config.residual_channels) for _ in range(config.num_residual_blocks)],
            nn.ReLU(),
            nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c // 2, config.image_channels, 4, stride=2, padding=1),
        )

    def forward(self, z_q):
        return torch.sigmoid(self.net(z_q))


@dataclass
class TokenizerConfig:
    image_channels: int = field(default=1, metadata={"help": "channels of the input images: 1 (grey) or 3 (RGB)"})
    image_size: int = field(default=28, metadata={"help": "height and width of the images; must be divisible by 4"})
    hidden_channels: int = field(default=64, metadata={"help": "width of the encoder and decoder convolutions"})
    residual_channels: int = field(default=32, metadata={"help": "bottleneck width inside each residual block"})
    num_residual_blocks: int = field(default=2, metadata={"help": "residual blocks in the encoder and in the decoder"})
    latent_dim: int = field(default=64, metadata={"help": "channels of the encoder output z"})
    codebook_size: int = field(default=512, metadata={"help": "number of codes K; tokens lie in 0..K-1"})
    code_dim: int = field(default=0, metadata={
        "help": "look codes up in a learned projection of z to this many dimensions (0: in z itself)"})
    beta: float = field(default=0.25, metadata={"help": "weight of the commitment loss beta |z - sg[e]|^2"})
    codebook_update: str = field(default="ema", metadata={
        "help": "how codes learn: ema (moving averages of assigned vectors) or loss (codebook loss, optimizer)",
        "choices": ["ema", "loss"]})
    ema_decay: float = field(default=0.99, metadata={"help": "decay of the EMA codebook statistics"})
    cosine: bool = field(default=False, metadata={"help": "l2-normalise codes and encoder outputs before the lookup"})
    kmeans_init: bool = field(default=False, metadata={"help": "initialise the codebook by k-means on the first batch"})
    dead_code_threshold: float = field(default=1.0, metadata={
        "help": "restart a code whose EMA usage falls under this many vectors per batch (0: never)"})

    def __post_init__(self):
        if self.image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 or 3, not {self.image_channels}")
        if self.image_size <= 0 or self.image_size % 4:
            raise ValueError(f"image_size must be a positive multiple of 4, not {self.image_size}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, not {self.codebook_size}")
        if self.codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', not {self.codebook_update!r}")

    @property
    def grid_size(self):
        return self.image_size // 4


class VQVAE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(
            config.latent_dim, config.codebook_size, code_dim=config.code_dim, beta=config.beta,
            codebook_update=config.codebook_update, decay=config.ema_decay, cosine=config.cosine,
            kmeans_init=config.kmeans_init, dead_code_threshold=config.dead_code_threshold)
        self.decoder = Decoder(config)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, images):
        """images (b, c, H, W) in [0, 1] -> (reconstructions, indices (b, h, w), quantizer loss, stats)"""
        z = self.encoder(images)
        z_q, indices, vq_loss, stats = self.quantizer(z)
        return self.decoder(z_q), indices, vq_loss, stats

    @torch.no_grad()
    def encode(self, images):
        _, indices, _, _ = self.quantizer(self.encoder(images))
        return indices

    @torch.no_grad()
    def decode(self, indices):
        return self.decoder(self.quantizer.lookup(indices))
