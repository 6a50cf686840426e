"""Offline measures of a tokenizer, a prior and its samples: a reference classifier's features, their Frechet
distance, and the report; evaluate() runs them all (the library behind pipelines.evaluate)."""

from evaluation.evaluator import EvaluationConfig, evaluate

__all__ = ["EvaluationConfig", "evaluate"]
