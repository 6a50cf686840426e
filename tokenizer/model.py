"""The VQ-VAE of van den Oord et al. 2017, "Neural Discrete Representation Learning" (section 4.1):
stride-2 convolutions down (two by default: 28x28 -> 7x7, 32x32 -> 8x8; three or four for a grid 8x or 16x
smaller, as VQGAN's encoders go), 3x3 residual blocks, a quantizer (any of the family in tokenizer/quantizers.py),
and the mirror image up. Outputs pass through a sigmoid, so decoded images lie in [0, 1].

With hierarchy 2, the two-level VQ-VAE-2 of Razavi et al. 2019 ("Generating Diverse High-Fidelity Images with
VQ-VAE-2", as rosinality/vq-vae-2-pytorch builds it): a top encoder halves the bottom features again (7x7 -> 4x4,
8x8 -> 4x4); the top is quantized first, decoded, upsampled and joined to the bottom features before the bottom is
quantized; the decoder takes both quantized maps.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenizer.quantizers import (ESTIMATORS, BinaryQuantizer, FiniteScalarQuantizer, ResidualQuantizer, SimVQ,
                                  VectorQuantizer)

QUANTIZERS = ("vq", "residual", "simvq", "fsq", "binary")
DOWNSAMPLE_FACTORS = (4, 8, 16)


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


def residual_stack(first, config, out_channels=0):
    """The layers of the stack every encoder (and the two-level top path) ends with: first (a convolution into c
    channels), config.num_residual_blocks residual blocks at c, then, with out_channels, a ReLU and a 1x1
    convolution to out_channels. A list, so that the layers keep their places (and names) in an nn.Sequential."""
    c = first.out_channels
    layers = [first, *[ResidualBlock(c, config.residual_channels) for _ in range(config.num_residual_blocks)]]
    return layers + [nn.ReLU(), nn.Conv2d(c, out_channels, 1)] if out_channels else layers


class Encoder(nn.Module):
    def __init__(self, config):
        widths = config.widths
        super().__init__()
        layers, previous = [], config.image_channels
        for stage, width in enumerate(widths):
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.ReLU()]  # (b, width, H/2^s, W/2^s)
            if stage < len(widths) - 1:  # the lowest resolution has its own blocks below
                layers += [ResidualBlock(width, config.residual_channels)
                           for _ in range(config.stage_residual_blocks)]
            previous = width
        c = widths[-1]
        self.net = nn.Sequential(*layers, *residual_stack(nn.Conv2d(c, c, 3, padding=1), config, config.latent_dim))

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, config):
        widths = config.widths
        c = widths[-1]
        super().__init__()
        # Built in the order they run, so that a seed gives the same weights as before the stages were configurable.
        layers = residual_stack(nn.Conv2d(config.latent_dim, c, 3, padding=1), config)
        for stage in reversed(range(len(widths))):
            if stage < len(widths) - 1:
                layers += [ResidualBlock(widths[stage], config.residual_channels)
                           for _ in range(config.stage_residual_blocks)]
            out = widths[stage - 1] if stage else config.image_channels
            layers += [nn.ReLU(), nn.ConvTranspose2d(widths[stage], out, 4, stride=2, padding=1)]  # (b, out, 2h, 2w)
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self):
        """The weight of the layer that makes the pixels: where VQGAN's adaptive weight compares gradients."""
        return self.net[-1].weight

    def forward(self, z_q):
        return torch.sigmoid(self.net(z_q))


