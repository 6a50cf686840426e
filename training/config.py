"""What a training run is told (TrainConfig: epochs, batches, learning-rate schedule, seed, precision, tracker) and
the accelerate Accelerator it runs under."""

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs

# torch's generators take seeds of 64 bits; seeds derived from one (per epoch, per batch) wrap around at 2**64.
MAX_SEED = 2**64 - 1
# accelerate's tracker names (accelerate.utils.LoggerType); make_accelerator checks the chosen one's package.
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"
    log_every: int = 50
    checkpoint_every: int = 500
    log_with: str = "none"
    weight_ema_decay: float = 0.0
    # Fields renamed since older config.json files were written: {former name: name now}.
    FORMER_NAMES = {"ema_decay": "weight_ema_decay"}

    def __post_init__(self):
        for name in ("epochs", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be positive, not {self.learning_rate}")
        check_seed(self.seed)
        if not 0 <= self.weight_ema_decay < 1:
            raise ValueError(f"`weight_ema_decay` must lie in [0, 1), not {self.weight_ema_decay}")
        if self.log_with not in ("none", *TRACKERS):
            raise ValueError(f"`log_with` must be none or one of {', '.join(TRACKERS)}, not {self.log_with!r}")
        if self.mixed_precision == "auto":
            self.mixed_precision = "bf16" if computes_in_bf16() else "no"


def learning_rate_at(step, total_steps, config):
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def check_seed(seed, name="seed"):
    """A one-line ValueError for a seed torch's generators cannot take."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`{name}` must be an integer from 0 to 2**64 - 1, not {seed!r}")


def computes_in_bf16():
    """Whether bf16 runs natively here; emulated bf16 on an older CPU would be slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def make_accelerator(config):
    if config.log_with != "none":  # accelerate itself would only warn and drop a tracker it cannot import
        from accelerate.tracking import get_available_trackers

        if config.log_with not in [str(tracker) for tracker in get_available_trackers()]:
            raise ValueError(f"`log_with` {config.log_with} needs its package: pip install {config.log_with}")
    # Without a GPU, accelerate only forms a process group (gloo) under torchrun when told it runs on the CPU.
    # The gated prior's last block has a horizontal output (h_out) that nothing reads, so its weights never get a
    # gradient; DDP must be told, or it stops at the second step waiting for them.
    # accelerate keeps one mixed-precision setting per process and refuses another: a second run in the same
    # process (a test, a notebook, a library caller) clears it first. The process group (PartialState) is kept.
    if AcceleratorState._shared_state.get("_mixed_precision", config.mixed_precision) != config.mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                       log_with=None if config.log_with == "none" else [config.log_with],
                       # accelerate wants a logging folder now; the run folder is decided later, and start_trackers
                       # points the trackers at it before they open.
                       project_dir=None if config.log_with == "none" else ".",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
