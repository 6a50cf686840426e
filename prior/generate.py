"""Sampling token grids from a Prior in raster order.

Two samplers that give the same grids for the same random numbers:
- 'naive': the whole network on the whole grid once per position, h * w full passes;
- 'cached': the fast generation of Ramachandran et al. 2017, "Fast Generation for Convolutional
  Autoregressive Models". Every layer caches the inputs it has been given so far, and each step runs each
  layer at the new position only, from the window of cached inputs its masked kernel shows: about one full
  pass of work for the whole grid.

Both draw one uniform number per (sample, position, level) before sampling and turn logits into a token by
inverse CDF, so the float noise between a convolution over the grid and one over a cached window (~1e-6 in the
logits) would change a token only if a uniform fell within ~1e-6 of a CDF step.

With depth > 1 levels per position, each position is visited once per level, coarse to fine: the engine is
asked for the position's logits again after each level is written, and the level masks make level g's logits
depend on levels 0..g-1 of the position only. The cached engines redo the position's work per level and move
on (close the row) only once its last level is written, so the cached grids stay those of the naive sampler.

Engines work on grids with the levels last, (b, h, w, depth), and return logits (b, depth, codebook_size).
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from prior.layers import as_map, bias_at, bias_of_position
from prior.model import TwoLevelPrior
from prior.sampling import (ClassLabels, SamplingConfig, check_count, describe_schedule, is_int, resolve_sampling,
                            schedule_values)
from store.index_maps import check_token_range

SAMPLERS = ("naive", "cached")


class _Naive:
    """The reference: the model on the whole grid, unknown positions holding token 0 (the masks ignore them)."""

    def __init__(self, model, tokens, labels, condition, keep_rows):
        self.model, self.tokens, self.labels, self.condition = model, tokens, labels, condition

    def logits(self, i, j):
        return rearrange(self.model(self.tokens, self.labels, self.condition)[:, :, i, j], "b k l -> b l k")

    def write(self, i, j, tokens, complete):
        self.tokens[:, i, j] = tokens


class _CachedGated:
    """Cached state per gated block: the last p + 1 rows of its vertical input, the current row of its
    horizontal input, and the vertical stack's contribution to the current row; the blocks step themselves
    (GatedBlock.row_step, position_step) on these.

    The vertical stack of row i is only needed from row i + 1 on, so it runs a whole row at a time once row i
    is complete; the horizontal stack runs one position at a time, on (b, c) vectors. Rows are cached
    channels last, so that the window a position reads is one contiguous run per sample.
    """

    def __init__(self, model, tokens, labels, condition, keep_rows):
        b, _, width, _ = tokens.shape
        self.model, self.blocks, self.row = model, model.blocks, 0
        cond = model.conditioning(labels, condition, b)
        # (vertical, horizontal) per block: per sample (b, 2c), or per position (b, 2c, h, w) with a condition map.
        self.biases = [block.cond_bias(cond) for block in self.blocks]
        self.h_matrices = [block.h_conv.causal_matrix() for block in self.blocks]
        new = model.embed.weight.new_zeros
        self.v_windows, self.h_rows, self.v_to_h = [], [], []
        for block in self.blocks:
            c_in, c_out, p = block.v_conv.in_channels, block.v_conv.out_channels, block.pad
            self.v_windows.append(new(b, c_in, p + 1, width + 2 * p))  # zeros: the padding above row 0
            self.h_rows.append(new(b, width + p, c_in))
            self.v_to_h.append(new(b, width, c_out))  # zeros: row 0 has no row above
        for i in range(keep_rows):
            self.h_rows[0][:, self.blocks[0].pad:] = model.embed_tokens(tokens[:, i])
            self._end_row()

    def logits(self, i, j):
        out = 0.0
        for n, block in enumerate(self.blocks):
            window = self.h_rows[n][:, j : j + block.pad + 1]  # (b, p + 1, c), position (i, j) last
            h, skip = block.position_step(window, self.h_matrices[n], self.v_to_h[n][:, j],
                                          bias_of_position(self.biases[n][1], i, j))
            out = out + skip
            if n + 1 < len(self.blocks):
                self.h_rows[n + 1][:, self.blocks[n + 1].pad + j] = h
        return rearrange(self.model.head(out), "b (l k) -> b l k", l=self.model.config.depth)

    def write(self, i, j, tokens, complete):
        p = self.blocks[0].pad
        self.h_rows[0][:, p + j] = self.model.embed_tokens(tokens)
        if complete and p + j + 1 == self.h_rows[0].shape[1]:
            self._end_row()

    def _end_row(self):
        v = rearrange(self.h_rows[0][:, self.blocks[0].pad:], "b w d -> b d 1 w")  # the finished row
        for n, block in enumerate(self.blocks):
            p = block.pad
            self.v_windows[n] = torch.cat([self.v_windows[n][:, :, 1:], F.pad(v, (p, p))], dim=2)
            # v_to_h: shifted down, it joins the horizontal stack of the next row.
            self.v_to_h[n], v = block.row_step(self.v_windows[n], as_map(bias_at(
                self.biases[n][0], slice(self.row, self.row + 1), slice(None))))
        self.row += 1


class _CachedPixelCNN:
    """Cached state: the input of every masked convolution over the whole grid, padded above and at the sides,
    channels last so that the window a position reads is a few contiguous runs per sample; the blocks step
    themselves (ResidualBlock.step, CausalSelfAttention.step) with the convolutions run on these windows.

    A masked kxk convolution at (i, j) only reads rows i - p..i, so a window of p + 1 cached rows and the
    kernel's top p + 1 rows give its output at one position, or, with whole rows, at every position of those
    rows at once (used for the rows a completion keeps). pixelsnail's attention blocks keep the keys and values of
    every position so far, and each step attends from the new position(s) over them.
    """

    def __init__(self, model, tokens, labels, condition, keep_rows):
        b, height, width, _ = tokens.shape
        self.model, self.blocks = model, model.blocks
        cond = model.conditioning(labels, condition, b)
        self.biases = [block.cond_bias(cond) for block in self.blocks]
        self.convs = [model.stem] + [block.conv for block in self.blocks]
        self.pads = [conv.kernel_size[0] // 2 for conv in self.convs]
        self.weights = [conv.causal_weight() for conv in self.convs]
        self.matrices = [conv.causal_matrix() for conv in self.convs]
        self.inputs = [model.embed.weight.new_zeros(b, height + p, width + 2 * p, conv.in_channels)
                       for conv, p in zip(self.convs, self.pads)]
        # pixelsnail: the keys and values of every position so far, per attention block.
        self.attention_caches = {n: attention.new_cache(b, model.embed.weight)
                                 for n in range(len(self.blocks)) if (attention := model.attention_after(n))}
        self.width = width
        if keep_rows:
            p = self.pads[0]
            self.inputs[0][:, p : p + keep_rows, p : p + width] = model.embed_tokens(tokens[:, :keep_rows])
            self._run(0, keep_rows, 0, width)

    def _run(self, r0, r1, c0, c1):
        """Body output on rows r0..r1-1 x columns c0..c1-1, all of whose inputs before them are cached:
        a map (b, c, r1 - r0, c1 - c0), or a vector (b, c) when the rectangle is a single position."""
        one = (r1 - r0, c1 - c0) == (1, 1)

        def convolve(n):
            """Masked convolution n (0: the stem, whose input is cached already) on the rectangle: its input y
            there joins the cache, and it runs on the window of cached inputs it reads."""
            def run(y=None):
                conv, p, cache = self.convs[n], self.pads[n], self.inputs[n]
                if y is not None:
                    cache[:, r0 + p : r1 + p, c0 + p : c1 + p] = rearrange(y, "b c -> b 1 1 c" if one
                                                                           else "b c h w -> b h w c")
                window = cache[:, r0 : r1 + p, c0 : c1 + 2 * p]
                return conv.at_position(window, self.matrices[n]) if one else conv.over_rows(window, self.weights[n])
            return run

        x = convolve(0)()
        for n, (block, bias) in enumerate(zip(self.blocks, self.biases)):
            x = block.step(x, convolve(n + 1), bias_of_position(bias, r0, c0) if one
                           else as_map(bias_at(bias, slice(r0, r1), slice(c0, c1))))
            if n in self.attention_caches:
                x = self._attend(n, x, r0, c0, one)
        return x

    def _attend(self, n, x, r0, c0, one):
        """The attention block after residual block n on the rectangle's output x: a single position (b, c), or
        whole rows (b, c, rows, width), the only rectangles _run is given."""
        attention, start = self.model.attention_after(n), r0 * self.width + c0
        sequence = x.unsqueeze(1) if one else rearrange(x, "b c h w -> b (h w) c")
        sequence = attention.step(sequence, self._tokens_before(start, sequence.shape[1]), start,
                                  self.attention_caches[n])
        return sequence.squeeze(1) if one else rearrange(sequence, "b (h w) c -> b c h w", w=self.width)

    def _tokens_before(self, start, n):
        """The embedded tokens at raster positions start - 1..start + n - 2 (b, n, e), zeros before the first: what
        an attention block pairs with positions start..start + n - 1. They are all written by now."""
        p, cache = self.pads[0], self.inputs[0]
        rows = range(max(start - 1, 0) // self.width, (start + n - 2) // self.width + 1)
        known = rearrange(cache[:, p + rows.start : p + rows.stop, p : p + self.width], "b h w e -> b (h w) e")
        first = max(start - 1, 0) - rows.start * self.width
        known = known[:, first : first + n - (start == 0)]
        return F.pad(known, (0, 0, 1, 0)) if start == 0 else known

    def logits(self, i, j):
        return rearrange(self.model.head(self._run(i, i + 1, j, j + 1)), "b (l k) -> b l k",
                         l=self.model.config.depth)

    def write(self, i, j, tokens, complete):
        p = self.pads[0]
        self.inputs[0][:, i + p, j + p] = self.model.embed_tokens(tokens)


def pick_tokens(logits, uniform, temperature, top_k, top_p):
    """Tokens (b,) from logits (b, K) by inverse CDF at one uniform (b,) per row, after the filters."""
    logits = logits.double() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = logits.softmax(dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        ahead = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the likelier tokens
        # The most likely token always stays: its mass ahead is 0 < top_p.
        sorted_probs = sorted_probs.masked_fill(ahead >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    cdf = probs.cumsum(dim=-1)
    # right=True: a uniform of exactly 0 must not land on a leading token of probability 0.
    token = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return token.clamp_(max=logits.shape[-1] - 1)


def _grids(name, value, n, shape):
    """value as (n, *shape) integer token grids (one grid of shape is given to all n), or one ValueError."""
    value = torch.as_tensor(value)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer tokens, got dtype {value.dtype}")
    if value.shape == shape:
        value = value.expand(n, *shape)
    if value.shape != (n, *shape):
        dims = ", ".join(map(str, shape))
        raise ValueError(f"{name} must have shape ({n}, {dims}) or ({dims}), got {tuple(value.shape)}")
    return value


def _checked_labels(labels, n, classes):
    """labels (an int, (n,) ids or ClassLabels) as (n,) class ids of a prior of `classes` classes, or one
    ValueError."""
    if not classes:
        raise ValueError("labels given to an unconditional prior (num_classes = 0)")
    labels = labels[:] if isinstance(labels, ClassLabels) else torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.dim() == 0:
        labels = labels.expand(n)
    if labels.shape != (n,):
        raise ValueError(f"labels must be an int or have shape ({n},), got shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must be class ids in 0..{classes - 1}, got values "
                         f"{labels.min().item()}..{labels.max().item()}")
    return labels


def check_args(model, n, labels, sampling, prefix, keep_rows, sampler, progress, generator, batch_size, condition):
    """generate()'s arguments: raise one ValueError for the first bad one; return labels (n,) or None, prefix
    (n, *token_shape) or None, and condition (n, *condition_shape) or None."""
    config = model.config
    h, k, classes, shape = config.grid_height, config.codebook_size, config.num_classes, config.token_shape
    if sampler not in SAMPLERS:
        raise ValueError(f"`sampler` must be one of {', '.join(SAMPLERS)}; got {sampler!r}")
    check_count(n, batch_size)
    if not isinstance(sampling, SamplingConfig):
        raise ValueError(f"sampling must be a SamplingConfig (prior.sampling) or None, got {type(sampling).__name__}")
    sampling.check(k)
    labels = None if labels is None else _checked_labels(labels, n, classes)
    if _guidance(config, sampling).ne(1).any():
        guidance = describe_schedule(sampling.guidance_scale, sampling.guidance_schedule, sampling.guidance_from)
        if not classes:
            raise ValueError(f"`guidance_scale` must be 1 for an unconditional prior, got {guidance}")
        if labels is None:
            raise ValueError(f"`guidance_scale` {guidance} needs labels to guide towards")
    if not is_int(keep_rows) or not 0 <= keep_rows <= h:
        raise ValueError(f"`keep_rows` must be an integer in 0..{h} (the grid height), got {keep_rows!r}")
    if keep_rows and prefix is None:
        raise ValueError(f"`keep_rows` = {keep_rows} needs a prefix to keep the rows of")
    if prefix is not None:
        prefix = _grids("prefix", prefix, n, shape)
        check_token_range("the prefix's kept rows", prefix[:, :keep_rows], k)
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable progress(done, total) or None, got {progress!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    condition_shape = config.condition_shape
    if condition_shape is None and condition is not None:
        raise ValueError("a condition map given to a prior that is not conditioned on one")
    if condition_shape is not None:
        if condition is None:
            raise ValueError(f"this prior is conditioned on a token map: pass condition of shape ({n}, "
                             f"{', '.join(map(str, condition_shape))})")
        condition = _grids("condition", condition, n, condition_shape)
        check_token_range("the condition maps", condition, config.condition_codebook_size)
    return labels, prefix, condition


def _guidance(config, sampling):
    """The guidance scale at each position of the grid (h * w,), float64."""
    return schedule_values(sampling.guidance_scale, sampling.guidance_schedule, config.grid_height * config.grid_width,
                           sampling.guidance_from)


@torch.no_grad()
def generate(model, n: int, *, labels=None, sampling: SamplingConfig | None = None, prefix=None, keep_rows: int = 0,
             sampler: str = "cached", generator: torch.Generator | None = None, batch_size: int | None = None,
             progress=None, condition: torch.Tensor | None = None) -> torch.Tensor | tuple:
    """Sample n token grids (n, grid_height, grid_width[, depth]) from a Prior, on the model's device: the one
    generation entry point (every sampler, setting and batch size goes through here, and is checked once).

    labels: an int, (n,) class ids in 0..num_classes - 1 or ClassLabels, for a conditional prior; None samples it
        with "no label".
    sampling: how logits become tokens (prior.sampling.SamplingConfig: temperature, top_k, top_p, and the
        classifier-free guidance of Ho & Salimans 2022, logits = uncond + s * (cond - uncond), its scale s one
        number or a schedule along the grid's positions), used as it is; None: the defaults as
        `python -m pipelines.sample` resolves them (resolve_sampling: guidance only where labels are given).
        Filters apply after guidance.
    prefix (n, *token_shape) or token_shape and keep_rows R: the first R rows are copied from prefix and only
        the rest is sampled; prefix rows from R on are not read. Schedules still count positions from the grid's
        start: with the same random numbers, completing a draw's own first rows gives that draw back.
    sampler: 'cached' (fast) or 'naive' (the reference); both give the same grids for the same generator.
    generator: a torch.Generator for the one uniform per (sample, position, level) drawn up front, batch by batch,
        so the grids depend on (generator state, n, batch_size).
    batch_size: grids sampled at once (None: all n).
    progress: called as progress(done_positions, total_positions) after each sampled position, over all batches.
    condition: for a prior conditioned on a token map (VQ-VAE-2's bottom prior), the maps (n, *condition_shape)
        or one map for all n.

    A TwoLevelPrior gives (top grids, bottom grids): the top grids first, then the bottom grids conditioned on
    them, with the same labels and sampling (each grid runs the schedules over its own positions); prefix is then
    a pair (top, bottom) and keep_rows counts bottom rows (the top keeps the rows those cover whole).
    """
    if sampling is None:
        sampling = resolve_sampling(labels)
    if isinstance(model, TwoLevelPrior):
        return _generate_two_levels(model, n, labels=labels, sampling=sampling, prefix=prefix, keep_rows=keep_rows,
                                    sampler=sampler, generator=generator, batch_size=batch_size, progress=progress,
                                    condition=condition)
    labels, prefix, condition = check_args(model, n, labels, sampling, prefix=prefix, keep_rows=keep_rows,
                                            sampler=sampler, progress=progress, generator=generator,
                                            batch_size=batch_size, condition=condition)
    config = model.config
    positions = config.grid_height * config.grid_width
    temperatures = schedule_values(sampling.temperature, sampling.temperature_schedule, positions)
    scales = _guidance(config, sampling)
    batch_size = batch_size or n
    batches = math.ceil(n / batch_size)
    grids = []
    for first, start in enumerate(range(0, n, batch_size)):
        size = min(batch_size, n - start)
        report = batch_progress(progress, first, batches)
        rows = slice(start, start + size)
        grids.append(_generate_batch(
            model, size, None if labels is None else labels[rows], None if prefix is None else prefix[rows],
            keep_rows, temperatures, sampling.top_k, sampling.top_p, scales, sampler, generator, report,
            None if condition is None else condition[rows]))
    return torch.cat(grids)


def batch_progress(progress, batch, batches):
    """The progress callback of batch number `batch` of `batches` alike: its (done, total) within the batch is
    reported as progress(batch * total + done, batches * total), one count over all of them (None: no progress)."""
    if progress is None:
        return None
    return lambda done, total: progress(batch * total + done, batches * total)


def _generate_two_levels(model, n, *, prefix, keep_rows, progress, condition, **arguments):
    if condition is not None:
        raise ValueError("a two-level prior conditions its bottom grids on the top grids it writes: no condition")
    if prefix is not None and (not isinstance(prefix, (tuple, list)) or len(prefix) != 2):
        raise ValueError("a two-level prior completes a pair of prefixes (top, bottom)")
    top_prefix, bottom_prefix = (None, None) if prefix is None else prefix
    top_config, config = model.top.config, model.config
    top_keep = keep_rows * top_config.grid_height // config.grid_height if isinstance(keep_rows, int) else keep_rows
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a callable progress(done, total) or None, got {progress!r}")
    size = arguments["batch_size"] or n
    # (The arguments themselves are checked by each level's generate(); a bad n or batch size stops there.)
    batches = math.ceil(n / size) if is_int(n) and n > 0 and is_int(size) and size > 0 else 0
    top_positions = batches * (top_config.grid_height - top_keep) * top_config.grid_width
    total = top_positions + batches * (config.grid_height - keep_rows) * config.grid_width

    def report(offset):
        return None if progress is None else (lambda done, _: progress(offset + done, total))

    top = generate(model.top, n, prefix=top_prefix, keep_rows=top_keep, progress=report(0), **arguments)
    bottom = generate(model.bottom, n, prefix=bottom_prefix, keep_rows=keep_rows, progress=report(top_positions),
                      condition=top, **arguments)
    return top, bottom


def _generate_batch(model, n, labels, prefix, keep_rows, temperatures, top_k, top_p, scales, sampler, generator,
                    progress, condition):
    """One batch of generate(), its arguments already checked; temperatures and scales: the value at each position
    (h * w,); progress(done, total positions of this batch)."""
    config = model.config
    h, w, depth = config.grid_height, config.grid_width, config.depth
    device = model.embed.weight.device
    # Drawn before anything else so that both samplers, and every keep_rows, use the same numbers.
    uniforms = torch.rand(n, h, w, depth, generator=generator, dtype=torch.float64,
                          device=generator.device if generator is not None else device).to(device)
    tokens = torch.zeros(n, h, w, depth, dtype=torch.long, device=device)
    if keep_rows:
        tokens[:, :keep_rows] = prefix[:, :keep_rows].reshape(n, keep_rows, w, depth).to(device)
    # Guided where any position is: the "no label" half must then run from the start, to keep its cache whole.
    guided = bool(scales.ne(1).any())
    if labels is not None:
        labels = labels.to(device)
    if condition is not None:
        condition = condition.to(device)
    if guided:  # one batch: the conditional half, then the "no label" half (the condition map kept in both)
        labels = torch.cat([labels, torch.full_like(labels, config.num_classes)])
        condition = None if condition is None else condition.repeat(2, 1, 1)
    engine = {"naive": _Naive, "cached": _CachedGated if config.arch == "gated" else _CachedPixelCNN}[sampler]
    was_training = model.training
    model.eval()
    try:
        state = engine(model, tokens.repeat(2, 1, 1, 1) if guided else tokens.clone(), labels, condition, keep_rows)
        total = (h - keep_rows) * w
        for done in range(total):
            position = keep_rows * w + done  # counted from the grid's start, as the schedules are
            i, j = divmod(position, w)
            scale, temperature = scales[position].item(), temperatures[position].item()
            for level in range(depth):
                logits = state.logits(i, j)[:, level].double()  # (b, K)
                if guided:
                    cond, uncond = logits.chunk(2)
                    # At scale 1 the conditional logits as they are: a position left unguided is drawn exactly as
                    # an unguided sampler draws it.
                    logits = cond if scale == 1 else uncond + scale * (cond - uncond)
                tokens[:, i, j, level] = pick_tokens(logits, uniforms[:, i, j, level], temperature, top_k, top_p)
                state.write(i, j, tokens[:, i, j].repeat(2, 1) if guided else tokens[:, i, j], level == depth - 1)
            if progress is not None:
                progress(done + 1, total)
    finally:
        model.train(was_training)
    return tokens if depth > 1 else tokens.squeeze(-1)
