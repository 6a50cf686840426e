"""Run a command's main() and record its peak memory: GPU (torch.cuda.max_memory_allocated) and resident.

    python -m bench.peak_memory OUT.json pipelines.fit_tokenizer [ARGS...]
    accelerate launch --num_processes 1 -m bench.peak_memory OUT.json pipelines.fit_prior [ARGS...]

The command's errors end it as `python -m` would (pipelines.cli.run); OUT.json is written by the main process
(RANK 0) only when the command succeeds.
"""

import importlib
import json
import os
import resource
import sys

import torch

from pipelines import cli


def main():
    out, module_name, *argv = sys.argv[1:]
    command = importlib.import_module(module_name)
    cli.run(lambda: command.main(argv), command.build_parser)
    if os.environ.get("RANK", "0") == "0":
        peak = {"gpu_max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available()
                else None, "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        with open(out, "w") as f:
            json.dump(peak, f)


if __name__ == "__main__":
    main()
