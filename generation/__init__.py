"""A prior run and its tokenizer as one image generator: ImageGenerator.load(prior_run).sample(n)."""

from generation.budget import check_memory
from generation.image_generator import ImageGenerator, ProgressBar, load_tokenizer_of

__all__ = ["ImageGenerator", "ProgressBar", "check_memory", "load_tokenizer_of"]
