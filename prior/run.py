"""What a prior run saves in its config.json, as one dataclass with one load(), and loading the run's model."""

from dataclasses import dataclass, field
from pathlib import Path

from prior.model import Prior, PriorConfig, TwoLevelPrior
from store.runs import RunConfig, load_run_model
from training import TrainConfig

# A run that keeps an exponential moving average of its weights writes it here, beside model.safetensors.
AVERAGED_WEIGHTS = "model_ema.safetensors"
# The copy of its tokenizer run that a prior run carries (about 1 MB): enough to decode its samples and report on its
# tokenizer wherever the prior run is copied, without the maps.
TOKENIZER_COPY = "tokenizer"
CARRIED_TOKENIZER_FILES = ("config.json", "model.safetensors", "results.json", "metrics.jsonl", "maps/meta.json")


@dataclass
class TokenizerReference:
    run: str  # the tokenizer run's absolute path when the prior was trained: where its maps were read
    weights_sha256: str  # of the weights that made those maps; a tokenizer with other weights is refused


@dataclass
class PriorRun(RunConfig):
    kind = "prior"
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
    # With a two-level tokenizer: the top prior's config (model is then the bottom prior's, conditioned on the top).
    top: PriorConfig | None = None

    def build(self):
        """The untrained model the run describes: a Prior, or a TwoLevelPrior."""
        return Prior(self.model) if self.top is None else TwoLevelPrior(self.top, self.model)


def tokenizer_copy(tokenizer_dir):
    """{path inside a new prior run: file of the tokenizer run} for the copy the prior run carries."""
    return {f"{TOKENIZER_COPY}/{name}": Path(tokenizer_dir) / name for name in CARRIED_TOKENIZER_FILES}


def weights_file(run_dir, weights=None):
    """The weights file that sampling reads: the averaged weights when the run kept them, else the raw ones;
    weights names the file to force one."""
    if weights is not None:
        return weights
    return AVERAGED_WEIGHTS if (Path(run_dir) / AVERAGED_WEIGHTS).exists() else "model.safetensors"


def load(run_dir, device="cpu", weights=None):
    """(Prior (or TwoLevelPrior) in eval mode, its PriorRun) from a prior run directory, with the weights
    weights_file() picks."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    run = PriorRun.load(run_dir)
    _, model = load_run_model(run_dir, lambda _: run.build(), weights_file(run_dir, weights))
    return model.to(device), run
