"""The learning-rate schedule of the peers bench.peers trains for a number of seconds: the default fits' linear
warm-up over 200 steps and cosine decay to 5% of the peak (training.TrainConfig), with the decay a function of the
training seconds spent out of the budget rather than of steps, so that a run ends on time whatever its speed."""

import math

WARMUP_STEPS, MIN_LR_RATIO = 200, 0.05


def set_learning_rate(optimizer, peak, step, trained, seconds):
    """Set every group's rate for step (counted from 0) after trained of seconds training seconds."""
    warmup = min(1.0, (step + 1) / WARMUP_STEPS)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, trained / seconds)))
    for group in optimizer.param_groups:
        group["lr"] = peak * warmup * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * cosine)
