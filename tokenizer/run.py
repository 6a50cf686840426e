"""What a tokenizer run saves in its config.json, as one dataclass with one load()."""

from dataclasses import dataclass, field

from store.images import DataConfig
from store.runs import RunConfig
from tokenizer.losses import TokenizerLossConfig
from tokenizer.model import TokenizerConfig
from training import TrainConfig

# Images per batch when the maps are dumped. Encoding in batches of another size can flip the token of a near-tie,
# so a run keeps the size it was started with.
DUMP_BATCH_SIZE = 1000


@dataclass
class TokenizerRun(RunConfig):
    kind = "tokenizer"
    model: TokenizerConfig
    # Only the model is needed to load a tokenizer: a config.json written by hand may leave out the rest.
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dump_batch_size: int = DUMP_BATCH_SIZE
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
