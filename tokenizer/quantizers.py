"""Quantizers for the VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning") and the family
the literature grew from it.

Contract shared by every quantizer here:
    forward(z)        -> (z_q, indices, loss, stats)   z, z_q: (b, d, h, w); indices: (b, h, w) int64, or
                                                        (b, h, w, depth) for the residual quantizer
    lookup(indices)   -> z_q                           the decoder's input for given token grids
    codebook_size, depth                               tokens lie in 0..codebook_size - 1; depth codes a position
    stats["counts"]                                    (depth, codebook_size) usage of this batch

The family:
- VectorQuantizer: nearest code in a codebook (the paper's VQ), with the options below
- ResidualQuantizer: depth codebooks, each quantizing what the ones before left over (Zeghidour et al. 2021,
  SoundStream; Lee et al. 2022, RQ-VAE)
- SimVQ: the codebook as a frozen random basis times one learned linear map, so every code moves at every step
  (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer")
- FiniteScalarQuantizer: each of a few dimensions rounded to a fixed number of levels, no codebook at all
  (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple")
- BinaryQuantizer: the sign of each of log2(K) dimensions, with the hardtanh-clipped straight-through gradient
  (Courbariaux et al. 2016; bits grouped into one token per position)

Gradient estimators through the nearest-code lookup: the straight-through copy, or the rotation trick of
Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation Trick".

Options from the literature that keep the codebook alive:
- EMA codebook updates with Laplace-smoothed cluster sizes (appendix of the VQ-VAE paper; Razavi et al. 2019)
- dead-code restarts from the current batch (Dhariwal et al. 2020, Jukebox)
- a low-dimensional lookup space and l2-normalised codes (Yu et al. 2021, "Vector-quantized Image Modeling
  with Improved VQGAN")
- k-means initialisation of the codebook on the first batch (Zeghidour et al. 2021, SoundStream)
"""

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def _all_reduce_sum(tensor):
    # Data-parallel processes see different batches; summing their statistics keeps one codebook everywhere.
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor):
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(tensor, src=0)
    return tensor


ESTIMATORS = ("ste", "rotation")


def straight_through(e, q):
    """The forward value of q with the gradient of e: the decoder's input gradient is copied to the encoder."""
    return e + (q - e).detach()


def rotation_trick(e, q):
    """The forward value of q; the gradient reaches e through the rotation and scaling that take e onto q.

    e, q: (n, d). R = I - 2 r r^T + 2 q^ e^T with r = (e^ + q^) / |e^ + q^| maps e^ onto q^; treated as a
    constant, so the gradient at e is the gradient at q rotated back, which carries the angle between them.
    """
    e_norm = e.norm(dim=1, keepdim=True).clamp(min=1e-8)
    q_norm = q.norm(dim=1, keepdim=True).clamp(min=1e-8)
    e_hat, q_hat = (e / e_norm).detach(), (q / q_norm).detach()
    r = F.normalize(e_hat + q_hat, dim=1)
    rotated = e - 2 * (e * r).sum(dim=1, keepdim=True) * r + 2 * (e * e_hat).sum(dim=1, keepdim=True) * q_hat
    return rotated * (q_norm / e_norm).detach()


def estimate(e, q, estimator):
    if estimator == "rotation":
        return rotation_trick(e, q)
    return straight_through(e, q)


def perplexity_of(counts):
    """exp of the entropy of a usage histogram: the effective number of codes in use."""
    probs = counts.float() / counts.sum().clamp(min=1)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    return math.exp(entropy.item())


def usage_stats(counts):
    """Codebook health over a whole split (per-batch figures depend on the batch size).

    counts: (codebook_size,) or (depth, codebook_size); with depth > 1 the histogram is one list per level and
    perplexity and codes used are the means over the levels.
    """
    counts = counts.long().cpu().reshape(-1, counts.shape[-1])
    histogram = counts.tolist()
    return {"usage_histogram": histogram[0] if len(histogram) == 1 else histogram,
            "perplexity": sum(perplexity_of(level) for level in counts) / len(counts),
            "codes_used": (counts > 0).float().mean().item(), "dead_codes": int((counts == 0).sum())}