@dataclass
class TokenizerConfig:
    image_channels: int = 1  # 1 (grey) or 3 (RGB)
    image_size: int = 28
    downsample: int = 4  # the grid is this much smaller per side: 28x28 images -> 7x7 tokens, the paper's ratio
    hidden_channels: int = 64  # at the lowest resolution, where the residual blocks work
    stage_channels: str = ""  # widths of the stride-2 stages, comma-separated; "": half, then all of hidden_channels
    stage_residual_blocks: int = 0  # blocks above the lowest resolution: VQGAN's deeper encoders for large images
    residual_channels: int = 32  # each residual block's bottleneck
    num_residual_blocks: int = 2  # at the lowest resolution, as in the paper
    latent_dim: int = 64  # the channels of z, which the quantizer reads
    hierarchy: int = 1  # 2: VQ-VAE-2's top map (half the grid again) beside the bottom one
    quantizer: str = "vq"  # one of QUANTIZERS (tokenizer/quantizers.py says what each does)
    codebook_size: int = 512  # K: tokens lie in 0..K-1; fsq: set here to the product of its levels
    depth: int = 4  # residual only: chained codebooks, so index maps gain a trailing axis of this size
    fsq_levels: str = "8,5,5,5"  # fsq only: levels per dimension, 8 * 5 * 5 * 5 = 1000 codes
    estimator: str = "ste"  # gradient through the lookup: straight-through, or the rotation trick (Fifty et al. 2024)
    code_dim: int = 0  # look codes up in a learned projection of z this wide (0: in z itself)
    beta: float = 0.25  # commitment weight, the paper's
    codebook_update: str = "ema"  # ema (the paper's appendix: moving averages, no codebook gradient) or loss
    codebook_ema_decay: float = 0.99
    cosine: bool = False  # l2-normalised codes and inputs: the lookup by angle, as ViT-VQGAN's
    kmeans_init: bool = False  # codes start at k-means centres of the first batch rather than at random
    dead_code_threshold: float = 1.0  # restart a code used by fewer vectors a batch (EMA); 0: never
    entropy_weight: float = 0.0  # fsq and binary: lookup-free quantization's entropy penalty, spreads the tokens

    # Fields renamed since older config.json files were written: {former name: name now}.
    FORMER_NAMES = {"ema_decay": "codebook_ema_decay"}

    def __post_init__(self):
        if self.image_channels not in (1, 3):
            raise ValueError(f"`image_channels` must be 1 or 3, not {self.image_channels}")
        if self.downsample not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"`downsample` must be one of {', '.join(map(str, DOWNSAMPLE_FACTORS))}, "
                             f"not {self.downsample}")
        if self.image_size <= 0 or self.image_size % self.downsample:
            multiple = max(self.downsample, round(max(self.image_size, 1) / self.downsample) * self.downsample)
            raise ValueError(f"an image size of {self.image_size} is not divisible by the downsampling factor "
                             f"{self.downsample}: pass `image_size` {multiple} (or another multiple of "
                             f"{self.downsample}) or another `downsample`")
        if self.hierarchy not in (1, 2):
            raise ValueError(f"`hierarchy` must be 1 or 2, not {self.hierarchy}")
        if self.stage_residual_blocks < 0:
            raise ValueError(f"`stage_residual_blocks` must be >= 0, not {self.stage_residual_blocks}")
        if len(self.widths) != self.stages or min(self.widths) < 1:
            raise ValueError(f"`stage_channels` must be {self.stages} positive widths (one per stride-2 stage of "
                             f"`downsample` {self.downsample}), not {self.stage_channels!r}")
        if self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be at least 2, not {self.codebook_size}")
        if self.codebook_update not in ("ema", "loss"):
            raise ValueError(f"`codebook_update` must be 'ema' or 'loss', not {self.codebook_update!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"`quantizer` must be one of {', '.join(QUANTIZERS)}, not {self.quantizer!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"`estimator` must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}")
        if self.quantizer in ("fsq", "binary") and self.estimator != "ste":
            raise ValueError(f"the {self.quantizer} quantizer has no code to rotate onto: use `estimator` ste")
        if self.entropy_weight < 0 or (self.entropy_weight and self.quantizer not in ("fsq", "binary")):
            raise ValueError(f"`entropy_weight` is for the fsq and binary quantizers and must be >= 0, "
                             f"not {self.entropy_weight} with {self.quantizer}")
        if self.quantizer == "residual" and self.depth < 2:
            raise ValueError(f"the residual quantizer needs `depth` >= 2, not {self.depth}")
        if self.quantizer == "fsq":  # its codes are the grid of levels, whatever size was asked for
            self.codebook_size = math.prod(self.levels)
        if self.quantizer == "binary" and 2 ** round(math.log2(self.codebook_size)) != self.codebook_size:
            raise ValueError(f"the binary quantizer needs a power-of-two codebook size, not {self.codebook_size}")

    @property
    def grid_size(self):
        return self.image_size // self.downsample

    @property
    def top_grid_size(self):
        """The top map's side with two levels: the bottom grid halved, rounded up (7 -> 4)."""
        return (self.grid_size + 1) // 2

    @property
    def stages(self):
        """The number of stride-2 stages: log2 of the downsampling factor."""
        return self.downsample.bit_length() - 1

    @property
    def widths(self):
        """The channels of each stride-2 stage, highest resolution first."""
        if not self.stage_channels:
            return [self.hidden_channels // 2] + [self.hidden_channels] * (self.stages - 1)
        try:
            return [int(width) for width in self.stage_channels.split(",")]
        except ValueError:
            return []

    @property
    def levels(self):
        """fsq_levels as a list of ints."""
        try:
            levels = [int(level) for level in self.fsq_levels.split(",")]
        except ValueError:
            levels = []
        if not levels or min(levels) < 2:
            raise ValueError(f"`fsq_levels` must be comma-separated integers >= 2, not {self.fsq_levels!r}")
        return levels

    @property
    def token_depth(self):
        """Tokens per grid position: the trailing axis of index maps (1: no such axis)."""
        return self.depth if self.quantizer == "residual" else 1


def build_quantizer(config):
    if config.quantizer == "fsq":
        return FiniteScalarQuantizer(config.latent_dim, config.levels, entropy_weight=config.entropy_weight)
    if config.quantizer == "binary":
        return BinaryQuantizer(config.latent_dim, config.codebook_size, entropy_weight=config.entropy_weight)
    if config.quantizer == "simvq":
        return SimVQ(config.latent_dim, config.codebook_size, code_dim=config.code_dim, beta=config.beta,
                     cosine=config.cosine, estimator=config.estimator,
                     dead_code_threshold=config.dead_code_threshold)
    options = dict(beta=config.beta, codebook_update=config.codebook_update, decay=config.codebook_ema_decay,
                   kmeans_init=config.kmeans_init, dead_code_threshold=config.dead_code_threshold)
    if config.quantizer == "residual":
        return ResidualQuantizer(config.latent_dim, config.codebook_size, config.depth, estimator=config.estimator,
                                 code_dim=config.code_dim, cosine=config.cosine, **options)
    return VectorQuantizer(config.latent_dim, config.codebook_size, code_dim=config.code_dim, cosine=config.cosine,
                           estimator=config.estimator, **options)


class VQVAE(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = build_quantizer(config)
        self.decoder = Decoder(config)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, images):
        """images (b, c, H, W) in [0, 1] -> (reconstructions, indices (b, h, w[, depth]), quantizer loss, stats)"""
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


class TopEncoder(nn.Module):
    """Bottom features (b, latent_dim, g, g) -> top features (b, latent_dim, ceil(g/2), ceil(g/2))."""

    def __init__(self, config):
        super().__init__()
        self.net = nn.Sequential(*residual_stack(
            nn.Conv2d(config.latent_dim, config.hidden_channels, 3, stride=2, padding=1), config, config.latent_dim))

    def forward(self, x):
        return self.net(x)


class TwoLevelVQVAE(nn.Module):
    """VQ-VAE-2: forward(images) -> (reconstructions, (top indices, bottom indices), quantizer loss, stats), the
    stats of the bottom level with the top's under "top_" names."""

    def __init__(self, config):
        super().__init__()
        c, latent = config.hidden_channels, config.latent_dim
        self.config = config
        self.encoder = Encoder(config)
        self.top_encoder = TopEncoder(config)
        self.top_quantizer = build_quantizer(config)
        # The quantized top, upsampled to the bottom grid, as bottom features.
        self.top_decoder = nn.Sequential(*residual_stack(nn.Conv2d(latent, c, 3, padding=1), config, latent))
        self.join = nn.Conv2d(2 * latent, latent, 1)  # bottom features + decoded top -> what the bottom quantizes
        self.quantizer = build_quantizer(config)
        self.merge = nn.Conv2d(2 * latent, latent, 1)  # quantized bottom + upsampled quantized top -> the decoder
        self.decoder = Decoder(config)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def _up(self, z):
        return F.interpolate(z, size=(self.config.grid_size, self.config.grid_size), mode="nearest")

    def _decode_latents(self, top_q, bottom_q):
        return self.decoder(self.merge(torch.cat([bottom_q, self._up(top_q)], dim=1)))

    def _quantize(self, images):
        features = self.encoder(images)  # (b, latent, g, g)
        top_q, top, top_loss, top_stats = self.top_quantizer(self.top_encoder(features))
        joined = self.join(torch.cat([features, self.top_decoder(self._up(top_q))], dim=1))
        bottom_q, bottom, bottom_loss, stats = self.quantizer(joined)
        stats = {**stats, "restarts": stats["restarts"] + top_stats["restarts"],
                 **{f"top_{k}": v for k, v in top_stats.items()}}
        return top_q, bottom_q, (top, bottom), top_loss + bottom_loss, stats

    def forward(self, images):
        top_q, bottom_q, indices, loss, stats = self._quantize(images)
        return self._decode_latents(top_q, bottom_q), indices, loss, stats

    @torch.no_grad()
    def encode(self, images):
        return self._quantize(images)[2]

    @torch.no_grad()
    def decode(self, indices):
        top, bottom = indices
        return self._decode_latents(self.top_quantizer.lookup(top), self.quantizer.lookup(bottom))


def top_level_logs(stats):
    """A two-level tokenizer's top codebook health from its stats, for the metrics beside the bottom's."""
    return {k: stats[k] for k in ("top_perplexity", "top_codes_used") if k in stats}


def build_tokenizer_model(config):
    """The VQ-VAE the config describes: one level of codes, or VQ-VAE-2's two."""
    return TwoLevelVQVAE(config) if config.hierarchy == 2 else VQVAE(config)
