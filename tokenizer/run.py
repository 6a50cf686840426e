"""What a tokenizer run saves in its config.json, as one dataclass with one load()."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from store.images import DataConfig
from store.runs import config_from_dict, read_json
from tokenizer.model import TokenizerConfig
from training import TrainConfig

# Images per batch when the maps are dumped. Encoding in batches of another size can flip the token of a near-tie,
# so a run keeps the size it was started with.
DUMP_BATCH_SIZE = 1000


@dataclass
class TokenizerRun:
    model: TokenizerConfig
    # Only the model is needed to load a tokenizer: a config.json written by hand may leave out the rest.
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dump_batch_size: int = DUMP_BATCH_SIZE

    @classmethod
    def load(cls, run_dir):
        """The config.json of a tokenizer run; a missing, unreadable or foreign one is a one-line ValueError."""
        path = Path(run_dir) / "config.json"
        return config_from_dict(cls, read_json(path), path, "tokenizer")

    def to_dict(self):
        return dataclasses.asdict(self)