def _batch_stats(counts, restarts=0):
    """counts (depth, K) of one batch -> the stats dict every quantizer returns."""
    return {"counts": counts, "perplexity": sum(perplexity_of(level) for level in counts) / len(counts),
            "codes_used": (counts > 0).float().mean().item(), "restarts": restarts}


class VectorQuantizer(nn.Module):
    depth = 1

    def __init__(self, input_dim, codebook_size, code_dim=0, beta=0.25, codebook_update="ema", decay=0.99,
                 epsilon=1e-5, cosine=False, kmeans_init=False, dead_code_threshold=1.0, search_chunk=8192,
                 estimator="ste"):
        super().__init__()
        if codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', not {codebook_update!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
        self.codebook_size = codebook_size
        self.estimator = estimator
        self.code_dim = code_dim or input_dim
        self.beta = beta
        self.codebook_update = codebook_update
        self.decay = decay
        self.epsilon = epsilon
        self.cosine = cosine
        self.dead_code_threshold = dead_code_threshold
        self.search_chunk = search_chunk
        # A separate lookup space only when asked for: with code_dim == input_dim the straight-through copy
        # hands the decoder's input gradient to the encoder unchanged.
        projected = bool(code_dim) and code_dim != input_dim
        self.project_in = nn.Linear(input_dim, self.code_dim) if projected else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, input_dim) if projected else nn.Identity()

        codebook = torch.randn(codebook_size, self.code_dim)
        if cosine:
            codebook = F.normalize(codebook, dim=-1)
        self._init_codebook(codebook)
        # Usage: an EMA of how often each code is picked, in vectors per batch; drives EMA updates and restarts.
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        # Counts updates; seeds the restart sampler so restarts do not depend on global random state.
        self.register_buffer("update_count", torch.tensor(0, dtype=torch.long))

    def _init_codebook(self, codebook):
        if self.codebook_update == "ema":
            # EMA statistics are buffers: the optimizer never touches them and they are saved with the weights.
            self.register_buffer("codebook", codebook)
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)

    def codes(self):
        return F.normalize(self.codebook, dim=-1) if self.cosine else self.codebook

    def _set_codes(self, rows, values):
        self.codebook[rows] = values

    @torch.no_grad()
    def nearest(self, flat):
        """Index of the nearest code for each row of flat (n, code_dim), in chunks so memory stays bounded."""
        codes = self.codes().float()
        codes_sq = (codes ** 2).sum(dim=1)
        indices = []
        for chunk in flat.float().split(self.search_chunk):
            # |z|^2 - 2 z.e + |e|^2 as one matrix product; |z|^2 is constant per row, so argmin skips it.
            distances = torch.addmm(codes_sq.unsqueeze(0), chunk, codes.t(), alpha=-2.0)
            indices.append(distances.argmin(dim=1))
        return torch.cat(indices)

    def assign(self, flat):
        """flat (n, code_dim) float32 -> (flat as searched, codes (n, code_dim), indices (n,), loss, counts, restarts).

        The codes carry a gradient only towards the codebook (codebook-loss updates); the caller chooses how the
        reconstruction gradient crosses from codes to flat.
        """
        if self.cosine:
            flat = F.normalize(flat, dim=-1)
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        indices = self.nearest(flat.detach())
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        if self.codebook_update == "ema":
            # The batch is quantized with the codebook as it was before this batch's EMA step, as the reference
            # implementations do (Sonnet's VectorQuantizerEMA, vector-quantize-pytorch): the codes a vector gets
            # in training are then the ones the same weights give it at evaluation.
            codes = self.codes()[indices]
            restarts = self._update(flat.detach(), indices, counts) if self.training else 0
        else:
            # Codebook-loss codes are parameters: a restart may rewrite them in place, so they are read after it.
            restarts = self._update(flat.detach(), indices, counts) if self.training else 0
            codes = self.codes()[indices]
        loss = self.beta * F.mse_loss(flat, codes.detach())
        if self.codebook_update == "loss":
            loss = loss + F.mse_loss(codes, flat.detach())
        return flat, codes, indices, loss, counts, restarts

    def forward(self, z):
        b, d, h, w = z.shape
        # Distances and codebook statistics stay in float32 under mixed precision.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self.project_in(rearrange(z.float(), "b d h w -> (b h w) d"))
            flat, codes, indices, loss, counts, restarts = self.assign(flat)
            # The forward pass uses the code; the backward pass copies (or rotates) the gradient onto flat.
            quantized = estimate(flat, codes, self.estimator)
            z_q = rearrange(self.project_out(quantized), "(b h w) d -> b d h w", b=b, h=h, w=w)
        indices = rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w)
        return z_q.to(z.dtype), indices, loss, _batch_stats(counts.unsqueeze(0), restarts)

    def lookup(self, indices):
        b, h, w = indices.shape
        codes = self.project_out(self.codes()[rearrange(indices, "b h w -> (b h w)")])
        return rearrange(codes, "(b h w) d -> b d h w", b=b, h=h, w=w)

    @torch.no_grad()
    def _update(self, flat, indices, counts):
        counts = _all_reduce_sum(counts.clone())
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.codebook_update == "ema":
            batch_sum = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat)
            self.embed_sum.mul_(self.decay).add_(_all_reduce_sum(batch_sum), alpha=1 - self.decay)
            # Laplace smoothing keeps a code that lost its vectors from dividing by zero.
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
            self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self.update_count.add_(1)
        return self._restart_dead_codes(flat)

    @torch.no_grad()
    def _restart_dead_codes(self, flat):
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead == 0 or self.dead_code_threshold <= 0:
            return 0
        # Seeded by the update count, so a resumed run restarts exactly as an uninterrupted one would.
        generator = torch.Generator(device=flat.device).manual_seed(int(self.update_count))
        picks = torch.randint(len(flat), (n_dead,), generator=generator, device=flat.device)
        fresh = _broadcast(flat[picks].contiguous())
        self._set_codes(dead, fresh)
        # A restarted code starts with the threshold's worth of usage, so it gets a few batches to win vectors.
        self.cluster_size[dead] = self.dead_code_threshold
        if self.codebook_update == "ema":
            self.embed_sum[dead] = fresh * self.dead_code_threshold
        return n_dead

    @torch.no_grad()
    def _kmeans_init(self, flat, iterations=10):
        generator = torch.Generator(device=flat.device).manual_seed(0)
        # Rank 0's batch decides, so every process starts from the same codebook.
        flat = _broadcast(flat.contiguous())
        centres = flat[torch.randint(len(flat), (self.codebook_size,), generator=generator, device=flat.device)]
        for _ in range(iterations):
            assign = torch.cdist(flat, centres).argmin(dim=1)
            counts = torch.bincount(assign, minlength=self.codebook_size).float()
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            used = counts > 0
            centres[used] = sums[used] / counts[used].unsqueeze(1)
        if self.cosine:
            centres = F.normalize(centres, dim=-1)
        self.codebook.copy_(centres)
        if self.codebook_update == "ema":
            self.embed_sum.copy_(centres)
        self.initialized.fill_(True)


