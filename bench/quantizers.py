"""The quantizer family at one budget: fit a tokenizer and a prior for each, evaluate both, print one table.

    python -m bench.quantizers [--tokenizer-epochs 3] [--prior-epochs 1] [--only vq,fsq] [--n-samples 10000]

Runs go to checkpoints/{tokenizer,prior}/bench-q-<name>; a finished step is reused, so a killed benchmark
continues where it stopped (delete the runs to start over). Each configuration's figures are written to
checkpoints/bench-quantizers/<name>.json, and the table goes to stdout.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from pipelines import fit_prior, fit_tokenizer
from store.runs import write_json

PRIOR_AS_MEASURED = ["--arch", "gated", "--hidden-channels", "64", "--num-layers", "5", "--condition", "none",
                     "--learning-rate", "1e-3", "--mixed-precision", "no", "--weight-ema-decay", "0"]

# (name, fit_tokenizer flags): every quantizer, the vq options the issue compares (EMA vs loss updates, cosine
# codes, the rotation trick), and fsq and binary with the entropy penalty (0.001: at 1 epoch fsq then used 99.7% of
# its codes at the MSE it had without; 0.01 used 100% at 0.65 dB below 0.001).
CONFIGURATIONS = [
    ("vq", []),
    ("vq-loss", ["--codebook-update", "loss"]),
    ("vq-cosine", ["--cosine"]),
    ("vq-rotation", ["--estimator", "rotation"]),
    ("residual", ["--quantizer", "residual", "--depth", "4"]),
    ("simvq", ["--quantizer", "simvq"]),
    ("fsq", ["--quantizer", "fsq", "--fsq-levels", "8,5,5,5"]),
    ("binary", ["--quantizer", "binary", "--codebook-size", "512"]),
    ("fsq-entropy", ["--quantizer", "fsq", "--fsq-levels", "8,5,5,5", "--entropy-weight", "0.001"]),
    ("binary-entropy", ["--quantizer", "binary", "--codebook-size", "512", "--entropy-weight", "0.001"]),
]


def read(path):
    return json.loads(Path(path).read_text())


def fit(name, flags, args):
    """Fit (or reuse) the tokenizer and the prior of one configuration; returns their run directories."""
    tokenizer_dir = Path(args.output_root) / "tokenizer" / f"bench-q-{name}"
    prior_dir = Path(args.output_root) / "prior" / f"bench-q-{name}"
    if not (tokenizer_dir / "results.json").exists():
        resume = ["--resume", tokenizer_dir] if tokenizer_dir.exists() else ["--run-name", tokenizer_dir.name]
        fit_tokenizer.main([*resume, "--output-root", args.output_root, "--epochs", args.tokenizer_epochs, *flags])
    if not (prior_dir / "results.json").exists():
        resume = ["--resume", prior_dir] if prior_dir.exists() else ["--run-name", prior_dir.name]
        # The prior as it was when the table was measured (the defaults changed since: BENCHMARKS.md).
        fit_prior.main([*resume, "--output-root", args.output_root, "--tokenizer", tokenizer_dir,
                        "--epochs", args.prior_epochs, *PRIOR_AS_MEASURED])
    return tokenizer_dir, prior_dir


def figures(name, tokenizer_dir, prior_dir, evaluation):
    tokenizer, prior = read(tokenizer_dir / "results.json"), read(prior_dir / "results.json")
    config = read(tokenizer_dir / "config.json")["model"]
    row = {"name": name, "quantizer": config["quantizer"], "codebook_size": config["codebook_size"],
           "tokens_per_position": config["depth"] if config["quantizer"] == "residual" else 1,
           "test_mse": tokenizer["test_mse"], "test_psnr": tokenizer["test_psnr"],
           "test_codes_used": tokenizer["test_codes_used"], "test_perplexity": tokenizer["test_perplexity"],
           "tokenizer_train_seconds": tokenizer["train_seconds_this_session"],
           "prior_bits_per_token": prior["test_bits_per_token"], "prior_bits_per_image": prior["test_bits_per_image"],
           "prior_train_seconds": prior["train_seconds_this_session"],
           "tokenizer_run": str(tokenizer_dir), "prior_run": str(prior_dir)}
    if evaluation is not None:
        f = evaluation["figures"]
        row.update({"frechet_train_vs_test": f["fd_train_vs_test"],
                    "frechet_reconstructions": f["fd_reconstructions_vs_test"],
                    "frechet_samples": f["fd_samples_vs_test"], "evaluation_samples": evaluation["counts"]["samples"]})
    return row


def print_table(rows):
    columns = [("configuration", "name", "{}"), ("test MSE", "test_mse", "{:.5f}"), ("PSNR", "test_psnr", "{:.2f}"),
               ("codes used", "test_codes_used", "{:.1%}"), ("perplexity", "test_perplexity", "{:.1f}"),
               ("prior bits/token", "prior_bits_per_token", "{:.3f}"),
               ("prior bits/image", "prior_bits_per_image", "{:.1f}"),
               ("FD recon", "frechet_reconstructions", "{:.2f}"), ("FD samples", "frechet_samples", "{:.2f}"),
               ("FD floor", "frechet_train_vs_test", "{:.2f}"),
               ("tokenizer s", "tokenizer_train_seconds", "{:.0f}"), ("prior s", "prior_train_seconds", "{:.0f}")]
    print("| " + " | ".join(title for title, _, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in columns]
        print("| " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-epochs", type=int, default=3, help="tokenizer epochs for every configuration")
    parser.add_argument("--prior-epochs", type=int, default=1, help="prior epochs for every configuration")
    parser.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    parser.add_argument("--n-samples", type=int, default=10000, help="samples for the sample Frechet distance")
    parser.add_argument("--skip-evaluation", action="store_true", help="fit only; evaluate in a later run")
    parser.add_argument("--output-root", default="checkpoints", help="where the runs go (default: checkpoints)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = set(args.only.split(",")) if args.only else None
    rows = []
    for name, flags in CONFIGURATIONS:
        if chosen is not None and name not in chosen:
            continue
        started = time.perf_counter()
        tokenizer_dir, prior_dir = fit(name, flags, args)
        evaluation = None
        if not args.skip_evaluation:
            from evaluation import EvaluationConfig, evaluate

            out = Path(args.output_root) / "bench-quantizers" / f"evaluation-{name}"
            # A finished evaluation of the same size is reused, so that a killed benchmark resumes where it was.
            previous = read(out / "report.json") if (out / "report.json").exists() else None
            if previous is not None and previous["counts"]["samples"] == args.n_samples:
                evaluation = previous
            else:
                evaluation = evaluate(prior_dir, config=EvaluationConfig(n_samples=args.n_samples), out=out,
                                      overwrite=True, output_root=args.output_root)
        row = figures(name, tokenizer_dir, prior_dir, evaluation)
        row["wall_seconds_this_run"] = time.perf_counter() - started
        write_json(Path(args.output_root) / "bench-quantizers" / f"{name}.json", row)
        rows.append(row)
    print(f"tokenizer {args.tokenizer_epochs} epochs, prior {args.prior_epochs} epoch(s), "
          f"{args.n_samples} samples for the sample distance")
    print_table(rows)


if __name__ == "__main__":
    main()
