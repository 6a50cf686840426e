"""Stage one: the VQ-VAE tokenizer (images <-> grids of codebook indices)."""

from tokenizer.model import TokenizerConfig, VQVAE
from tokenizer.run import TokenizerRun
from tokenizer.tokenizer import Tokenizer, psnr

__all__ = ["Tokenizer", "TokenizerConfig", "TokenizerRun", "VQVAE", "psnr"]