class SimVQ(VectorQuantizer):
    """The codebook is a frozen random basis (K, d) times one learned linear map (d, d).

    The codebook loss trains the map, and a step on the map moves every code at once, used or not. Updates are
    by loss only (EMA would bypass the map); dead codes are restarted through the basis (see _set_codes).
    """

    def __init__(self, input_dim, codebook_size, code_dim=0, beta=0.25, cosine=False, estimator="ste",
                 dead_code_threshold=1.0, search_chunk=8192):
        super().__init__(input_dim, codebook_size, code_dim=code_dim, beta=beta, codebook_update="loss",
                         cosine=cosine, dead_code_threshold=dead_code_threshold, search_chunk=search_chunk,
                         estimator=estimator)

    def _init_codebook(self, codebook):
        # Codes of norm ~1 (std d^-1/2, as in the paper): with unit variance per dimension (norm ~sqrt(d)) the
        # encoder's small initial outputs all land on the few shortest codes, and the map never spreads them.
        self.register_buffer("basis", codebook * self.code_dim ** -0.5)
        self.transform = nn.Linear(self.code_dim, self.code_dim, bias=False)
        nn.init.eye_(self.transform.weight)

    def codes(self):
        codes = self.transform(self.basis)
        return F.normalize(codes, dim=-1) if self.cosine else codes

    def _set_codes(self, rows, values):
        # A restart redraws the frozen basis rows so that their codes land on the chosen vectors. The map moves
        # every code, but a step only along the basis rows that won vectors: when an untrained encoder's
        # outputs are all alike, two codes win and the other 510 would never move (measured: 0.6% used).
        self.basis[rows] = values @ torch.linalg.pinv(self.transform.weight.t())


