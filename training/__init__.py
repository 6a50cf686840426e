"""The one training loop both stages use (accelerate places the work; resume, progress, metrics, weight average)."""

from training.loop import (EpochPermutation, TrainConfig, WeightAverage, check_one_batch, decided_by_main,
                           learning_rate_at, make_accelerator, mean_items_per_s, train)

__all__ = ["EpochPermutation", "TrainConfig", "WeightAverage", "check_one_batch", "decided_by_main",
           "learning_rate_at", "make_accelerator", "mean_items_per_s", "train"]
