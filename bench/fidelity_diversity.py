"""Fidelity against diversity: a prior's samples under each sampler setting (a guidance scale, a guidance or
temperature schedule), two sampling seeds each, on two yardsticks: the Frechet distance, precision, recall, density,
coverage and the classifier's accuracy in the features of the reference classifier, and of a second classifier
trained apart (another width, feature size and seed), so that a setting is not chosen for one network's features.

    python -m bench.fidelity_diversity                      # the shipped generator, checkpoints/fashion-mnist
    python -m bench.fidelity_diversity --scales 1 1.5 2 --seeds 0 --yardsticks reference
    python -m bench.fidelity_diversity --samplers "--guidance-scale 1:2.5 --guidance-schedule cosine"

A sampler is written as `sample`'s own sampling flags. Each (sampler, seed, yardstick) is `evaluation.evaluate` with
10,000 samples into OUTPUT_ROOT/bench-fidelity-diversity/<sampler>-<seed>[-<yardstick>]/ (a finished report with
as many samples is reused); the rows go to rows.json there, and a markdown table per yardstick (mean of the seeds,
each seed's distance beside it, the change against the baseline sampler) is printed for BENCHMARKS.md, then one
table of both yardsticks' distances side by side.
"""

import argparse
import json
import re
import shlex
import statistics
from pathlib import Path

from bench.steps import cpu_flags
from evaluation import EvaluationConfig, evaluate
from evaluation.classifier import ClassifierConfig
from evaluation.reference import ClassifierTrainConfig
from generation.pretrained import SHIPPED_GENERATOR
from pipelines import cli
from prior.sampling import describe_settings
from store.runs import write_json

BASELINE = "--guidance-scale 1.5"  # the constant scale every schedule is measured against
SAMPLERS = (
    BASELINE,
    "--guidance-scale 1:2 --guidance-schedule linear",
    "--guidance-scale 1:2.5 --guidance-schedule linear",
    "--guidance-scale 1:3 --guidance-schedule linear",
    "--guidance-scale 1:2 --guidance-schedule cosine",
    "--guidance-scale 1:2.5 --guidance-schedule cosine",
    "--guidance-scale 1:3 --guidance-schedule cosine",
    "--guidance-scale 0.75:2.5 --guidance-schedule cosine",
    "--guidance-scale 2 --guidance-from 10",
    "--guidance-scale 2 --guidance-from 20",
    "--guidance-scale 2.5 --guidance-from 20",
    "--guidance-scale 3 --guidance-from 20",
    "--guidance-scale 2.5 --guidance-from 28",
    "--guidance-scale 3 --guidance-from 28",
    "--guidance-scale 1:2.5 --guidance-schedule cosine --temperature 1.05:0.95",
)
# The second yardstick: a classifier of another width, feature size and seed, trained once into its own folder.
YARDSTICKS = {
    "reference": (None, None),
    "second": (ClassifierConfig(width=32, feature_dim=96), ClassifierTrainConfig(classifier_seed=1)),
}
COLUMNS = ("fd_samples_vs_test", "precision", "recall", "density", "coverage", "classifier_accuracy_on_samples",
           "copies_samples")


def sampler_settings(sampler):
    """A sampler written as sampling flags -> its settings as EvaluationConfig fields (those not given: None)."""
    parser = cli.ArgumentParser(prog="sampler")
    cli.add_sampling_flags(parser)
    return cli.sampling_settings(parser.parse_args(shlex.split(sampler)))


def folder_name(sampler, seed, yardstick):
    """A folder per (sampler, seed, yardstick): the flags without dashes, e.g. guidance-scale-1.5-0."""
    name = re.sub(r"[^A-Za-z0-9.:]+", "-", sampler.replace("--", " ")).strip("-").replace(":", "to")
    return f"{name}-{seed}" + ("" if yardstick == "reference" else f"-{yardstick}")


def evaluated(prior, sampler, seed, yardstick, args):
    root = Path(args.output_root)
    out = root / "bench-fidelity-diversity" / folder_name(sampler, seed, yardstick)
    if (out / "report.json").exists():
        previous = json.loads((out / "report.json").read_text())
        if previous["counts"]["samples"] == args.n_samples:
            return previous
    classifier, classifier_train = YARDSTICKS[yardstick]
    # Each yardstick's classifier lives under a root of its own (the reference one: the usual OUTPUT_ROOT).
    classifier_root = root if yardstick == "reference" else root / "bench-fidelity-diversity" / f"{yardstick}-root"
    config = EvaluationConfig(n_samples=args.n_samples, seed=seed, classifier=classifier,
                              classifier_train=classifier_train, **sampler_settings(sampler))
    return evaluate(prior, config=config, out=out, overwrite=True, output_root=classifier_root)


def summarise(rows, baseline):
    """{(sampler, yardstick): the seeds' mean of each column, the seeds' distances in words, the change of the mean
    distance against the baseline's ("-" without one), the settings in words}."""
    summary = {}
    for sampler, yardstick in dict.fromkeys((row["sampler"], row["yardstick"]) for row in rows):
        same = sorted((row for row in rows if (row["sampler"], row["yardstick"]) == (sampler, yardstick)),
                      key=lambda row: row["seed"])
        summary[sampler, yardstick] = {key: statistics.fmean(row[key] for row in same) for key in COLUMNS}
        summary[sampler, yardstick].update(seeds=" / ".join(f"{row['fd_samples_vs_test']:.2f}" for row in same),
                                           text=same[0]["settings_text"])
    for (sampler, yardstick), mean in summary.items():
        base = summary.get((baseline, yardstick))
        mean["change"] = f"{mean['fd_samples_vs_test'] / base['fd_samples_vs_test'] - 1:+.1%}" if base else "-"
    return summary


