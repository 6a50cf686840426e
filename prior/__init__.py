"""Stage two: an autoregressive PixelCNN prior over token grids, and sampling from it."""

from prior.generate import generate
from prior.model import Prior, PriorConfig, TwoLevelPrior
from prior.run import PriorRun

__all__ = ["Prior", "PriorConfig", "PriorRun", "TwoLevelPrior", "generate"]
