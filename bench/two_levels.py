"""VQ-VAE-2 against the flat default: the whole pipeline (tokenizer, prior, 10,000 samples evaluated) with
--hierarchy 2 (or 1, the flat pipeline measured the same way), and the figures BENCHMARKS.md compares.

    python -m bench.two_levels --epochs 8 --prior-epochs 5   # the budget BENCHMARKS.md compares at
    python -m bench.two_levels --hierarchy 1 --name flat     # the flat default, measured the same way
    python -m bench.two_levels [--output-root checkpoints/bench-two-levels] [extra fit_tokenizer flags]

Each stage runs in a process of its own (clean timings); a stage whose output exists is reused. Prints test MSE,
reconstruction and sample Frechet distances, bits per token per level, and the training seconds of both fits.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(module, *args):
    subprocess.run([sys.executable, "-m", module, *map(str, args)], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-root", default="checkpoints/bench-two-levels", help="runs and reports go here")
    parser.add_argument("--name", default="vq2", help="run name of the tokenizer and the prior")
    parser.add_argument("--hierarchy", type=int, choices=[1, 2], default=2, help="levels of codes (default: 2)")
    parser.add_argument("--prior-epochs", type=int, default=None, help="fit_prior --epochs (default: its own)")
    args, tokenizer_flags = parser.parse_known_args()
    root = Path(args.output_root)
    tokenizer_dir, prior_dir = root / "tokenizer" / args.name, root / "prior" / args.name
    if not (tokenizer_dir / "results.json").exists():
        run("pipelines.fit_tokenizer", "--hierarchy", args.hierarchy, *tokenizer_flags, "--output-root", root,
            "--run-name", args.name)
    if not (prior_dir / "results.json").exists():
        epochs = [] if args.prior_epochs is None else ["--epochs", args.prior_epochs]
        run("pipelines.fit_prior", "--tokenizer", tokenizer_dir, *epochs, "--output-root", root, "--run-name",
            args.name)
    report_dir = root / "evaluations" / args.name
    if not (report_dir / "report.json").exists():
        run("pipelines.evaluate", "--prior", prior_dir, "--output-root", root, "--out", report_dir, "--overwrite")
    tokenizer = json.loads((tokenizer_dir / "results.json").read_text())
    prior = json.loads((prior_dir / "results.json").read_text())
    figures = json.loads((report_dir / "report.json").read_text())["figures"]
    two_levels = "test_top_codes_used" in tokenizer
    rows = [("tokenizer parameters", f"{tokenizer['parameters']:,}"),
            ("test MSE", f"{tokenizer['test_mse']:.5f}"),
            ("reconstruction FD", f"{figures['fd_reconstructions_vs_test']:.3f}"),
            ("sample FD", f"{figures['fd_samples_vs_test']:.3f}"),
            ("samples / reconstructions",
             f"{figures['fd_samples_vs_test'] / figures['fd_reconstructions_vs_test']:.2f}x"),
            ("codes used (bottom / top)" if two_levels else "codes used",
             f"{100 * tokenizer['test_codes_used']:.1f}%"
             + (f" / {100 * tokenizer['test_top_codes_used']:.1f}%" if two_levels else "")),
            ("prior parameters", f"{prior['parameters']:,}"),
            ("bits per token (all / top / bottom)" if two_levels else "bits per token",
             f"{prior['test_bits_per_token']:.3f}" + (
                 f" / {prior['test_top_bits_per_token']:.3f} / {prior['test_bottom_bits_per_token']:.3f}"
                 if two_levels else "")),
            ("bits per image", f"{prior['test_bits_per_image']:.1f}"),
            ("tokenizer training (s)", f"{tokenizer['train_seconds_this_session']:.0f}"),
            ("prior training (s)", f"{prior['train_seconds_this_session']:.0f}")]
    print("| figure | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
