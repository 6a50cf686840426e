"""The one training loop both stages use (accelerate places the work; resume, progress, metrics, weight average),
and batch work shared across processes in order (shards)."""

from training.config import MAX_SEED, TrainConfig, check_seed, learning_rate_at, make_accelerator
from training.loop import EpochPermutation, check_one_batch, train
from training.metrics import mean_items_per_s
from training.state import WeightAverage
from training.runs import decided_by_main, finish_run, open_run_dir
from training.shards import batches_in_order

__all__ = ["MAX_SEED", "EpochPermutation", "batches_in_order", "TrainConfig", "WeightAverage", "check_one_batch",
           "check_seed", "decided_by_main", "finish_run", "learning_rate_at", "make_accelerator", "mean_items_per_s",
           "open_run_dir", "train"]
