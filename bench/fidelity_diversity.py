"""Fidelity against diversity: a prior's samples at each guidance scale, two sampling seeds each, evaluated with
precision, recall, density and coverage beside the Frechet distance and the classifier's accuracy.

    python -m bench.fidelity_diversity                      # the shipped generator, checkpoints/fashion-mnist
    python -m bench.fidelity_diversity --prior checkpoints/prior/RUN --scales 1 1.5 2 --seeds 0

Each (scale, seed) is `evaluation.evaluate` with 10,000 samples into OUTPUT_ROOT/bench-fidelity-diversity/<scale>-
<seed>/ (a finished report with as many samples is reused); the rows go to rows.json there, and a markdown table
(mean of the seeds, each seed's figure in the FD column) is printed for BENCHMARKS.md.
"""

import argparse
import json
import statistics
from pathlib import Path

from bench.steps import cpu_flags
from evaluation import EvaluationConfig, evaluate
from generation.pretrained import SHIPPED_GENERATOR
from store.runs import write_json

SCALES = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
COLUMNS = ("fd_samples_vs_test", "precision", "recall", "density", "coverage", "classifier_accuracy_on_samples",
           "copies_samples")


def evaluated(prior, scale, seed, args):
    out = Path(args.output_root) / "bench-fidelity-diversity" / f"{scale:g}-{seed}"
    if (out / "report.json").exists():
        previous = json.loads((out / "report.json").read_text())
        if previous["counts"]["samples"] == args.n_samples:
            return previous
    return evaluate(prior, config=EvaluationConfig(n_samples=args.n_samples, seed=seed, guidance_scale=scale),
                    out=out, overwrite=True, output_root=args.output_root)


def print_table(rows, floor):
    print("| guidance | sample FD (seeds) | precision | recall | density | coverage | accuracy on samples | "
          "copies |")
    print("|---|---|---|---|---|---|---|---|")
    for scale in sorted({row["guidance_scale"] for row in rows}):
        same = [row for row in rows if row["guidance_scale"] == scale]
        mean = {key: statistics.fmean(row[key] for row in same) for key in COLUMNS}
        fds = " / ".join(f"{row['fd_samples_vs_test']:.2f}" for row in sorted(same, key=lambda r: r["seed"]))
        print(f"| {scale:g} | {mean['fd_samples_vs_test']:.2f} ({fds}) | {mean['precision']:.3f} | "
              f"{mean['recall']:.3f} | {mean['density']:.3f} | {mean['coverage']:.3f} | "
              f"{mean['classifier_accuracy_on_samples']:.1%} | {mean['copies_samples']:.1%} |")
    print(f"| floor: train vs test | {floor['fd_train_vs_test']:.3f} | {floor['train_precision']:.3f} | "
          f"{floor['train_recall']:.3f} | {floor['train_density']:.3f} | {floor['train_coverage']:.3f} | "
          f"{floor['classifier_test_accuracy']:.1%} (test) | {floor['copies_test']:.1%} (test) |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.fidelity_diversity", description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default=str(SHIPPED_GENERATOR),
                        help="the prior run to sample (default: the shipped generator)")
    parser.add_argument("--scales", type=float, nargs="+", default=SCALES, help="guidance scales")
    parser.add_argument("--seeds", type=int, nargs="+", default=(0, 1), help="sampling seeds (default: 0 1)")
    parser.add_argument("--n-samples", type=int, default=10000, help="samples per evaluation (default: 10000)")
    parser.add_argument("--output-root", default="checkpoints",
                        help="where the reference classifier and the reports go (default: checkpoints)")
    args = parser.parse_args(argv)
    rows_path = Path(args.output_root) / "bench-fidelity-diversity" / "rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    floor = None
    for scale in args.scales:
        for seed in args.seeds:
            report = evaluated(args.prior, scale, seed, args)
            floor = report["figures"]
            row = {"guidance_scale": scale, "seed": seed, "prior": report["runs"]["prior"],
                   **{key: report["figures"][key] for key in COLUMNS},
                   "evaluation_seconds": report["seconds"]["total"], "cpu_flags": cpu_flags()}
            rows = [r for r in rows if (r["guidance_scale"], r["seed"]) != (scale, seed)] + [row]
            write_json(rows_path, rows)
    print_table([r for r in rows if r["guidance_scale"] in args.scales and r["seed"] in args.seeds], floor)


if __name__ == "__main__":
    main()
