"""What a prior run saves in its config.json, as one dataclass with one load(), and loading the run's model."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from prior.model import Prior, PriorConfig
from store.runs import config_from_dict, load_run_model, read_json
from training import TrainConfig

# A run that keeps an exponential moving average of its weights writes it here, beside model.safetensors.
AVERAGED_WEIGHTS = "model_ema.safetensors"
# The copy of its tokenizer (config and weights) that a prior run carries, so that it samples wherever it is copied.
TOKENIZER_COPY = "tokenizer"


@dataclass
class TokenizerReference:
    run: str  # the tokenizer run's absolute path when the prior was trained: where its maps were read
    weights_sha256: str  # of the weights that made those maps; a tokenizer with other weights is refused


@dataclass
class PriorRun:
    model: PriorConfig
    # Only the model is needed to load and sample a prior: a config.json written by hand may leave out the rest
    # (and then names no tokenizer to decode its grids).
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenizer: TokenizerReference | None = None
    label_dropout: float = 0.0  # the fraction of training steps on "no label" (classifier-free guidance)
    eval_batch_size: int = 1000  # the sums of test bits differ in the last digits with it
    # The label encoding travels with the run: class i means class_names[i] after any reload.
    class_names: list | None = None
    # How often each class occurs in training: a sampler told no class draws them in this mix.
    class_counts: list | None = None

    @classmethod
    def load(cls, run_dir):
        """The config.json of a prior run; a missing, unreadable or foreign one is a one-line ValueError."""
        path = Path(run_dir) / "config.json"
        return config_from_dict(cls, read_json(path), path, "prior")

    def to_dict(self):
        return dataclasses.asdict(self)


def weights_file(run_dir, weights=None):
    """The weights file that sampling reads: the averaged weights when the run kept them, else the raw ones;
    weights names the file to force one."""
    if weights is not None:
        return weights
    return AVERAGED_WEIGHTS if (Path(run_dir) / AVERAGED_WEIGHTS).exists() else "model.safetensors"


def load(run_dir, device="cpu", weights=None):
    """(Prior in eval mode, its PriorRun) from a prior run directory, with the weights weights_file() picks."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    run = PriorRun.load(run_dir)
    _, model = load_run_model(run_dir, lambda _: Prior(run.model), weights_file(run_dir, weights))
    return model.to(device), run