class ResidualQuantizer(nn.Module):
    """depth quantizers in a chain: level l quantizes z minus the codes of levels 0..l-1; z_q is their sum.

    Indices gain a trailing depth axis (b, h, w, depth), coarse to fine. Each level is a VectorQuantizer (EMA,
    restarts, k-means options alike) and adds its own commitment loss on the residual it sees; the gradient
    estimator is applied once, between z and the summed codes.
    """

    def __init__(self, input_dim, codebook_size, depth, estimator="ste", **level_options):
        super().__init__()
        if depth < 2:
            raise ValueError(f"a residual quantizer needs depth >= 2, not {depth}")
        if level_options.get("code_dim") or level_options.get("cosine"):
            raise ValueError("the residual quantizer subtracts codes in z's own space: no code_dim, no cosine")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
        self.codebook_size, self.depth, self.estimator = codebook_size, depth, estimator
        self.levels = nn.ModuleList(VectorQuantizer(input_dim, codebook_size, **level_options)
                                    for _ in range(depth))

    def forward(self, z):
        b, d, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = rearrange(z.float(), "b d h w -> (b h w) d")
            residual, total, loss = flat, torch.zeros_like(flat), 0.0
            indices, counts, restarts = [], [], 0
            for level in self.levels:
                _, codes, level_indices, level_loss, level_counts, level_restarts = level.assign(residual)
                residual = residual - codes.detach()
                total = total + codes
                loss = loss + level_loss
                indices.append(level_indices)
                counts.append(level_counts)
                restarts += level_restarts
            z_q = rearrange(estimate(flat, total, self.estimator), "(b h w) d -> b d h w", b=b, h=h, w=w)
        indices = rearrange(torch.stack(indices, dim=-1), "(b h w) l -> b h w l", b=b, h=h, w=w)
        return z_q.to(z.dtype), indices, loss, _batch_stats(torch.stack(counts), restarts)

    def lookup(self, indices):
        b, h, w, depth = indices.shape
        flat = rearrange(indices, "b h w l -> (b h w) l")
        total = sum(level.codes()[flat[:, i]] for i, level in enumerate(self.levels))
        return rearrange(total, "(b h w) d -> b d h w", b=b, h=h, w=w)


