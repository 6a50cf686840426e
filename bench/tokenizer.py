"""Stage-one benchmark: fit the default tokenizer on Fashion-MNIST and print the figures BENCHMARKS.md records.

    python -m bench.tokenizer [extra fit_tokenizer flags]

Wall time covers training, evaluation and the dump of both splits, from inside the process (imports excluded).
"""

import json
import sys
import time
from pathlib import Path

from pipelines import cli, fit_tokenizer


def main():
    name = f"bench-tokenizer-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    fit_tokenizer.main(["--run-name", name, *sys.argv[1:]])
    wall = time.perf_counter() - started
    results = json.loads((Path("checkpoints/tokenizer") / name / "results.json").read_text())
    rows = [("run", f"checkpoints/tokenizer/{name}"), ("parameters", f"{results['parameters']:,}"),
            ("test MSE", f"{results['test_mse']:.5f}"), ("test PSNR (dB)", f"{results['test_psnr']:.2f}"),
            ("test perplexity", f"{results['test_perplexity']:.1f}"),
            ("test codes used", f"{100 * results['test_codes_used']:.1f}%"),
            ("train perplexity", f"{results['train_perplexity']:.1f}"),
            ("train codes used", f"{100 * results['train_codes_used']:.1f}%"),
            ("training images/s", f"{results['train_images_per_s']:.0f}"),
            ("training time (s)", f"{results['train_seconds_this_session']:.0f}"),
            ("dump images/s (train split)", f"{results['train_dump_images_per_s']:.0f}"),
            ("wall time, train + dump (s)", f"{wall:.0f}")]
    print_table(rows)


def print_table(rows):
    print("| figure | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    cli.run(main)
