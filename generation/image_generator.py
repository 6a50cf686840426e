"""A prior run and the tokenizer it was trained for, as one image generator: load a prior run, sample images.

A prior run is a complete generator on its own: it carries a copy of its tokenizer's config and weights
(RUN/tokenizer/), so a prior run folder copied anywhere still samples. Runs made before it carried one find the
tokenizer run by the path they recorded. Either way the tokenizer's weights must be those whose maps the prior was trained on (SHA-256).
"""

from pathlib import Path

import torch
from tqdm.auto import tqdm

import prior
from prior.run import TOKENIZER_COPY
from prior.sampling import resolve_labels, settings_for
from tokenizer import Tokenizer


def load_tokenizer_of(prior_dir, run, device="cpu"):
    """The tokenizer a prior run (directory, PriorRun) was trained for: its own copy when it carries one, else the
    tokenizer run at the recorded path; refused in one line when missing or of other weights."""
    prior_dir = Path(prior_dir)
    if run.tokenizer is None:
        raise ValueError(f"{prior_dir / 'config.json'} does not name the tokenizer it was trained for")
    carried = prior_dir / TOKENIZER_COPY
    tokenizer_dir = carried if (carried / "model.safetensors").exists() else Path(run.tokenizer.run)
    if not (tokenizer_dir / "model.safetensors").exists():
        raise ValueError(f"the tokenizer this prior was trained for, {tokenizer_dir}, is missing")
    tokenizer = Tokenizer.load(tokenizer_dir, device=device)
    if tokenizer.weights_sha256 != run.tokenizer.weights_sha256:
        raise ValueError(f"the tokenizer weights in {tokenizer_dir} changed since the prior in {prior_dir} was "
                         "trained on its maps (SHA-256 differs)")
    if (tokenizer.codebook_size, tokenizer.token_shape) != (run.model.codebook_size, run.model.token_shape):
        raise ValueError(f"prior {prior_dir} and tokenizer {tokenizer_dir} disagree on codebook or grid size")
    if tokenizer.hierarchy != (1 if run.top is None else 2):
        raise ValueError(f"prior {prior_dir} models {1 if run.top is None else 2} level(s) of codes, tokenizer "
                         f"{tokenizer_dir} makes {tokenizer.hierarchy}")
    return tokenizer


class ProgressBar:
    """A progress(done, total) callback for prior.generate, shown as a tqdm bar that opens at the first position
    (so that a bad argument's error is the only thing printed); close() when done."""

    def __init__(self, **tqdm_options):
        self.options, self.bar = tqdm_options, None

    def __call__(self, done, total):
        if self.bar is None:
            self.bar = tqdm(total=total, **self.options)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class ImageGenerator:
    """A trained prior and its tokenizer: sample(n) -> (images (n, c, H, W) in [0, 1], tokens (n, h, w[, depth]));
    for a two-level (VQ-VAE-2) run, tokens is the pair (top, bottom)."""

    def __init__(self, model, tokenizer, run, run_dir, weights):
        self.model, self.tokenizer, self.run = model, tokenizer, run
        self.run_dir, self.weights = Path(run_dir), weights  # weights: the prior's weights file in use

    @classmethod
    def load(cls, prior_dir, device="cpu", weights=None):
        """The prior (its averaged weights if kept, or the weights file named) and the tokenizer it was trained
        for; a missing or changed tokenizer is a one-line error."""
        model, run = prior.load(prior_dir, device, weights)
        return cls(model, load_tokenizer_of(prior_dir, run, device), run, prior_dir,
                   prior.run.weights_file(prior_dir, weights))

    @property
    def device(self):
        return self.tokenizer.device

    def request(self, n, label=None, *, temperature=None, top_k=None, top_p=None, guidance_scale=None):
        """(labels (n,) or None, generate()'s settings) for a user's request: label None is the training split's
        class mix for a conditional prior, "none" its no-label draw; settings left None take SamplingConfig's."""
        labels = resolve_labels(label, n, self.run.class_names, self.run.class_counts)
        settings = settings_for(labels, temperature=temperature, top_k=top_k, top_p=top_p,
                                guidance_scale=guidance_scale)
        return labels, settings

    def sample_tokens(self, n, label=None, *, seed=0, batch_size=64, progress=None, temperature=None, top_k=None,
                      top_p=None, guidance_scale=None, **kwargs):
        """(tokens (n, h, w[, depth]), the labels asked for (n,) or None, the settings used), drawn as `python -m
        pipelines.sample` draws them. kwargs go to prior.generate: sampler, prefix, keep_rows."""
        labels, settings = self.request(n, label, temperature=temperature, top_k=top_k, top_p=top_p,
                                        guidance_scale=guidance_scale)
        return self.draw(n, labels, settings, seed=seed, batch_size=batch_size, progress=progress, **kwargs), \
            labels, settings

    def draw(self, n, labels, settings, *, seed=0, batch_size=64, progress=None, **kwargs):
        """Tokens of a request() already resolved: prior.generate with a generator seeded with seed."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return prior.generate(self.model, n, labels=labels, generator=generator, batch_size=batch_size,
                              progress=progress, **settings, **kwargs)

    def decode(self, tokens, batch_size=500):
        """Images (n, c, H, W) float on the CPU of token grids (or pairs of grids), decoded batch by batch."""
        def rows(start):
            if isinstance(tokens, tuple):
                return tuple(level[start:start + batch_size] for level in tokens)
            return tokens[start:start + batch_size]

        count = len(tokens[0]) if isinstance(tokens, tuple) else len(tokens)
        return torch.cat([self.tokenizer.decode(rows(start)).float().cpu() for start in range(0, count, batch_size)])

    def sample(self, n, label=None, *, seed=0, batch_size=64, **kwargs):
        """(images (n, c, H, W) in [0, 1] on the CPU, tokens (n, h, w[, depth])): sample_tokens, then decode."""
        tokens, _, _ = self.sample_tokens(n, label, seed=seed, batch_size=batch_size, **kwargs)
        return self.decode(tokens, batch_size), tokens
