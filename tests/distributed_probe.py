"""Run a command under torchrun and keep every process's final weights, for tests that compare them.

    python -m torch.distributed.run --nproc_per_node 2 tests/distributed_probe.py pipelines.fit_tokenizer ARGS

Process r writes $PROBE_DIR/rank<r>.safetensors: the state dict (parameters and buffers, the EMA codebook
statistics among them) of the model that the command's train() returned, before the main process saves it.
"""

import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safetensors.torch import save_file  # noqa: E402

from pipelines import cli  # noqa: E402


def main():
    module_name, *argv = sys.argv[1:]
    command = importlib.import_module(module_name)
    train = command.train

    def train_and_keep_weights(*args, **kwargs):
        model, metrics, averaged = train(*args, **kwargs)
        state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
        save_file(state, str(Path(os.environ["PROBE_DIR"]) / f"rank{os.environ.get('RANK', '0')}.safetensors"))
        return model, metrics, averaged

    command.train = train_and_keep_weights
    cli.run(lambda: command.main(argv), command.build_parser)


if __name__ == "__main__":
    main()
