"""Vector quantization for the VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Contract shared by every quantizer here:
    forward(z)        -> (z_q, indices, loss, stats)   z, z_q: (b, d, h, w); indices: (b, h, w) int64
    lookup(indices)   -> z_q                           the decoder's input for given token grids

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


def perplexity_of(counts):
    """exp of the entropy of a usage histogram: the effective number of codes in use."""
    probs = counts.float() / counts.sum().clamp(min=1)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    return math.exp(entropy.item())


def usage_stats(counts):
    """Codebook health over a whole split (per-batch figures depend on the batch size)."""
    counts = counts.long().cpu()
    return {"usage_histogram": counts.tolist(), "perplexity": perplexity_of(counts),
            "codes_used": (counts > 0).float().mean().item(), "dead_codes": int((counts == 0).sum())}


class VectorQuantizer(nn.Module):
    def __init__(self, input_dim, codebook_size, code_dim=0, beta=0.25, codebook_update="ema", decay=0.99,
                 epsilon=1e-5, cosine=False, kmeans_init=False, dead_code_threshold=1.0, search_chunk=8192):
        super().__init__()
        if codebook_update not in ("ema", "loss"):
            raise ValueError(f"codebook_update must be 'ema' or 'loss', not {codebook_update!r}")
        self.codebook_size = codebook_size
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
        if codebook_update == "ema":
            # EMA statistics are buffers: the optimizer never touches them and they are saved with the weights.
            self.register_buffer("codebook", codebook)
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # Usage: an EMA of how often each code is picked, in vectors per batch; drives EMA updates and restarts.
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        # Counts updates; seeds the restart sampler so restarts do not depend on global random state.
        self.register_buffer("update_count", torch.tensor(0, dtype=torch.long))

    def codes(self):
        return F.normalize(self.codebook, dim=-1) if self.cosine else self.codebook

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

    def forward(self, z):
        b, d, h, w = z.shape
        # Distances and codebook statistics stay in float32 under mixed precision.
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self.project_in(rearrange(z.float(), "b d h w -> (b h w) d"))
            if self.cosine:
                flat = F.normalize(flat, dim=-1)
            if self.training and not bool(self.initialized):
                self._kmeans_init(flat.detach())
            indices = self.nearest(flat.detach())
            counts = torch.bincount(indices, minlength=self.codebook_size).float()
            restarts = 0
            if self.training:
                restarts = self._update(flat.detach(), indices, counts)
            codes = self.codes()[indices]
            loss = self.beta * F.mse_loss(flat, codes.detach())
            if self.codebook_update == "loss":
                loss = loss + F.mse_loss(codes, flat.detach())
            # Straight-through estimator: the forward pass uses the code, the backward pass copies the gradient.
            quantized = flat + (codes - flat).detach()
            z_q = rearrange(self.project_out(quantized), "(b h w) d -> b d h w", b=b, h=h, w=w)
        stats = {"counts": counts, "perplexity": perplexity_of(counts),
                 "codes_used": (counts > 0).float().mean().item(), "restarts": restarts}
        return z_q.to(z.dtype), rearrange(indices, "(b h w) -> b h w", b=b, h=h, w=w), loss, stats

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
        self.codebook[dead] = fresh
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
