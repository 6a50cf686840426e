"""What a prior run saves in its config.json, as one dataclass with one load(), and the tokenizer copy it carries."""

from dataclasses import dataclass, field
from pathlib import Path

from prior.model import Prior, PriorConfig, TwoLevelPrior
from store.runs import AVERAGED_WEIGHTS, MODEL_WEIGHTS, SHARED_FILES, TOKENIZER_COPY, RunConfig
from training import TrainConfig

# The copy of its tokenizer run that a prior run carries in TOKENIZER_COPY (about 1 MB): enough to decode its samples
# and report on its tokenizer wherever the prior run is copied, without the maps.
CARRIED_TOKENIZER_FILES = (MODEL_WEIGHTS, AVERAGED_WEIGHTS, *SHARED_FILES)


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

    @property
    def model_class(self):
        """What the run trains: a Prior, or with a top config a TwoLevelPrior."""
        return Prior if self.top is None else TwoLevelPrior

    def build(self):
        """The untrained model the run describes."""
        return Prior(self.model) if self.top is None else TwoLevelPrior(self.top, self.model)


def tokenizer_copy(tokenizer_dir):
    """{path inside a new prior run: file of the tokenizer run} for the copy the prior run carries."""
    return {f"{TOKENIZER_COPY}/{name}": Path(tokenizer_dir) / name for name in CARRIED_TOKENIZER_FILES}

