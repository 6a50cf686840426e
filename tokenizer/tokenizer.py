"""Stage one as a library: Tokenizer.load(run_dir), encode(images) -> tokens, decode(tokens) -> images, and the
facts about a tokenizer that its maps and reports carry."""

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from store.hub import run_folder
from store.index_maps import MapsMeta, check_token_range
from store.runs import file_sha256, load_run_model, tokenizer_run_of, weights_file
from tokenizer.model import build_tokenizer_model
from tokenizer.run import TokenizerRun


def psnr(mse):
    """Peak signal-to-noise ratio in dB of a mean squared error in [0, 1] units."""
    return 10 * math.log10(1 / max(mse, 1e-12))


class Tokenizer:
    """A trained VQ-VAE: images (b, c, H, W) in [0, 1] <-> token grids (b, h, w) of ints in [0, codebook_size),
    (b, h, w, depth) for a residual quantizer. A two-level tokenizer (VQ-VAE-2) gives and takes a pair of grids,
    (top (b, h', w'), bottom (b, h, w)), in that order."""

    def __init__(self, model, weights_sha256=None, run_dir=None, run=None):
        self.model = model.eval()
        self.config = model.config
        self.weights_sha256 = weights_sha256
        self.run_dir = Path(run_dir) if run_dir else None
        self.run = run  # the TokenizerRun it was loaded from (data set, training), or None

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu", weights: str | None = None) -> "Tokenizer":
        """The tokenizer of a run directory, with its averaged weights when it kept them (or the weights file
        named); weights_sha256 is that file's."""
        run_dir = Path(run_dir)
        run = TokenizerRun.load(run_dir)
        weights = weights_file(run_dir, weights)
        _, model = load_run_model(run_dir, lambda _: build_tokenizer_model(run.model), weights)
        return cls(model.to(device), file_sha256(run_dir / weights), run_dir, run)

    @classmethod
    def from_pretrained(cls, name: str | Path, device: str | torch.device = "cpu",
                        weights: str | None = None) -> "Tokenizer":
        """The tokenizer of a run named by a folder or a Hugging Face Hub repository id ("owner/name"): a tokenizer
        run, or a prior run (a generator), whose carried tokenizer is taken."""
        return cls.load(tokenizer_run_of(run_folder(name)), device, weights)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def codebook_size(self):
        return self.config.codebook_size

    @property
    def image_shape(self):
        """The shape of one image it takes: (channels, size, size)."""
        return (self.config.image_channels, self.config.image_size, self.config.image_size)

    @property
    def grid_shape(self):
        return (self.config.grid_size, self.config.grid_size)

    @property
    def token_shape(self):
        """The shape of one image's tokens: (h, w), or (h, w, depth) for a residual quantizer; with two levels,
        the bottom level's."""
        depth = self.config.token_depth
        return self.grid_shape + ((depth,) if depth > 1 else ())

    @property
    def hierarchy(self):
        return self.config.hierarchy

    @property
    def level_shapes(self):
        """{level name: the shape of one image's tokens at that level}: {"bottom": token_shape}, and "top" first
        with two levels."""
        if self.hierarchy == 1:
            return {"bottom": self.token_shape}
        top = self.config.top_grid_size
        return {"top": (top, top) + self.token_shape[2:], "bottom": self.token_shape}

    def encode(self, images: torch.Tensor) -> torch.Tensor | tuple:
        """images: float (b, c, H, W) in [0, 1], or uint8 in [0, 255] -> LongTensor (b, *token_shape)."""
        if not torch.is_tensor(images):
            raise ValueError(f"images must be a torch tensor, not {type(images).__name__}")
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1] or uint8, not {images.dtype}")
        expected = self.image_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (batch, {', '.join(map(str, expected))}), "
                             f"not {tuple(images.shape)}")
        with torch.no_grad():
            return self.model.encode(images.to(self.device, torch.float32))

    def decode(self, tokens: torch.Tensor | tuple) -> torch.Tensor:
        """tokens: integer (b, *token_shape) in [0, codebook_size), or with two levels the pair (top, bottom)
        -> float images (b, c, H, W) in [0, 1]."""
        if self.hierarchy == 1:
            with torch.no_grad():
                return self.model.decode(self._checked(tokens, self.token_shape, "tokens"))
        if not isinstance(tokens, (tuple, list)) or len(tokens) != 2:
            raise ValueError("a two-level tokenizer decodes a pair of token grids (top, bottom)")
        shapes = self.level_shapes
        top, bottom = (self._checked(t, shapes[name], f"{name} tokens") for t, name in zip(tokens, shapes))
        if len(top) != len(bottom):
            raise ValueError(f"top and bottom tokens of {len(top)} and {len(bottom)} images")
        with torch.no_grad():
            return self.model.decode((top, bottom))

    def _checked(self, tokens, shape, name):
        if not torch.is_tensor(tokens):
            raise ValueError(f"{name} must be a torch tensor, not {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, not {tokens.dtype}")
        if tokens.ndim != 1 + len(shape) or tuple(tokens.shape[1:]) != shape:
            raise ValueError(f"{name} must have shape (batch, {', '.join(map(str, shape))}), not {tuple(tokens.shape)}")
        check_token_range(name, tokens, self.codebook_size)
        return tokens.to(self.device, torch.long)

    def reconstruct(self, images: torch.Tensor) -> tuple:
        """(tokens, reconstructions float (b, c, H, W) in [0, 1], their summed squared error against the images in
        [0, 1] units) of float or uint8 images: reconstruction error is computed here and nowhere else."""
        if torch.is_tensor(images) and images.dtype == torch.uint8:
            images = images.float() / 255
        tokens = self.encode(images)
        reconstructions = self.decode(tokens).float()
        squared_error = F.mse_loss(reconstructions, images.to(reconstructions.device, torch.float32),
                                   reduction="sum").item()
        return tokens, reconstructions, squared_error

    def check_images(self, shape, source):
        """A one-line ValueError when images of shape (c, H, W) from source (a data set's name) do not fit."""
        if tuple(shape) != self.image_shape:
            raise ValueError(f"{source} images are {tuple(shape)}, the tokenizer in {self.run_dir} takes "
                             f"{self.image_shape}")

    def map_metadata(self, dataset, class_names):
        """What meta.json records of the maps this tokenizer makes of a data set (MapsMeta, its splits to come)."""
        two_levels = self.hierarchy == 2
        top = self.config.top_grid_size if two_levels else None
        return MapsMeta(codebook_size=self.codebook_size, grid_height=self.grid_shape[0], grid_width=self.grid_shape[1],
                        weights_sha256=self.weights_sha256, depth=self.config.token_depth, levels=self.hierarchy,
                        top_grid_height=top, top_grid_width=top,
                        top_codebook_size=self.codebook_size if two_levels else None,
                        quantizer=self.config.quantizer, dataset=dataset, class_names=class_names,
                        # the run by its folder's name (the hash identifies it): no folder of this machine in it
                        tokenizer_run=self.run_dir.resolve().name if self.run_dir else None)
