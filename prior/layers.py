"""Masked convolutions and the blocks the PixelCNN priors are built from.

With depth > 1 tokens per position (a residual quantizer's levels), every channel belongs to one level, in
contiguous blocks, and at the centre tap a masked layer lets level g read only levels before g (type A) or up
to g (type B): the way PixelCNN orders the R, G and B of one pixel. Taps before the centre read every level.
Position-wise layers (Pointwise) are type B over levels for the same reason; with depth 1 all of this reduces
to the plain spatial masks.

MaskedConv2d follows van den Oord et al. 2016a, "Pixel Recurrent Neural Networks"; GatedBlock follows
van den Oord et al. 2016b, "Conditional Image Generation with PixelCNN Decoders".

Every block is written here once, for both ways of running it: `forward` on whole grids, and the steps the
cached sampler of prior/generate.py takes (GatedBlock.row_step and position_step, ResidualBlock.step,
CausalSelfAttention.step), where a masked convolution reads a window of cached past inputs
(MaskedConv2d.at_position, over_rows) instead of the grid. What follows a convolution is pointwise, and works on
maps (b, c, h, w) and on single positions (b, c) alike; the sampler only keeps the caches.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def channel_levels(channels, depth, gated=False):
    """The level of each channel: contiguous blocks. A gated layer's 2c channels are the two halves the gate
    multiplies together, tanh(a) * sigmoid(b), so both halves are blocked alike and channel i of a meets
    channel i of b."""
    width = channels // 2 if gated else channels
    levels = torch.arange(width) * depth // width
    return levels.repeat(2) if gated else levels


def level_mask(out_levels, in_levels, mask_type):
    """(out, in): 1 where an output channel may read an input channel at the same position."""
    if mask_type == "A":
        return (in_levels.unsqueeze(0) < out_levels.unsqueeze(1)).float()
    return (in_levels.unsqueeze(0) <= out_levels.unsqueeze(1)).float()


class MaskedConv2d(nn.Conv2d):
    """A 'same' convolution whose kernel only sees positions before the centre in raster order.

    Which kernel taps a 5x5 mask keeps (x) and hides (.):

        type A          type B
        x x x x x       x x x x x
        x x x x x       x x x x x
        x x . . .       x x x . .
        . . . . .       . . . . .
        . . . . .       . . . . .

    Type A hides the centre, so the first layer cannot copy the token it is asked to predict; type B shows it,
    so later layers may use what earlier layers computed at the same position (which itself saw only the
    past). A kernel of height 1, e.g. (1, 5), keeps only the centre row: the horizontal stack of a gated block.
    With depth > 1 the centre tap is masked over channel levels (see the module's docstring); gated_out marks
    an output that a gate splits in halves.
    """

    def __init__(self, in_channels, out_channels, kernel_size, mask_type, depth=1, gated_out=False):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"a masked convolution needs an odd kernel size, got {(kh, kw)}")
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        self.mask_type = mask_type
        mask = torch.ones(out_channels, in_channels, kh, kw)
        mask[:, :, kh // 2, kw // 2:] = 0
        mask[:, :, kh // 2 + 1:] = 0
        mask[:, :, kh // 2, kw // 2] = level_mask(channel_levels(out_channels, depth, gated_out),
                                                  channel_levels(in_channels, depth), mask_type)
        # Derived from the kernel shape, type and depth, so it is rebuilt rather than saved with the weights.
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self):
        return self.weight * self.mask

    def forward(self, x):
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)

    def causal_weight(self):
        """The masked kernel less the taps that are zero at every position: the rows below the centre (with one
        row, the columns right of it). Its window of inputs is all in the past: what a cached sampler keeps."""
        if self.kernel_size[0] == 1:
            return self.masked_weight()[..., : self.kernel_size[1] // 2 + 1]
        return self.masked_weight()[:, :, : self.kernel_size[0] // 2 + 1]

    def causal_matrix(self):
        """causal_weight() as one matrix (out, taps x in) over a window held channels last."""
        return rearrange(self.causal_weight(), "o c u v -> o (u v c)")

    def at_position(self, window, matrix):
        """The output (b, out) at one position, from the inputs of its causal window (b, u, v, in), channels last;
        matrix: causal_matrix(), taken once per sampling."""
        return F.linear(window.flatten(1), matrix, self.bias)

    def over_rows(self, window, weight):
        """The output (b, out, rows, w) on whole rows, from the causal window of their inputs (b, rows + u - 1,
        w + v - 1, in), channels last; weight: causal_weight(), taken once per sampling."""
        return F.conv2d(rearrange(window, "b h w c -> b c h w"), weight, self.bias)


def gate(x):
    """tanh(a) * sigmoid(b) over the two halves of the channels: the gated activation unit."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x):
    """Move a (b, c, h, w) map one row down, so that row i holds what row i - 1 held and row 0 holds zeros."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def as_map(bias):
    """A per-sample vector (b, c) as a map (b, c, 1, 1) that broadcasts over positions; a per-position map
    (b, c, h, w) and a plain 0.0 stay as they are."""
    return bias if isinstance(bias, float) or bias.dim() == 4 else rearrange(bias, "b c -> b c 1 1")


def bias_at(bias, rows, cols):
    """The part of a conditioning bias that positions rows x cols (slices) receive: a per-sample vector (b, c) or
    0.0 as it is, a per-position map (b, c, h, w) cut to (b, c, len(rows), len(cols))."""
    return bias if isinstance(bias, float) or bias.dim() == 2 else bias[:, :, rows, cols]


def bias_of_position(bias, i, j):
    """The conditioning bias of position (i, j) as a vector (b, c) (or 0.0): what the cached samplers add."""
    return bias if isinstance(bias, float) or bias.dim() == 2 else bias[:, :, i, j]


def project(linear, cond):
    """A linear map of the conditioning, per sample (b, d) or per position (b, d, h, w) over the channels."""
    if cond.dim() == 2:
        return linear(cond)
    return rearrange(linear(rearrange(cond, "b d h w -> b h w d")), "b h w c -> b c h w")


class Pointwise(nn.Linear):
    """A 1x1 convolution that also takes single positions (b, c): the cached sampler's layout.

    A 1x1 nn.Conv2d on a (b, c, 1, 1) map is several times slower than the matrix product it is on CPU.
    With depth > 1 it is masked type B over channel levels (level g reads levels <= g); unmasked, it is for
    what comes from rows above (the vertical stack), where every level is known.
    """

    def __init__(self, in_features, out_features, depth=1, gated=False):
        super().__init__(in_features, out_features)
        mask = None
        if depth > 1:
            mask = level_mask(channel_levels(out_features, depth, gated), channel_levels(in_features, depth, gated),
                              "B")
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self):
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x):
        if x.dim() == 2:
            return F.linear(x, self.masked_weight(), self.bias)
        return F.conv2d(x, rearrange(self.masked_weight(), "o i -> o i 1 1"), self.bias)


class GatedBlock(nn.Module):
    """One layer of Gated PixelCNN: a vertical and a horizontal stack, without the blind spot.

    What position (i, j) (marked o) sees through each stack of one block with a 5-wide kernel:

        vertical stack          horizontal stack
        x x x x x
        x x x x x
        x x o x x               x x o . .      (type A hides o as well)

    The vertical stack covers whole rows up to and including row i, so stacking blocks widens it to the right
    as well as to the left: nothing above is left out. Its output is shifted down one row before it joins the
    horizontal stack, so the horizontal stack at row i only gets vertical features of rows < i. The vertical
    stack never receives anything from the horizontal one, which is what keeps the current row out of it.
    The horizontal stack carries the residual connection (type B only: in the first block the input at the
    centre is the token to predict) and gives a skip output; the model sums the skips of all blocks.
    """

    def __init__(self, in_channels, channels, kernel_size, mask_type, cond_dim=0, depth=1):
        super().__init__()
        p = kernel_size // 2
        self.pad = p
        # The vertical stack reaches the horizontal one only from rows above, where every level is known:
        # it needs no level masks.
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (p + 1, kernel_size))  # input padded above and sides
        self.h_conv = MaskedConv2d(in_channels, 2 * channels, (1, kernel_size), mask_type, depth, gated_out=True)
        self.v_to_h = Pointwise(2 * channels, 2 * channels)
        self.h_out = Pointwise(channels, channels, depth)
        self.skip = Pointwise(channels, channels, depth)
        # One projection gives the class bias of both stacks' gate pre-activations (V^T h in the paper).
        self.cond = nn.Linear(cond_dim, 4 * channels, bias=False) if cond_dim else None
        self.residual = mask_type == "B"
        if self.residual and in_channels != channels:
            raise ValueError(f"a type B gated block maps {channels} channels to {channels}, got {in_channels} in")

    def cond_bias(self, cond):
        """(vertical bias, horizontal bias), each (b, 2c) or per position (b, 2c, h, w), or 0.0 without
        conditioning."""
        if self.cond is None or cond is None:
            return 0.0, 0.0
        return project(self.cond, cond).chunk(2, dim=1)

    def vertical_out(self, v_pre, bias):
        return gate(v_pre + bias)

    def horizontal_out(self, h_pre, v_to_h, h_in, bias):
        """Gate the horizontal pre-activation; returns (next horizontal input, skip output)."""
        g = gate(h_pre + v_to_h + bias)
        out = self.h_out(g)
        return (out + h_in if self.residual else out), self.skip(g)

    def forward(self, v, h, cond=None):
        v_bias, h_bias = map(as_map, self.cond_bias(cond))
        p = self.pad
        v_pre = self.v_conv(F.pad(v, (p, p, p, 0)))  # (b, 2c, h, w), row i from rows i-p..i
        h_out, skip = self.horizontal_out(self.h_conv(h), shift_down(self.v_to_h(v_pre)), h, h_bias)
        return self.vertical_out(v_pre, v_bias), h_out, skip

    def row_step(self, v_window, bias):
        """The vertical stack on one row i, from its inputs on rows i - p..i (b, c, p + 1, w + 2p), zeros at the
        sides: (what it gives the horizontal stack of row i + 1, (b, w, 2c) channels last, and its output (b, c,
        1, w), the next block's vertical input). bias: the row's vertical conditioning bias, as a map."""
        v_pre = self.v_conv(v_window)
        return rearrange(self.v_to_h(v_pre), "b c 1 w -> b w c"), self.vertical_out(v_pre, bias)

    def position_step(self, h_window, h_matrix, v_to_h, bias):
        """The horizontal stack at one position (i, j), from its inputs at columns j - p..j of row i (b, p + 1, c),
        channels last, h_matrix (h_conv.causal_matrix()) and what row i - 1's vertical stack gives position j (b,
        2c): (the next block's horizontal input, the skip output), each (b, c)."""
        h_pre = self.h_conv.at_position(h_window, h_matrix)
        return self.horizontal_out(h_pre, v_to_h, h_window[:, -1], bias)


class ResidualBlock(nn.Module):
    """The residual block of the original PixelCNN: 1x1 down to half the channels, a type B masked kxk, 1x1 up.

    Stacked type B masks only reach up-right one column per row climbed, so positions up and to the right
    of the first layer's reach are never seen: the blind spot that the gated block removes.
    """

    def __init__(self, channels, kernel_size, cond_dim=0, depth=1):
        super().__init__()
        inner = channels // 2
        self.reduce = nn.Sequential(nn.ReLU(), Pointwise(channels, inner, depth), nn.ReLU())
        self.conv = MaskedConv2d(inner, inner, kernel_size, "B", depth)
        self.expand = nn.Sequential(nn.ReLU(), Pointwise(inner, channels, depth))
        # The class enters as a per-sample bias on the masked convolution's output.
        self.cond = nn.Linear(cond_dim, inner, bias=False) if cond_dim else None

    def cond_bias(self, cond):
        """(b, inner) or per position (b, inner, h, w), or 0.0 without conditioning."""
        return 0.0 if self.cond is None or cond is None else project(self.cond, cond)

    def step(self, x, convolve, bias):
        """The block on x, a map (b, c, h, w) or one position (b, c), with convolve(y) in the place of the masked
        convolution of its reduced input y: the convolution itself, or a cached sampler's over its window of past
        inputs."""
        return x + self.expand(convolve(self.reduce(x)) + bias)

    def forward(self, x, cond=None):
        return self.step(x, self.conv, as_map(self.cond_bias(cond)))


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention over the grid's positions in raster order: the attention block PixelSNAIL (Chen et
    al. 2018) puts between its causal convolutions, which gives every position the whole past in one layer, the
    convolutions' blind spot included.

    Position t attends over the slots s <= t. Slot s holds the block's input at s and the embedding of token s - 1
    (the token just before s in raster order; a zero vector at s = 0), as PixelSNAIL's keys and values carry the
    input image beside the features. Both depend on tokens before t only (the input at s, through the type-A first
    layer, on tokens before s), so the prior stays causal, and every token before t is read directly through the
    slot after it, however far the masked convolutions reach (a slot of token s itself would be unknown at s and
    leave row ends out of reach at the next row's start).

    Pre-norm and residual, as in a transformer block, with a learned embedding of the raster position added to the
    normalized input (the queries and keys need to know where they are). The output projection starts at zero, so
    a new block is the identity and the convolutional stack trains as it did without it.
    """

    def __init__(self, channels, token_channels, heads, positions):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention needs channels divisible by its heads, got {channels} and {heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.position = nn.Parameter(torch.zeros(positions, channels))
        nn.init.normal_(self.position, std=0.02)
        self.query = nn.Linear(channels, channels)
        self.key_value = nn.Linear(channels + token_channels, 2 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _project(self, sequence, previous, start):
        """(queries, keys, values), each (b, heads, n, d), of positions start..start + n - 1 from the block's input
        there (b, n, c) and the embeddings of the tokens one position before (b, n, e)."""
        z = self.norm(sequence) + self.position[start : start + sequence.shape[1]]
        q = rearrange(self.query(z), "b n (heads d) -> b heads n d", heads=self.heads)
        k, v = rearrange(self.key_value(torch.cat([z, previous], dim=-1)), "b n (two heads d) -> two b heads n d",
                         two=2, heads=self.heads)
        return q, k, v

    def _finish(self, sequence, attended):
        return sequence + self.out(rearrange(attended, "b heads n d -> b n (heads d)"))

    def forward(self, x, tokens):
        """x (b, c, h, w), the embedded tokens (b, e, h, w) -> (b, c, h, w)."""
        sequence = rearrange(x, "b c h w -> b (h w) c")
        previous = F.pad(rearrange(tokens, "b e h w -> b (h w) e"), (0, 0, 1, 0))[:, :-1]
        attended = F.scaled_dot_product_attention(*self._project(sequence, previous, 0), is_causal=True)
        return rearrange(self._finish(sequence, attended), "b (h w) c -> b c h w", h=x.shape[2])

    def new_cache(self, batch_size, like):
        """Empty (keys, values) caches for step()."""
        positions, channels = self.position.shape
        shape = (batch_size, self.heads, positions, channels // self.heads)
        return like.new_zeros(shape), like.new_zeros(shape)

    def step(self, sequence, previous, start, cache):
        """forward() at positions start..start + n - 1 only, (b, n, c) -> (b, n, c), with the embeddings of the
        tokens one position before them (b, n, e), given the keys and values of every position before start in
        cache (filled by the steps before); writes those of these positions."""
        n = sequence.shape[1]
        q, k, v = self._project(sequence, previous, start)
        keys, values = cache
        keys[:, :, start : start + n], values[:, :, start : start + n] = k, v
        slots = torch.arange(start + n, device=q.device)
        visible = slots.unsqueeze(0) <= (start + torch.arange(n, device=q.device)).unsqueeze(1)  # (n, start + n)
        attended = F.scaled_dot_product_attention(q, keys[:, :, : start + n], values[:, :, : start + n],
                                                  attn_mask=visible)
        return self._finish(sequence, attended)