class _ProjectedScalarQuantizer(nn.Module):
    """What FSQ and the binary quantizer share: a projection of z to a few dimensions, a per-dimension rounding
    (quantize -> rounded values, digits, the values before rounding), a mixed-radix index over the rounded
    dimensions (digits of `radices`), a projection back, and an optional entropy penalty on code usage."""

    depth = 1

    def __init__(self, input_dim, radices, entropy_weight=0.0, entropy_temperature=0.3):
        super().__init__()
        self.register_buffer("radices", torch.tensor(radices, dtype=torch.long), persistent=False)
        # place[i] = radices[0] * ... * radices[i - 1]: the weight of digit i in the index.
        self.register_buffer("place", torch.cumprod(torch.tensor([1, *radices[:-1]]), 0), persistent=False)
        self.codebook_size = math.prod(radices)
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.project_in = nn.Linear(input_dim, len(radices))
        self.project_out = nn.Linear(len(radices), input_dim)

    def forward(self, z):
        b, d, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self.project_in(rearrange(z.float(), "b d h w -> (b h w) d"))
            values, digits, continuous = self.quantize(flat)
            indices = (digits * self.place).sum(dim=1)
            z_q = rearrange(self.project_out(values), "(b h w) d -> b d h w", b=b, h=h, w=w)
            # No codebook to learn and nothing to commit to: the only loss is the optional entropy penalty.
            loss = (self.entropy_weight * self.entropy_penalty(continuous) if self.entropy_weight and self.training
                    else z.new_zeros((), dtype=torch.float32))
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        return (z_q.to(z.dtype), rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w), loss,
                _batch_stats(counts.unsqueeze(0)))

    def entropy_penalty(self, continuous):
        """Mean entropy of each vector's soft code assignment minus the entropy of the batch's mean assignment.

        The entropy penalty of lookup-free quantization (Yu et al. 2023): the first term makes each vector sit
        near one code, the second spreads the batch over all codes. Neither rounding nor the encoder alone does
        the second: correlated dimensions leave most combinations unused (fsq 8,5,5,5: 14% used, measured).
        """
        # Every few-th vector is enough to estimate both entropies, at a fraction of the (n, K) softmax's cost.
        continuous = continuous[::max(1, len(continuous) // 2048)]
        every_index = torch.arange(self.codebook_size, device=continuous.device).unsqueeze(1)
        codes = self.from_digits(every_index // self.place % self.radices)
        # Distances in units of each dimension's level spacing, so that one temperature suits every level count.
        spacing = (codes.amax(dim=0) - codes.amin(dim=0)) / (self.radices - 1)
        continuous, codes = continuous / spacing, codes / spacing
        # -|x - c|^2 up to a per-row constant, as one matrix product: cdist's backward is ~10x slower.
        logits = (2 * continuous @ codes.t() - (codes ** 2).sum(dim=1)) / self.entropy_temperature
        log_probs = logits.log_softmax(dim=1)
        probs = log_probs.exp()
        per_vector = -(probs * log_probs).sum(dim=1).mean()
        mean_probs = probs.mean(dim=0)
        return per_vector + (mean_probs * mean_probs.clamp_min(1e-12).log()).sum()

    def lookup(self, indices):
        b, h, w = indices.shape
        digits = rearrange(indices, "b h w -> (b h w) 1") // self.place % self.radices
        values = self.from_digits(digits)
        return rearrange(self.project_out(values), "(b h w) d -> b d h w", b=b, h=h, w=w)


class FiniteScalarQuantizer(_ProjectedScalarQuantizer):
    """Each of len(levels) dimensions squashed into a bounded range and rounded to one of levels[i] values.

    The implicit codebook is the grid of all combinations (8,5,5,5: 1000 codes); every point of it is reachable
    and there is no codebook to collapse. Rounding passes the gradient straight through.
    """

    def __init__(self, input_dim, levels, eps=1e-3, **entropy_options):
        if len(levels) < 1 or min(levels) < 2:
            raise ValueError(f"FSQ levels must be integers >= 2, not {levels}")
        super().__init__(input_dim, list(levels), **entropy_options)
        self.eps = eps

    def quantize(self, flat):
        levels = self.radices.to(flat.dtype)
        # Even level counts sit half a step off zero, so the bound is shifted to keep them symmetric.
        half_range = (levels - 1) * (1 + self.eps) / 2
        offset = (self.radices % 2 == 0).to(flat.dtype) * 0.5
        bounded = torch.tanh(flat + torch.atanh(offset / half_range)) * half_range - offset
        rounded = straight_through(bounded, bounded.round())
        half_width = (self.radices // 2).to(flat.dtype)
        digits = (rounded.detach() + half_width).long()
        return rounded / half_width, digits, bounded / half_width

    def from_digits(self, digits):
        half_width = (self.radices // 2).float()
        return (digits.float() - half_width) / half_width


class BinaryQuantizer(_ProjectedScalarQuantizer):
    """log2(K) dimensions, each replaced by its sign; the bits of a position make one token in 0..K-1.

    The gradient is that of hardtanh (1 inside [-1, 1], 0 outside): the straight-through estimator clipped
    where the sign could no longer flip back, as in binarized networks.
    """

    def __init__(self, input_dim, codebook_size, **entropy_options):
        bits = round(math.log2(codebook_size))
        if codebook_size < 2 or 2 ** bits != codebook_size:
            raise ValueError(f"the binary quantizer needs a power-of-two codebook size, not {codebook_size}")
        super().__init__(input_dim, [2] * bits, **entropy_options)

    def quantize(self, flat):
        clipped = F.hardtanh(flat)
        signs = torch.where(flat >= 0, 1.0, -1.0).to(flat.dtype)
        # The entropy penalty sees flat itself: through the clipped values a saturated bit would get no gradient.
        return straight_through(clipped, signs), (signs.detach() > 0).long(), flat

    def from_digits(self, digits):
        return digits.float() * 2 - 1
