"""Offline measures of a tokenizer, a prior and its samples: a reference classifier's features, their Frechet
distance, and the report pages of pipelines.evaluate."""
