"""A prior run and the tokenizer it was trained for, as one image generator: load a prior run, sample images.

A prior run is a complete generator on its own: it carries a copy of its tokenizer's config and weights
(RUN/tokenizer/), so a prior run folder copied anywhere still samples. Runs made before it carried one find the
tokenizer run by the path they recorded. Either way the tokenizer's weights must be those whose maps the prior was
trained on (SHA-256).
"""

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from tqdm.auto import tqdm

import prior
from generation.budget import check_memory
from generation.pretrained import export_generator
from prior import PriorRun
from prior.generate import batch_progress
from prior.sampling import SETTINGS, ClassLabels, check_count, resolve_labels, resolve_sampling
from store.hub import run_folder
from store.pictures import as_uint8
from store.runs import MODEL_WEIGHTS, TOKENIZER_COPY, check_output_folder, recorded_path, weights_file
from tokenizer import Tokenizer
from training import MAX_SEED, batches_in_order, check_seed

# Batch k of a draw with seed s uses a generator seeded with s * BATCH_SEED_STRIDE + k (modulo 2**64).
BATCH_SEED_STRIDE = 1_000_003


def load_tokenizer_of(prior_dir, run, device="cpu"):
    """The tokenizer a prior run (directory, PriorRun) was trained for: its own copy when it carries one, else the
    tokenizer run at the recorded path; refused in one line when missing or of other weights."""
    prior_dir = Path(prior_dir)
    if run.tokenizer is None:
        raise ValueError(f"{prior_dir / 'config.json'} does not name the tokenizer it was trained for")
    carried = prior_dir / TOKENIZER_COPY
    tokenizer_dir = carried if (carried / MODEL_WEIGHTS).exists() else recorded_path(prior_dir, run.tokenizer.run)
    if not (tokenizer_dir / MODEL_WEIGHTS).exists():
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


class GeneratorOutput(NamedTuple):
    """What ImageGenerator.sample returns: the images (as output_type asked) and the token grids (a pair of grids,
    top and bottom, for a two-level run); it unpacks as (images, tokens)."""
    images: torch.Tensor | np.ndarray | list
    tokens: torch.Tensor | tuple


OUTPUT_TYPES = ("pt", "np", "pil")


