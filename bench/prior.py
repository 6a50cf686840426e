"""Stage-two benchmark: fit a prior on a tokenizer run's maps and print the figures BENCHMARKS.md records.

    python -m bench.prior --tokenizer checkpoints/tokenizer/RUN [extra fit_prior flags]
"""

import json
import sys
import time
from pathlib import Path

from bench.tokenizer import print_table
from pipelines import cli, fit_prior


def main():
    name = f"bench-prior-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    fit_prior.main(["--run-name", name, *sys.argv[1:]])
    wall = time.perf_counter() - started
    run_dir = Path("checkpoints/prior") / name
    config = json.loads((run_dir / "config.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    print_table([("run", str(run_dir)), ("arch", config["model"]["arch"]),
                 ("parameters", f"{results['parameters']:,}"), ("epochs", config["train"]["epochs"]),
                 ("test bits per token", f"{results['test_bits_per_token']:.4f}"),
                 ("test bits per image", f"{results['test_bits_per_image']:.2f}"),
                 ("training grids/s", f"{results['train_grids_per_s']:.0f}"),
                 ("training time (s)", f"{results['train_seconds_this_session']:.0f}"),
                 ("wall time (s)", f"{wall:.0f}")])


if __name__ == "__main__":
    cli.run(main)
