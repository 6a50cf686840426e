"""The tokenizer with and without VQGAN's adversarial loss, at the same training budget: test MSE, reconstruction
Frechet distance (pipelines.evaluate, the tokenizer alone), codes used, training and dump images/s.

    python -m bench.adversarial --size 28 [--only plain,adversarial] [--output-root checkpoints/bench-adversarial]
    python -m bench.adversarial --size 64      # Fashion-MNIST resized to 64x64, an 8x8 grid (--downsample 8)

Each fit and each evaluation runs in a process of its own (clean timings, no shared accelerate state); a run whose
results.json exists is reused. The reference classifier lives in OUTPUT_ROOT/classifiers and is trained once per
image size.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

# (name, fit_tokenizer flags) per image size. The adversarial runs take fewer epochs: the same wall-clock budget as
# the plain run, measured by a one-epoch probe of each step's cost (BENCHMARKS.md).
CONFIGURATIONS = {
    28: [("plain", []),
         ("adversarial", ["--adversarial-weight", "0.8", "--discriminator-channels", "16",
                          "--discriminator-start", "2000", "--epochs", "13"])],
    64: [("plain", ["--image-size", "64", "--downsample", "8", "--epochs", "3"]),
         ("adversarial", ["--image-size", "64", "--downsample", "8", "--epochs", "2", "--adversarial-weight", "0.8",
                          "--discriminator-channels", "16", "--discriminator-start", "300"])],
}


def run(module, *args):
    subprocess.run([sys.executable, "-m", module, *map(str, args)], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, choices=sorted(CONFIGURATIONS), default=28, help="image size")
    parser.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    parser.add_argument("--output-root", default="checkpoints/bench-adversarial",
                        help="runs, the classifier and the reports go here")
    args = parser.parse_args()
    root = Path(args.output_root)
    rows = []
    for name, flags in CONFIGURATIONS[args.size]:
        if args.only and name not in args.only.split(","):
            continue
        run_name = f"{name}-{args.size}"
        run_dir = root / "tokenizer" / run_name
        if not (run_dir / "results.json").exists():
            run("pipelines.fit_tokenizer", *flags, "--output-root", root, "--run-name", run_name)
        report_dir = root / "evaluations" / run_name
        if not (report_dir / "report.json").exists():
            run("pipelines.evaluate", "--tokenizer", run_dir, "--output-root", root, "--out", report_dir, "--overwrite")
        results = json.loads((run_dir / "results.json").read_text())
        figures = json.loads((report_dir / "report.json").read_text())["figures"]
        rows.append((name, " ".join(flags) or "(defaults)", results, figures))
    print("| run | flags | test MSE | reconstruction FD | codes used | training images/s | training time (s) "
          "| dump images/s |\n|---|---|---|---|---|---|---|---|")
    for name, flags, results, figures in rows:
        print(f"| {name} | `{flags}` | {results['test_mse']:.5f} | {figures['fd_reconstructions_vs_test']:.3f} | "
              f"{100 * results['test_codes_used']:.1f}% | {results['train_images_per_s']:.0f} | "
              f"{results['train_seconds_this_session']:.0f} | {results['train_dump_images_per_s']:.0f} |")


if __name__ == "__main__":
    main()