def check_output_type(output_type):
    """One ValueError for an output_type that is not one of OUTPUT_TYPES."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")


def as_output_type(images, output_type):
    """Images (n, c, H, W) float in [0, 1] as output_type asks, in the diffusers convention: "pt" as they are, "np"
    float32 (n, H, W, c) in [0, 1], "pil" a list of PIL images (grey "L" or "RGB", pixels as the PNGs hold them)."""
    check_output_type(output_type)
    if output_type == "pt":
        return images
    if output_type == "np":
        return rearrange(images, "n c h w -> n h w c").numpy()
    pixels = rearrange(as_uint8(images), "n c h w -> n h w c").numpy()  # "pil"
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


class ImageGenerator:
    """A trained prior and its tokenizer: sample(n) -> (images (n, c, H, W) in [0, 1], tokens (n, h, w[, depth]));
    for a two-level (VQ-VAE-2) run, tokens is the pair (top, bottom). from_pretrained / save_pretrained / to(device)
    as in diffusers' pipelines."""

    def __init__(self, model, tokenizer, run, run_dir, weights):
        self.model, self.tokenizer, self.run = model, tokenizer, run
        self.run_dir, self.weights = Path(run_dir), weights  # weights: the prior's weights file in use

    @classmethod
    def load(cls, prior_dir: str | Path, device: str | torch.device = "cpu",
             weights: str | None = None) -> "ImageGenerator":
        """The prior (its averaged weights if kept, or the weights file named) and the tokenizer it was trained
        for; a missing or changed tokenizer is a one-line error."""
        run = PriorRun.load(prior_dir)
        model = run.model_class.load(prior_dir, device, weights)
        return cls(model, load_tokenizer_of(prior_dir, run, device), run, prior_dir, weights_file(prior_dir, weights))

    @classmethod
    def from_pretrained(cls, name: str | Path, device: str | torch.device = "cpu",
                        weights: str | None = None) -> "ImageGenerator":
        """load() of a prior run named by a folder or a Hugging Face Hub repository id ("owner/name[@revision]"),
        fetched into the Hugging Face cache (read from it offline); its weights are checked against the SHA-256 its
        results.json recorded."""
        return cls.load(run_folder(name), device, weights)

    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """A folder from_pretrained loads (and the Hub takes as it is): the prior's configs, the weights in use,
        results, metrics, its tokenizer, and its model card (README.md: the run's own, else one written from its
        files). Written whole or not at all; an existing folder is refused unless overwrite."""
        check_output_folder(folder, overwrite, inputs=[self.run_dir, self.tokenizer.run_dir])
        return export_generator(self.run_dir, folder, overwrite, weights=self.weights, card=True)

    def to(self, device: str | torch.device) -> "ImageGenerator":
        """The prior and the tokenizer moved to device (in place); returns the generator."""
        self.model.to(device)
        self.tokenizer.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.tokenizer.device

    def bytes_per_sample(self):
        """Bytes one drawn sample takes in memory: its tokens (int64, every level) and its image (float32)."""
        tokens = sum(math.prod(shape) for shape in self.tokenizer.level_shapes.values())
        return 8 * tokens + 4 * math.prod(self.tokenizer.image_shape)

    def batch_bytes(self, batch_size):
        """Bytes a batch of batch_size samples takes at its peak, estimated from below from the configs: the cached
        sampler's state (every layer's input over the padded grid, twice over for guidance's no-label half), the
        tokenizer decoder's widest maps, and the samples themselves."""
        prior_bytes = 0
        for config in (self.model.top.config, self.model.bottom.config) if self.run.top is not None \
                else (self.model.config,):
            pad = config.first_kernel_size // 2
            grid = (config.grid_height + pad) * (config.grid_width + 2 * pad)
            prior_bytes += 2 * 4 * grid * config.hidden_channels * config.num_layers
        tokenizer = self.tokenizer.config
        decoder_bytes = 2 * 4 * (tokenizer.image_size // 2) ** 2 * max(tokenizer.widths)
        return batch_size * (prior_bytes + decoder_bytes + self.bytes_per_sample())

    def request(self, n: int, label=None, **settings) -> tuple:
        """(labels (ClassLabels of n) or None, the SamplingConfig generate() takes) for a user's request, resolved
        once here (prior.sampling.resolve_sampling) and passed down whole. label None is the training split's class
        mix for a conditional prior, "none" its no-label draw, a class id or name that class for all n, and a list or
        tensor of n ids or names one class per sample; settings are SamplingConfig's fields (prior.sampling.SETTINGS:
        temperature, guidance_scale and their schedules, ...), those left out or None taking its defaults; an
        unknown one is a ValueError."""
        labels = resolve_labels(label, n, self.run.class_names, self.run.class_counts)
        return labels, resolve_sampling(labels, **settings)

    def completion(self, image, n: int, keep_rows: int | None = None) -> dict:
        """What sample() and draw_batches() take to complete an image n times: {"prefix": its tokens expanded to n
        grids (a pair of levels for two), "keep_rows": the token rows kept (default: half the grid)}. image: (1, c,
        H, W) as the tokenizer takes it (store.images.read_image)."""
        tokens = self.tokenizer.encode(image.to(self.device))
        prefix = tuple(level.expand(n, *level.shape[1:]) for level in tokens) if isinstance(tokens, tuple) \
            else tokens.expand(n, *self.tokenizer.token_shape)
        return {"prefix": prefix, "keep_rows": self.tokenizer.grid_shape[0] // 2 if keep_rows is None else keep_rows}

    def sample_tokens(self, n: int, label=None, *, seed: int | None = None, generator: torch.Generator | None = None,
                      batch_size: int = 64, progress=None, **kwargs) -> tuple:
        """(tokens (n, h, w[, depth]), the labels asked for (ClassLabels) or None, the SamplingConfig used), drawn as
        `python -m pipelines.sample` draws them. seed (default 0) or generator (a torch.Generator the draw's seed is
        taken from, so that its state decides the samples). kwargs: the sampling settings of request(), and what
        goes to prior.generate: sampler, prefix, keep_rows."""
        labels, sampling = self.request(n, label, **{name: kwargs.pop(name) for name in SETTINGS if name in kwargs})
        return self.draw(n, labels, sampling, seed=seed_of(seed, generator), batch_size=batch_size, progress=progress,
                         **kwargs), labels, sampling

    def draw(self, n, labels, sampling, **kwargs):
        """The tokens of a request() already resolved, all n at once: draw_batches' tokens joined (refused in one
        line when n of them, and their images, could not be held)."""
        check_count(n)
        check_memory(2 * n * self.bytes_per_sample(), f"{n} samples held at once",
                     "draw fewer, or take them batch by batch (draw_batches)")
        batches = [tokens for _, tokens, _ in self.draw_batches(n, labels, sampling, **kwargs)]
        if isinstance(batches[0], tuple):
            return tuple(torch.cat(level) for level in zip(*batches))
        return torch.cat(batches)

    def draw_batches(self, n, labels, sampling, *, seed=0, batch_size=64, progress=None, accelerator=None,
                     decode=False, **kwargs):
        """Yield (start, tokens, images or None) for each batch of a request() already resolved, in order, so that a
        caller can write them as they come and hold one batch. Batch k is prior.generate with a generator seeded
        from (seed, k) alone, so that any batch can be drawn on any process (accelerator: several share the
        batches, every one receives all of them) and the grids depend on (seed, n, batch_size) only; decode: the
        batch's images (b, c, H, W) float on the CPU too. kwargs go to prior.generate: sampler, prefix (sliced per
        batch), keep_rows."""
        check_count(n, batch_size)
        check_seed(seed)
        prefix = kwargs.pop("prefix", None)
        mine = math.ceil(math.ceil(n / batch_size) / (accelerator.num_processes if accelerator else 1))
        done = []  # this process's batches finished so far, for one progress count over all of them
        grid_ndim = len(self.model.config.token_shape)

        def rows(value, start, stop, ndim):
            """The batch's rows of per-sample labels (ndim 1) or prefixes (ndim 1 + grid's); a pair of levels per
            level; one label or one grid for all as it is."""
            if isinstance(value, (tuple, list)):
                return tuple(rows(v, start, stop, ndim) for v in value)
            per_sample = isinstance(value, ClassLabels) or (torch.is_tensor(value) and value.ndim == ndim)
            return value[start:stop] if per_sample else value

        def work(start, stop):
            batch_seed = (seed * BATCH_SEED_STRIDE + start // batch_size) % (MAX_SEED + 1)
            generator = torch.Generator(device=self.device).manual_seed(batch_seed)
            tokens = prior.generate(self.model, stop - start, labels=rows(labels, start, stop, 1), generator=generator,
                                    progress=batch_progress(progress, len(done), mine),
                                    prefix=rows(prefix, start, stop, 1 + grid_ndim), sampling=sampling, **kwargs)
            done.append(start)
            images = None
            if decode:  # in float32, as decode() does, whatever autocast the caller samples under
                with torch.autocast(self.device.type, enabled=False):
                    images = self.tokenizer.decode(tokens).float().cpu()
            return (tuple(t.cpu() for t in tokens) if isinstance(tokens, tuple) else tokens.cpu()), images

        for start, (tokens, images) in batches_in_order(accelerator, n, batch_size, work):
            yield start, tokens, images

    def decode(self, tokens, batch_size=500, accelerator=None):
        """Images (n, c, H, W) float on the CPU of token grids (or pairs of grids), decoded batch by batch (shared
        across the processes of accelerator, every one receiving all the images)."""
        def work(start, stop):
            rows = tuple(level[start:stop] for level in tokens) if isinstance(tokens, tuple) else tokens[start:stop]
            return self.tokenizer.decode(rows).float().cpu()

        count = len(tokens[0]) if isinstance(tokens, tuple) else len(tokens)
        return torch.cat([images for _, images in batches_in_order(accelerator, count, batch_size, work)])

    def sample(self, n: int, label=None, *, seed: int | None = None, generator: torch.Generator | None = None,
               batch_size: int = 64, output_type: str = "pt", **kwargs) -> GeneratorOutput:
        """GeneratorOutput(images, tokens): sample_tokens, then decode. images: (n, c, H, W) float in [0, 1] on the
        CPU ("pt"), float32 (n, H, W, c) ("np") or a list of PIL images ("pil"); label: see request(); seed or
        generator: see sample_tokens; kwargs: the sampling settings (guidance_scale=(1, 3), ...) and sampler,
        prefix, keep_rows."""
        check_output_type(output_type)  # before minutes of sampling
        tokens, _, _ = self.sample_tokens(n, label, seed=seed, generator=generator, batch_size=batch_size, **kwargs)
        return GeneratorOutput(as_output_type(self.decode(tokens, batch_size), output_type), tokens)


def seed_of(seed, generator):
    """The seed a draw takes: seed, or one drawn from generator (a torch.Generator), or 0; not both."""
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is None:
        return 0 if seed is None else seed
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device, dtype=torch.int64))
