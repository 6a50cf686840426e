"""Offline measures of a tokenizer, a prior and its samples: a small classifier's features and their Frechet distance."""