def print_tables(rows, floors, baseline):
    summary = summarise(rows, baseline)
    samplers = list(dict.fromkeys(row["sampler"] for row in rows))
    yardsticks = list(dict.fromkeys(row["yardstick"] for row in rows))
    for yardstick in yardsticks:
        print(f"\n{yardstick} classifier:\n")
        print("| sampler | sample FD, mean (seeds) | against the baseline | precision | recall | density | coverage | "
              "accuracy on samples | copies |")
        print("|---|---|---|---|---|---|---|---|---|")
        for sampler in samplers:
            if (sampler, yardstick) in summary:
                mean = summary[sampler, yardstick]
                print(f"| {mean['text']} | {mean['fd_samples_vs_test']:.2f} ({mean['seeds']}) | {mean['change']} | "
                      f"{mean['precision']:.3f} | {mean['recall']:.3f} | {mean['density']:.3f} | "
                      f"{mean['coverage']:.3f} | {mean['classifier_accuracy_on_samples']:.1%} | "
                      f"{mean['copies_samples']:.1%} |")
        floor = floors[yardstick]
        print(f"| floor: train vs test | {floor['fd_train_vs_test']:.3f} | | {floor['train_precision']:.3f} | "
              f"{floor['train_recall']:.3f} | {floor['train_density']:.3f} | {floor['train_coverage']:.3f} | "
              f"{floor['classifier_test_accuracy']:.1%} (test) | {floor['copies_test']:.1%} (test) |")
    if len(yardsticks) > 1:
        # A setting is judged by the yardstick it pleases least: a default must win on both, not on one.
        print("\nboth yardsticks (sample FD, mean (seeds), and its change against the baseline; the last column the "
              "smaller of the two gains):\n")
        print("| sampler | " + " | ".join(yardsticks) + " | worse of the two |")
        print("|---|" + "---|" * (len(yardsticks) + 1))
        for sampler in samplers:
            cells = [f"{summary[sampler, y]['fd_samples_vs_test']:.2f} ({summary[sampler, y]['seeds']}) "
                     f"{summary[sampler, y]['change']}" if (sampler, y) in summary else "-" for y in yardsticks]
            text = next(summary[sampler, y]["text"] for y in yardsticks if (sampler, y) in summary)
            changes = [summary[sampler, y]["change"] for y in yardsticks if (sampler, y) in summary]
            worse = max(changes, key=lambda c: float(c.rstrip("%"))) if "-" not in changes else "-"
            print(f"| {text} | " + " | ".join(cells) + f" | {worse} |")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.fidelity_diversity", description=__doc__.splitlines()[0])
    parser.add_argument("--prior", default=str(SHIPPED_GENERATOR),
                        help="the prior run to sample (default: the shipped generator)")
    parser.add_argument("--samplers", nargs="+", default=None, metavar="FLAGS",
                        help="sampler settings, each as sample's sampling flags in one string (default: the guidance "
                             "schedules of the sweep in BENCHMARKS.md)")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="constant guidance scales, added to --samplers as --guidance-scale S")
    parser.add_argument("--seeds", type=int, nargs="+", default=(0, 1), help="sampling seeds (default: 0 1)")
    parser.add_argument("--yardsticks", nargs="+", choices=list(YARDSTICKS), default=list(YARDSTICKS),
                        help="the classifiers whose features score the samples (default: both)")
    parser.add_argument("--baseline", default=BASELINE,
                        help=f"the sampler the others are set against, always run (default: {BASELINE!r})")
    parser.add_argument("--n-samples", type=int, default=10000, help="samples per evaluation (default: 10000)")
    parser.add_argument("--output-root", default="checkpoints",
                        help="where the reference classifier and the reports go (default: checkpoints)")
    args = parser.parse_args(argv)
    # The baseline always runs: every other row is read against it.
    samplers = list(dict.fromkeys([args.baseline, *(args.samplers or ([] if args.scales else SAMPLERS)),
                                   *(f"--guidance-scale {scale:g}" for scale in args.scales or ())]))
    rows_path = Path(args.output_root) / "bench-fidelity-diversity" / "rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    rows = [row for row in rows if "sampler" in row]  # rows of other layouts are not compared with these
    floors = {}
    for sampler in samplers:
        for yardstick in args.yardsticks:
            for seed in args.seeds:
                report = evaluated(args.prior, sampler, seed, yardstick, args)
                floors[yardstick] = report["figures"]
                row = {"sampler": sampler, "settings_text": describe_settings(report["settings"]), "seed": seed,
                       "yardstick": yardstick, "settings": report["settings"], "prior": report["runs"]["prior"],
                       **{key: report["figures"][key] for key in COLUMNS},
                       "evaluation_seconds": report["seconds"]["total"], "cpu_flags": cpu_flags()}
                rows = [r for r in rows if (r["sampler"], r["seed"], r["yardstick"]) != (sampler, seed, yardstick)]
                rows.append(row)
                write_json(rows_path, rows)
    print_tables([r for r in rows if r["sampler"] in samplers and r["seed"] in args.seeds
                  and r["yardstick"] in args.yardsticks], floors, args.baseline)


if __name__ == "__main__":
    main()
