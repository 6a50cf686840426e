"""Stage one as a library: Tokenizer.load(run_dir), encode(images) -> tokens, decode(tokens) -> images."""

from pathlib import Path

import torch

from pipelines.runs import file_sha256, load_state_strict, read_model_files
from tokenizer.model import TokenizerConfig, VQVAE

__all__ = ["Tokenizer", "TokenizerConfig", "VQVAE"]


class Tokenizer:
    """A trained VQ-VAE: images (b, c, H, W) in [0, 1] <-> token grids (b, h, w) of ints in [0, codebook_size),
    (b, h, w, depth) for a residual quantizer."""

    def __init__(self, model, weights_sha256=None, run_dir=None):
        self.model = model.eval()
        self.config = model.config
        self.weights_sha256 = weights_sha256
        self.run_dir = Path(run_dir) if run_dir else None

    @classmethod
    def load(cls, run_dir, device="cpu"):
        run_dir = Path(run_dir)
        config, state = read_model_files(run_dir)
        try:
            model_config = TokenizerConfig(**config["model"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"{run_dir / 'config.json'} is not a tokenizer config ({error})") from None
        model = VQVAE(model_config)
        load_state_strict(model, state, run_dir / "model.safetensors")
        return cls(model.to(device), file_sha256(run_dir / "model.safetensors"), run_dir)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def codebook_size(self):
        return self.config.codebook_size

    @property
    def grid_shape(self):
        return (self.config.grid_size, self.config.grid_size)

    @property
    def token_shape(self):
        """The shape of one image's tokens: (h, w), or (h, w, depth) for a residual quantizer."""
        depth = self.config.token_depth
        return self.grid_shape + ((depth,) if depth > 1 else ())

    def encode(self, images):
        """images: float (b, c, H, W) in [0, 1], or uint8 in [0, 255] -> LongTensor (b, *token_shape)."""
        if not torch.is_tensor(images):
            raise ValueError(f"images must be a torch tensor, not {type(images).__name__}")
        if images.dtype == torch.uint8:
            images = images.float() / 255
        elif not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1] or uint8, not {images.dtype}")
        expected = (self.config.image_channels, self.config.image_size, self.config.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (batch, {', '.join(map(str, expected))}), "
                             f"not {tuple(images.shape)}")
        with torch.no_grad():
            return self.model.encode(images.to(self.device, torch.float32))

    def decode(self, tokens):
        """tokens: integer (b, *token_shape) in [0, codebook_size) -> float images (b, c, H, W) in [0, 1]."""
        if not torch.is_tensor(tokens):
            raise ValueError(f"tokens must be a torch tensor, not {type(tokens).__name__}")
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor, not {tokens.dtype}")
        if tokens.ndim != 1 + len(self.token_shape) or tuple(tokens.shape[1:]) != self.token_shape:
            raise ValueError(f"tokens must have shape (batch, {', '.join(map(str, self.token_shape))}), "
                             f"not {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(f"tokens must lie in 0..{self.codebook_size - 1}, "
                             f"found {int(tokens.min())}..{int(tokens.max())}")
        with torch.no_grad():
            return self.model.decode(tokens.to(self.device, torch.long))
