"""The autoregressive prior over VQ-VAE index maps: a PixelCNN that writes token grids in raster order.

Three bodies over the same embedding and output head:
- 'gated': Gated PixelCNN, van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders"
  (vertical and horizontal stacks, gated units, class conditioning, no blind spot);
- 'pixelcnn': the original masked-convolution residual stack of van den Oord et al. 2016, "Pixel Recurrent
  Neural Networks"; its receptive field has the known blind spot up and to the right;
- 'pixelsnail': the pixelcnn stack with a causal self-attention block after every attention_every residual
  blocks, as PixelSNAIL (Chen et al. 2018) and the prior of rosinality/vq-vae-2-pytorch interleave them: every
  position reads the whole past, blind spot included (one token per position only).

The prior knows nothing of images: it reads LongTensor[b, h, w] token grids and returns logits over the
codebook at every position, each computed from the positions before it in raster order only. With depth > 1
(a residual quantizer's levels, grids [b, h, w, depth]) the levels of one position are ordered channels, as
PixelCNN orders R, G, B: level g is predicted from every earlier position and from levels 0..g-1 here.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from prior.layers import CausalSelfAttention, GatedBlock, MaskedConv2d, Pointwise, ResidualBlock
from store.runs import CONFIG_FILE, config_from_dict, load_run_model, weights_file

ARCHS = ("gated", "pixelcnn", "pixelsnail")


@dataclass
class PriorConfig:
    # pixelcnn is the default: on 7x7 grids it learns more per epoch and runs faster per step than gated, whose
    # missing blind spot cannot pay where a 7x7 first layer already sees most of the past (BENCHMARKS.md).
    arch: str = "pixelcnn"  # one of ARCHS: gated, pixelcnn or pixelsnail (the module's docstring)
    codebook_size: int = 512  # the tokenizer's: the prior predicts one of these per position
    grid_height: int = 7  # the token grids' shape, from the maps the prior trains on
    grid_width: int = 7
    embed_dim: int = 64
    hidden_channels: int = 112  # gated blocks use twice this before their gates
    # Each layer widens the reach by kernel // 2: 3 + 7 * 1 = 10 >= 6 covers a 7x7 grid before each position (less
    # pixelcnn's blind spot); the default prior trains ~990 grids/s in bf16 on 2 CPU cores (~65 s an epoch of 60k).
    num_layers: int = 8
    first_kernel_size: int = 7
    kernel_size: int = 3
    attention_every: int = 2  # pixelsnail: an attention block after every this many residual blocks
    attention_heads: int = 4
    num_classes: int = 0  # 0: unconditional; else one more embedding row, "no label", for classifier-free guidance
    depth: int = 1  # tokens per position (a residual quantizer's levels), ordered channel groups
    # A map of tokens to condition on (the top map of a two-level tokenizer, for its bottom prior); 0: none.
    condition_codebook_size: int = 0
    condition_height: int = 0
    condition_width: int = 0

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"`arch` must be one of {', '.join(ARCHS)}; got {self.arch!r}")
        for name in ("codebook_size", "grid_height", "grid_width", "embed_dim", "hidden_channels", "num_layers",
                     "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.arch != "gated" and self.hidden_channels < 2:
            raise ValueError(f"`hidden_channels` must be >= 2 for arch {self.arch!r} (its residual blocks halve it), "
                             f"got {self.hidden_channels}")
        if self.arch == "pixelsnail":
            if self.depth > 1:
                raise ValueError("arch 'pixelsnail' models one token per position (depth 1): its attention would mix "
                                 "the levels of a position")
            if self.attention_every < 1 or self.attention_heads < 1:
                raise ValueError(f"`attention_every` and `attention_heads` must be >= 1, got {self.attention_every} "
                                 f"and {self.attention_heads}")
            if self.hidden_channels % self.attention_heads:
                raise ValueError(f"`hidden_channels` must be a multiple of `attention_heads`, got "
                                 f"{self.hidden_channels} and {self.attention_heads}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd and >= 1, got {self.kernel_size}")
        if self.first_kernel_size < 3 or self.first_kernel_size % 2 == 0:
            raise ValueError(f"`first_kernel_size` must be odd and >= 3, got {self.first_kernel_size}")
        if self.num_classes < 0:
            raise ValueError(f"`num_classes` must be >= 0 (0 = unconditional), got {self.num_classes}")
        if self.condition_codebook_size and (self.condition_codebook_size < 2 or self.condition_height < 1
                                             or self.condition_width < 1):
            raise ValueError("a conditioning map needs a codebook size >= 2 and a positive height and width, got "
                             f"{self.condition_codebook_size}, {self.condition_height}x{self.condition_width}")
        # Every level needs channels of its own in every layer (the pixelcnn blocks halve the width inside).
        group = self.depth * (1 if self.arch == "gated" else 2)
        if self.hidden_channels % group:
            raise ValueError(f"`hidden_channels` must be a multiple of {group} for depth {self.depth} "
                             f"and arch {self.arch!r}, got {self.hidden_channels}")

    @property
    def condition_shape(self):
        """The shape of the token map conditioned on, or None."""
        return (self.condition_height, self.condition_width) if self.condition_codebook_size else None

    @property
    def token_shape(self):
        """The shape of one grid of tokens: (h, w), or (h, w, depth)."""
        return (self.grid_height, self.grid_width) + ((self.depth,) if self.depth > 1 else ())


class Prior(nn.Module):
    """PixelCNN prior: forward(tokens[b, h, w], labels[b] or None) -> logits[b, codebook_size, h, w];
    with depth > 1, forward(tokens[b, h, w, depth]) -> logits[b, codebook_size, h, w, depth].

    With num_classes > 0 the label embedding has one extra row, index num_classes, meaning "no label": it is
    what the model is trained on when labels are dropped, and what the unconditional half of classifier-free
    guidance uses. Every body adds the label as a per-sample bias in every block (gated: into both stacks'
    gate pre-activations; pixelcnn and pixelsnail: onto each residual block's masked convolution).

    With condition_codebook_size > 0, forward also takes a token map condition[b, condition_height,
    condition_width] (VQ-VAE-2's top map): embedded, passed through unmasked residual 3x3 convolutions at its own
    resolution (the whole map is known before sampling starts; enough of them that every position reads the
    whole map), upsampled to the grid (nearest) and mixed by one more convolution, it enters every block as a
    per-position bias: the conditioning stack of the paper's PixelCNN. The tokens stay causal in raster order.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        c, depth = config.hidden_channels, config.depth
        # One table for all levels: level g's token t is row g * codebook_size + t.
        self.embed = nn.Embedding(depth * config.codebook_size, config.embed_dim)
        self.register_buffer("level_offsets", torch.arange(depth) * config.codebook_size, persistent=False)
        self.class_embed = nn.Embedding(config.num_classes + 1, c) if config.num_classes else None
        if config.condition_codebook_size:
            self.condition_embed = nn.Embedding(config.condition_codebook_size, c)
            span = max(1, max(config.condition_height, config.condition_width) - 1)  # each 3x3 reaches one further
            self.condition_stack = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(span))
            self.condition_out = nn.Conv2d(c, c, 3, padding=1)
        else:
            self.condition_embed = self.condition_stack = self.condition_out = None
        cond_dim = c if config.num_classes or config.condition_codebook_size else 0
        input_channels = depth * config.embed_dim
        if config.arch == "gated":
            self.blocks = nn.ModuleList(
                GatedBlock(input_channels if i == 0 else c, c,
                           config.first_kernel_size if i == 0 else config.kernel_size,
                           "A" if i == 0 else "B", cond_dim, depth)
                for i in range(config.num_layers))
        else:
            self.stem = MaskedConv2d(input_channels, c, config.first_kernel_size, "A", depth)
            self.blocks = nn.ModuleList(
                ResidualBlock(c, config.kernel_size, cond_dim, depth) for _ in range(config.num_layers - 1))
        positions = config.grid_height * config.grid_width
        self.attentions = nn.ModuleList(
            CausalSelfAttention(c, input_channels, config.attention_heads, positions)
            for _ in range((config.num_layers - 1) // config.attention_every)) if config.arch == "pixelsnail" else None
        self.head = nn.Sequential(nn.ReLU(), Pointwise(c, c, depth), nn.ReLU(),
                                  Pointwise(c, depth * config.codebook_size, depth))

    @classmethod
    def load(cls, run_dir, device="cpu", weights=None):
        """The prior of a prior run directory, in eval mode on device, with the averaged weights when the run kept
        them (or the weights file named). A two-level run holds a TwoLevelPrior: TwoLevelPrior.load."""
        return load_prior(cls, run_dir, device, weights)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def attention_after(self, n):
        """The attention block that follows residual block n (pixelsnail), or None."""
        every = self.config.attention_every
        if self.attentions is None or (n + 1) % every:
            return None
        return self.attentions[(n + 1) // every - 1]

    def embed_labels(self, labels, batch_size):
        """Label embeddings (b, hidden_channels), "no label" where labels is None; None if unconditional."""
        if self.class_embed is None:
            if labels is not None:
                raise ValueError("labels given to an unconditional prior (num_classes = 0)")
            return None
        if labels is None:
            labels = torch.full((batch_size,), self.config.num_classes, device=self.class_embed.weight.device)
        return self.class_embed(labels)

    def embed_condition(self, condition):
        """A token map (b, condition_height, condition_width) as a per-position bias (b, hidden_channels, h, w)."""
        if condition is None:
            raise ValueError("this prior is conditioned on a token map: pass condition")
        x = rearrange(self.condition_embed(condition), "b y x c -> b c y x")
        for conv in self.condition_stack:
            x = x + conv(F.relu(x))
        size = (self.config.grid_height, self.config.grid_width)
        return self.condition_out(F.relu(F.interpolate(x, size=size, mode="nearest")))

    def conditioning(self, labels, condition, batch_size):
        """What every block is conditioned on: None, the label embedding (b, c), or, with a conditioning map,
        a per-position bias (b, c, h, w) (plus the label embedding when there are classes)."""
        cond = self.embed_labels(labels, batch_size)
        if self.condition_embed is None:
            if condition is not None:
                raise ValueError("a condition map given to a prior that is not conditioned on one")
            return cond
        spatial = self.embed_condition(condition)
        return spatial if cond is None else spatial + rearrange(cond, "b c -> b c 1 1")

    def embed_tokens(self, tokens):
        """tokens (..., depth), every level given -> (..., depth * embed_dim), channels grouped by level."""
        return rearrange(self.embed(tokens + self.level_offsets), "... l e -> ... (l e)")

    def forward(self, tokens, labels=None, condition=None):
        levels_last = tokens.dim() == 4
        if not levels_last:
            tokens = tokens.unsqueeze(-1)
        x = rearrange(self.embed_tokens(tokens), "b h w c -> b c h w")
        cond = self.conditioning(labels, condition, tokens.shape[0])
        if self.config.arch == "gated":
            v, h, out = x, x, 0.0
            for block in self.blocks:
                v, h, skip = block(v, h, cond)
                out = out + skip
        else:
            out = self.stem(x)
            for n, block in enumerate(self.blocks):
                out = block(out, cond)
                attention = self.attention_after(n)
                if attention is not None:
                    out = attention(out, x)
        logits = rearrange(self.head(out), "b (l k) h w -> b k h w l", l=self.config.depth)
        return logits if levels_last else logits.squeeze(-1)  # (b, codebook_size, h, w[, depth])


class TwoLevelPrior(nn.Module):
    """VQ-VAE-2's pair of priors: a top prior over the top maps (class-conditional like a flat prior) and a bottom
    prior conditioned on the whole top map. forward(bottom tokens, labels, top tokens) -> (bottom logits, top
    logits); config is the bottom prior's."""

    def __init__(self, top_config, bottom_config):
        super().__init__()
        if bottom_config.condition_shape != (top_config.grid_height, top_config.grid_width):
            raise ValueError(f"the bottom prior is conditioned on {bottom_config.condition_shape} maps, the top "
                             f"prior writes {top_config.grid_height}x{top_config.grid_width}")
        self.top, self.bottom = Prior(top_config), Prior(bottom_config)
        self.config = bottom_config

    @classmethod
    def load(cls, run_dir, device="cpu", weights=None):
        """The pair of priors of a two-level prior run directory, as Prior.load loads a one-level run's."""
        return load_prior(cls, run_dir, device, weights)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens, labels=None, top=None):
        return self.bottom(tokens, labels, top), self.top(top, labels)


def load_prior(cls, run_dir, device, weights):
    """Prior.load and TwoLevelPrior.load: the model config.json describes ("model", and "top" for two levels),
    refused in one line when it is the other kind."""
    source = Path(run_dir) / CONFIG_FILE

    def build(config):
        two_levels = isinstance(config, dict) and config.get("top") is not None
        if two_levels != (cls is TwoLevelPrior):
            kind, loader = ("two levels", "TwoLevelPrior") if two_levels else ("one level", "Prior")
            raise ValueError(f"the prior run in {run_dir} models {kind} of codes: load it with {loader}.load")
        model = config_from_dict(PriorConfig, config.get("model"), source, "prior")
        return TwoLevelPrior(config_from_dict(PriorConfig, config["top"], source, "prior"), model) if two_levels \
            else Prior(model)

    _, model = load_run_model(run_dir, build, weights_file(run_dir, weights))
    return model.to(device)
