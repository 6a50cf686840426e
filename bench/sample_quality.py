"""Sample quality, lever by lever: priors trained on one tokenizer run, each evaluated with several ways of sampling.

    python -m bench.sample_quality --tokenizer checkpoints/tokenizer/RUN [--only pixelcnn-7ep] [--sampling "guidance 1.5"]

Each prior goes to checkpoints/prior/bench-sq-<name>, trained by `python -m pipelines.fit_prior` in a process of its
own with the flags below (a finished run is reused, a killed one resumed), and each (prior, sampling) pair is
evaluated by `pipelines.evaluate` into checkpoints/bench-sample-quality/<prior>--<sampling>/ (reused when it holds
as many samples). Every row's figures go to checkpoints/bench-sample-quality/rows.json and the table to stdout, with
the seconds each step took on this machine.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from evaluation import EvaluationConfig, evaluate
from store.runs import MODEL_WEIGHTS, write_json

# (name, fit_prior flags, [(sampling name, EvaluationConfig fields)]). "raw" evaluates the raw weights of a
# run that also kept an average; every other row samples what `python -m pipelines.sample` would. A prior with no
# samplings is a short probe: its row has the test bits per token and the training time only.
GUIDED = [(f"guidance {s:g}", {"guidance_scale": s}) for s in (1.0, 1.25, 1.4, 1.5, 1.6, 1.75, 2.0, 2.5, 3.0)]
BEST_GUIDANCE = 1.5  # the best of GUIDED for the chosen prior; the other sampling settings are swept around it
TUNED = [(f"guidance {BEST_GUIDANCE:g}, {name}", {"guidance_scale": BEST_GUIDANCE, **settings}) for name, settings in [
    ("temperature 0.9", {"temperature": 0.9}), ("temperature 0.95", {"temperature": 0.95}),
    ("top-k 64", {"top_k": 64}), ("top-p 0.95", {"top_p": 0.95})]]
CONDITIONAL = ["--condition", "class", "--label-dropout", "0.1", "--weight-ema-decay", "0.999"]
FAST = ["--mixed-precision", "bf16"]
PIXELCNN = ["--arch", "pixelcnn", "--hidden-channels", "112", "--num-layers", "8"]
GATED = ["--arch", "gated", "--hidden-channels", "64", "--num-layers", "5"]  # the default prior before this table
PROBES = [(f"probe-lr{lr}", [*GATED, *CONDITIONAL, *FAST, "--epochs", "1", "--learning-rate", lr], [])
          for lr in ("1e-3", "2e-3", "4e-3", "8e-3")]
PRIORS = [
    *PROBES,
    ("probe-lr4e-3-fp32", [*GATED, *CONDITIONAL, "--mixed-precision", "no", "--epochs", "1", "--learning-rate", "4e-3"],
     []),
    ("probe-pixelcnn", [*CONDITIONAL, *FAST, "--epochs", "1", "--learning-rate", "1e-3", *PIXELCNN], []),
    ("probe-pixelcnn-lr4e-3", [*CONDITIONAL, *FAST, "--epochs", "1", "--learning-rate", "4e-3", *PIXELCNN], []),
    # The defaults before this table: gated, float32, 4 epochs at 1e-3, unconditional, no average.
    ("uncond", [*GATED, "--condition", "none", "--weight-ema-decay", "0", "--mixed-precision", "no",
                "--epochs", "4", "--learning-rate", "1e-3"], [("plain", {})]),
    ("cond", [*GATED, *CONDITIONAL, "--mixed-precision", "no", "--epochs", "4", "--learning-rate", "1e-3"],
     [(f"guidance {s:g}", {"guidance_scale": s}) for s in (1.0, 1.25, 1.5, 1.75, 2.0, 3.0)]
     + [(f"guidance 1.5, temperature {t:g}", {"guidance_scale": 1.5, "temperature": t}) for t in (0.9, 0.95)]
     + [("no label", {"label": "none"}),
        ("raw weights, guidance 2", {"guidance_scale": 2.0, "prior_weights": MODEL_WEIGHTS})]),
    ("pixelcnn-7ep", [*PIXELCNN, *CONDITIONAL, *FAST, "--epochs", "7", "--learning-rate", "4e-3"],
     [*GUIDED, *TUNED, ("guidance 1.5, seed 1", {"guidance_scale": 1.5, "seed": 1}), ("no label", {"label": "none"}),
      (f"raw weights, guidance {BEST_GUIDANCE:g}",
       {"guidance_scale": BEST_GUIDANCE, "prior_weights": MODEL_WEIGHTS})]),
    ("pixelcnn-7ep-lr6e-3", [*PIXELCNN, *CONDITIONAL, *FAST, "--epochs", "7", "--learning-rate", "6e-3"],
     [("guidance 1.5", {"guidance_scale": 1.5}), ("guidance 1.5, seed 1", {"guidance_scale": 1.5, "seed": 1})]),
    ("pixelcnn-7ep-dropout0.2", [*PIXELCNN, "--condition", "class", "--label-dropout", "0.2",
                                 "--weight-ema-decay", "0.999", *FAST, "--epochs", "7", "--learning-rate", "4e-3"],
     [("guidance 1.5", {"guidance_scale": 1.5}), ("guidance 1.5, seed 1", {"guidance_scale": 1.5, "seed": 1})]),
    ("gated-6ep", [*GATED, *CONDITIONAL, *FAST, "--epochs", "6", "--learning-rate", "4e-3"],
     [(f"guidance {s:g}", {"guidance_scale": s}) for s in (1.25, 1.5, 1.75, 2.0)]
     + [("guidance 1.5, seed 1", {"guidance_scale": 1.5, "seed": 1})]),
]


def read(path):
    return json.loads(Path(path).read_text())


def fit(name, flags, args):
    prior_dir = Path(args.output_root) / "prior" / f"bench-sq-{name}"
    if not (prior_dir / "results.json").exists():
        resume = ["--resume", prior_dir] if prior_dir.exists() else ["--run-name", prior_dir.name]
        # A process of its own: trained after evaluations in the same process, a prior ran 2.6x slower here.
        subprocess.run([sys.executable, "-m", "pipelines.fit_prior", *map(str, resume), "--output-root",
                        str(args.output_root), "--tokenizer", str(args.tokenizer), *flags], check=True)
    return prior_dir


def evaluated(prior_name, prior_dir, sampling_name, settings, args):
    out = Path(args.output_root) / "bench-sample-quality" / f"{prior_name}--{sampling_name.replace(' ', '-')}"
    if (out / "report.json").exists():
        previous = read(out / "report.json")
        if previous["counts"]["samples"] == args.n_samples:
            return previous
    return evaluate(prior_dir, config=EvaluationConfig(n_samples=args.n_samples, **settings), out=out,
                    overwrite=True, output_root=args.output_root)


def row_of(prior_name, sampling_name, prior_dir, report):
    results, f = read(prior_dir / "results.json"), report["figures"]
    s = report["settings"]
    return {"prior": prior_name, "sampling": sampling_name, "prior_run": str(prior_dir),
            "fd_samples": f["fd_samples_vs_test"], "fd_reconstructions": f["fd_reconstructions_vs_test"],
            "ratio": f["fd_samples_over_reconstructions"], "fd_floor": f["fd_train_vs_test"],
            "accuracy_on_samples": f["classifier_accuracy_on_samples"],
            "bits_per_token": results["test_bits_per_token"],
            "bits_per_token_raw": results.get("test_bits_per_token_raw_weights"),
            "prior_train_seconds": results["train_seconds_this_session"],
            "evaluation_seconds": report["seconds"]["total"],
            "temperature": s.get("temperature"), "top_k": s.get("top_k"), "top_p": s.get("top_p"),
            "guidance_scale": s.get("guidance_scale"), "weights": report["runs"].get("prior_weights")}


def print_table(rows):
    columns = [("prior", "prior", "{}"), ("sampling", "sampling", "{}"), ("FD samples", "fd_samples", "{:.2f}"),
               ("FD recon", "fd_reconstructions", "{:.2f}"), ("samples/recon", "ratio", "{:.1f}x"),
               ("accuracy on samples", "accuracy_on_samples", "{:.1%}"), ("bits/token", "bits_per_token", "{:.3f}"),
               ("prior s", "prior_train_seconds", "{:.0f}"), ("evaluation s", "evaluation_seconds", "{:.0f}")]
    print("| " + " | ".join(title for title, _, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(fmt.format(row[key]) if row.get(key) is not None else "-"
                                for _, key, fmt in columns) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer run whose maps every prior models")
    parser.add_argument("--only", default=None, help="comma-separated prior names (default: all)")
    parser.add_argument("--sampling", action="append", default=None,
                        help="evaluate only this sampling row of each prior (repeatable; default: all)")
    parser.add_argument("--n-samples", type=int, default=10000, help="samples per evaluation (default: 10000)")
    parser.add_argument("--output-root", default="checkpoints", help="where the runs go (default: checkpoints)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = set(args.only.split(",")) if args.only else None
    rows_path = Path(args.output_root) / "bench-sample-quality" / "rows.json"
    rows = read(rows_path) if rows_path.exists() else []
    for prior_name, flags, samplings in PRIORS:
        if chosen is not None and prior_name not in chosen:
            continue
        prior_dir = fit(prior_name, flags, args)
        if not samplings:
            results = read(prior_dir / "results.json")
            rows = [r for r in rows if r["prior"] != prior_name] + [{
                "prior": prior_name, "sampling": "-", "prior_run": str(prior_dir),
                "bits_per_token": results["test_bits_per_token"],
                "bits_per_token_raw": results.get("test_bits_per_token_raw_weights"),
                "prior_train_seconds": results["train_seconds_this_session"]}]
            write_json(rows_path, rows)
        for sampling_name, settings in samplings:
            if args.sampling and sampling_name not in args.sampling:
                continue
            started = time.perf_counter()
            row = row_of(prior_name, sampling_name, prior_dir, evaluated(prior_name, prior_dir, sampling_name,
                                                                         settings, args))
            row["wall_seconds_this_run"] = time.perf_counter() - started
            rows = [r for r in rows if (r["prior"], r["sampling"]) != (prior_name, sampling_name)] + [row]
            write_json(rows_path, rows)
    print_table(rows)


if __name__ == "__main__":
    main()
