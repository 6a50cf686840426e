"""A prior run and its tokenizer as one image generator: ImageGenerator.load(prior_run).sample(n)."""

from generation.image_generator import ImageGenerator, ProgressBar, load_tokenizer_of

__all__ = ["ImageGenerator", "ProgressBar", "load_tokenizer_of"]
