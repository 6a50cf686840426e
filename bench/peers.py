"""Ours against the peers a user would pick instead: the same data, machine and seconds, side by side in one run.

    python -m bench.peers [--out checkpoints/bench-peers] [--only ours-tokenizer,vqmodel,ours,pixelsnail,gpt]

Every contender trains in a process of its own, one after another (nothing else should run meanwhile):
- tokenizers on Fashion-MNIST: ours (`pipelines.fit_tokenizer`, the defaults) and `diffusers`' VQModel
  (bench.peer_vqmodel) for as many training seconds as ours took (or --tokenizer-seconds): test MSE, codes used
  and the reconstructions' Frechet distance;
- priors on our tokenizer's maps: ours (`pipelines.fit_prior`, the defaults), the PixelSNAIL-style variant of ours
  (`--arch pixelsnail`, --pixelsnail-epochs chosen to fit the same seconds) and `transformers`' GPT-2
  (bench.peer_gpt) for as many training seconds as ours took (or --prior-seconds), once per learning rate of
  --gpt-learning-rates (a contender is tuned before it is called behind): test bits per token against training
  seconds (a curve), and the Frechet distance of --samples samples per sampling seed, every prior guided as
  `pipelines.sample` guides with no flags (the same schedule). Our priors are measured by `pipelines.evaluate`; the
  peers' samples and reconstructions by the same reference classifier, in this process.

A finished step is reused (delete its folder to redo it). The figures go to OUT/peers.json, and the tables, with
the CPU's bf16 flags, to stdout. The peers come from the bench-only extra: pip install -e '.[peers]'.
"""

import argparse
import functools
from pathlib import Path

import numpy as np
import torch

from evaluation.frechet import feature_statistics, frechet_distance
from evaluation.reference import load_or_train_classifier, predict
from bench.steps import cpu_flags, run_step
from prior.sampling import describe_settings
from store.images import load_images
from store.runs import read_json, read_metrics, write_json
from tokenizer import Tokenizer

TOKENIZERS, PRIORS = ("ours-tokenizer", "vqmodel"), ("ours", "pixelsnail", "gpt")


def training_curve(run_dir, batch_size):
    """[(training seconds, test bits per token)] of a fit_prior run: its per-epoch evaluations, the seconds summed
    from the training rate of each log window (evaluations are not counted, as in the peers)."""
    seconds, last_step, at_step, curve = 0.0, 0, {0: 0.0}, []
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    for record in records:
        if "items_per_s" in record:
            seconds += (record["step"] - last_step) * batch_size / record["items_per_s"]
            last_step = record["step"]
            at_step[last_step] = seconds
    steps = sorted(at_step)
    for record in records:
        if "test_bits_per_token" in record:
            # The evaluation's step closes a log window whenever log_every divides an epoch; else interpolate.
            below = max(s for s in steps if s <= record["step"])
            above = min((s for s in steps if s >= record["step"]), default=below)
            share = 0 if above == below else (record["step"] - below) / (above - below)
            curve.append((at_step[below] + share * (at_step[above] - at_step[below]), record["test_bits_per_token"]))
    return curve


def bits_at(curve, seconds):
    """Test bits per token at a given training time, linear between the curve's points (None before the first)."""
    for (t0, b0), (t1, b1) in zip(curve, curve[1:]):
        if t0 <= seconds <= t1:
            return b0 + (b1 - b0) * (seconds - t0) / max(t1 - t0, 1e-9)
    if curve and seconds >= curve[-1][0] * 0.98:  # the last point, within the spread of "the same seconds"
        return curve[-1][1]
    return None


def grid_text(shape, codebook_size):
    return f"{'x'.join(map(str, shape))} of {codebook_size}"


class Features:
    """The reference classifier evaluate() trains into OUT/classifiers, and the test split's feature statistics."""

    def __init__(self, data_config, root):
        self.test_set = load_images(data_config, "test")
        self.reference = load_or_train_classifier(data_config, root, train_set=load_images(data_config, "train"),
                                                  test_set=self.test_set)
        features, _ = predict(self.reference.model, self.test_set.images)
        self.test_stats = feature_statistics(features)

    def figures(self, images, labels=None):
        """(Frechet distance to the test split, the classifier's accuracy against labels or None)."""
        features, predicted = predict(self.reference.model, images)
        accuracy = None if labels is None else (predicted == labels).float().mean().item()
        return frechet_distance(feature_statistics(features), self.test_stats), accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="checkpoints/bench-peers", help="output root of every run and figure")
    parser.add_argument("--only", default=",".join(TOKENIZERS + PRIORS),
                        help=f"contenders to run, comma-separated (default: all: {','.join(TOKENIZERS + PRIORS)})")
    parser.add_argument("--tokenizer-seconds", type=float, default=None,
                        help="VQModel's training seconds (default: what our tokenizer took)")
    parser.add_argument("--prior-seconds", type=float, default=None,
                        help="GPT-2's training seconds (default: what our prior took)")
    parser.add_argument("--pixelsnail-epochs", type=int, default=6,
                        help="epochs of the pixelsnail prior, chosen to take our prior's seconds (default: 6)")
    parser.add_argument("--pixelsnail-flags", default="", help="more fit_prior flags for the pixelsnail prior")
    parser.add_argument("--gpt-flags", default="", help="more bench.peer_gpt flags (--layers, --width, ...)")
    parser.add_argument("--gpt-learning-rates", type=float, nargs="+", default=[1e-3, 2e-3, 4e-3],
                        help="GPT-2's peak learning rates, a run each (default: 1e-3 2e-3 4e-3)")
    parser.add_argument("--vqmodel-flags", default="", help="more bench.peer_vqmodel flags")
    parser.add_argument("--tokenizer-flags", default="", help="more fit_tokenizer flags for our tokenizer")
    parser.add_argument("--prior-flags", default="", help="more fit_prior flags for both our priors")
    parser.add_argument("--evaluate-flags", default="", help="more pipelines.evaluate flags (the classifier's)")
    parser.add_argument("--samples", type=int, default=10000, help="samples per seed (default: 10000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default: 0 1)")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    unknown = only - set(TOKENIZERS + PRIORS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "peers.json"
    summary = read_json(summary_path) if summary_path.exists() else {}
    summary["cpu_bf16_flags"], summary["threads"] = cpu_flags(), torch.get_num_threads()
    wall = summary.setdefault("wall_seconds", {})
    tokenizer_dir = out / "tokenizer" / "ours"
    seeds = [str(s) for s in args.seeds]

    # Every contender's figures are read from the runs of ours they are measured against: ours always runs (or is
    # reused), the others when named by --only.
    run_step("ours-tokenizer", ["pipelines.fit_tokenizer", "--output-root", str(out), "--run-name", "ours",
                                *args.tokenizer_flags.split()], tokenizer_dir / "results.json", wall)
    tokenizer_results = read_json(tokenizer_dir / "results.json")
    tokenizer = Tokenizer.load(tokenizer_dir)
    data_config = tokenizer.run.data
    tokenizer_seconds = args.tokenizer_seconds or tokenizer_results["train_seconds_this_session"]

    def evaluate(name, flags, folder):
        run_step(f"evaluate {name}", ["pipelines.evaluate", "--output-root", str(out), "--out", str(folder),
                                      *flags, *args.evaluate_flags.split()], folder / "report.json", wall)
        return read_json(folder / "report.json")["figures"]

    ours_reconstruction = evaluate("ours-tokenizer", ["--tokenizer", str(tokenizer_dir)],
                                   out / "evaluations" / "ours-tokenizer")
    features = functools.cache(lambda: Features(data_config, out))  # for the peers only
    tokenizers = {"ours": {"train_seconds": tokenizer_results["train_seconds_this_session"],
                           "train_images_per_s": tokenizer_results.get("train_images_per_s"),
                           "parameters": tokenizer_results.get("parameters"),
                           "test_mse": ours_reconstruction["reconstruction_mse"],
                           "test_codes_used": tokenizer_results.get("test_codes_used"),
                           "reconstruction_fd": ours_reconstruction["fd_reconstructions_vs_test"],
                           "grid": grid_text(tokenizer.grid_shape, tokenizer.codebook_size)}}
    if "vqmodel" in only:
        folder = out / "peers" / "vqmodel"
        run_step("vqmodel", ["bench.peer_vqmodel", "--out", str(folder), "--seconds", f"{tokenizer_seconds:.1f}",
                             "--fashion-mnist-dir", data_config.fashion_mnist_dir, *args.vqmodel_flags.split()],
                 folder / "results.json", wall)
        results = read_json(folder / "results.json")
        reconstructions = torch.from_numpy(np.load(folder / "reconstructions.npz")["images"]).float()
        results["reconstruction_fd"], _ = features().figures(reconstructions)
        results["grid"] = grid_text(results["grid"], results["codebook_size"])
        tokenizers["vqmodel"] = results
    summary["tokenizers"] = tokenizers

    priors = summary.setdefault("priors", {})
    fit_prior_runs = {"ours": []}
    if "pixelsnail" in only:
        fit_prior_runs["pixelsnail"] = ["--arch", "pixelsnail", "--epochs", str(args.pixelsnail_epochs),
                                        *args.pixelsnail_flags.split()]
    for name, flags in fit_prior_runs.items():
        run_dir = out / "prior" / name
        run_step(name, ["pipelines.fit_prior", "--tokenizer", str(tokenizer_dir), "--output-root", str(out),
                        "--run-name", name, *args.prior_flags.split(), *flags], run_dir / "results.json", wall)
        results = read_json(run_dir / "results.json")
        config = read_json(run_dir / "config.json")
        row = {"parameters": results["parameters"], "train_seconds": results["train_seconds_this_session"],
               "train_grids_per_s": results["train_grids_per_s"], "test_bits_per_token": results["test_bits_per_token"],
               "curve": training_curve(run_dir, config["train"]["batch_size"]), "flags": flags}
        for seed in seeds:
            figures = evaluate(f"{name} seed {seed}", ["--prior", str(run_dir), "--n", str(args.samples),
                                                       "--seed", seed], out / "evaluations" / f"{name}-seed{seed}")
            row[f"sample_fd_seed{seed}"] = figures["fd_samples_vs_test"]
            row[f"accuracy_on_samples_seed{seed}"] = figures["classifier_accuracy_on_samples"]
            settings = read_json(out / "evaluations" / f"{name}-seed{seed}" / "report.json")["settings"]
            row["sampling"] = {key: value for key, value in settings.items() if key.startswith("guidance_")}
        priors[name] = row
    if "gpt" in only:
        prior_seconds = args.prior_seconds or priors["ours"]["train_seconds"]
        for rate in args.gpt_learning_rates:
            priors[f"gpt lr {rate:g}"] = gpt_row(args, out, tokenizer, tokenizer_dir, prior_seconds, rate, seeds, wall,
                                                 features)
    write_json(summary_path, summary)
    print_tables(summary, seeds)


def gpt_row(args, out, tokenizer, tokenizer_dir, seconds, rate, seeds, wall, features):
    """GPT-2 at one peak learning rate: trained (bench.peer_gpt, a process of its own) for `seconds`, its samples
    decoded by our tokenizer and measured by the reference classifier (features())."""
    folder = out / "peers" / f"gpt-lr{rate:g}"
    run_step(f"gpt lr {rate:g}", ["bench.peer_gpt", "--tokenizer", str(tokenizer_dir), "--out", str(folder),
                                  "--seconds", f"{seconds:.1f}", "--samples", str(args.samples), "--seeds", *seeds,
                                  "--learning-rate", f"{rate:g}", *args.gpt_flags.split()],
             folder / "results.json", wall)
    results = read_json(folder / "results.json")
    curve = [(point["seconds"], point["test_bits_per_token"]) for point in read_json(folder / "curve.json")]
    row = {"parameters": results["parameters"], "train_seconds": results["train_seconds"],
           "train_grids_per_s": results["train_grids_per_s"], "test_bits_per_token": results["test_bits_per_token"],
           "curve": curve, "flags": ["--learning-rate", f"{rate:g}", *args.gpt_flags.split()],
           "sampling": results.get("sampling")}
    for seed in seeds:
        samples = np.load(folder / f"samples-seed{seed}.npz")
        tokens = torch.from_numpy(samples["tokens"].astype(np.int64))
        images = torch.cat([tokenizer.decode(tokens[i:i + 1000]) for i in range(0, len(tokens), 1000)])
        fd, accuracy = features().figures(images, torch.from_numpy(samples["labels"]))
        row[f"sample_fd_seed{seed}"], row[f"accuracy_on_samples_seed{seed}"] = fd, accuracy
    return row


def print_tables(summary, seeds):
    print(f"\nCPU bf16 flags: {summary['cpu_bf16_flags']}; {summary['threads']} threads\n")
    print("| tokenizer | parameters | training s | images/s | test MSE | codes used | grid | reconstruction FD |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in summary.get("tokenizers", {}).items():
        print(f"| {name} | {row.get('parameters') or 0:,} | {row['train_seconds']:.0f} | "
              f"{row.get('train_images_per_s') or 0:.0f} | {row['test_mse']:.5f} | "
              f"{100 * (row.get('test_codes_used') or 0):.1f}% | {row['grid']} | {row['reconstruction_fd']:.3f} |")
    priors = summary.get("priors", {})
    if not priors:
        return
    reference = priors.get("ours")
    fractions = (0.25, 0.5, 0.75, 1.0)
    print("\n| prior | parameters | training s | grids/s | "
          + " | ".join(f"bits at {f:.0%} of ours' s" for f in fractions)
          + " | test bits/token (end) | " + " | ".join(f"sample FD seed {s}" for s in seeds) + " | accuracy |")
    print("|---|" + "---|" * (4 + len(fractions) + len(seeds) + 1))
    for name, row in priors.items():
        points = []
        for f in fractions:
            bits = bits_at(row["curve"], f * reference["train_seconds"]) if reference else None
            ours = bits_at(reference["curve"], f * reference["train_seconds"]) if reference else None
            points.append("-" if bits is None else f"{bits:.3f}" + (f" ({bits / ours:.3f}x)" if ours else ""))
        accuracies = [row.get(f"accuracy_on_samples_seed{s}") for s in seeds]
        print(f"| {name} | {row['parameters']:,} | {row['train_seconds']:.0f} | {row['train_grids_per_s']:.0f} | "
              + " | ".join(points) + f" | {row['test_bits_per_token']:.4f} | "
              + " | ".join(f"{row.get(f'sample_fd_seed{s}', float('nan')):.2f}" for s in seeds)
              + " | " + " / ".join(f"{100 * a:.1f}%" for a in accuracies if a is not None) + " |")
    sampled = {name: describe_settings(row["sampling"]).split(", temperature")[0] for name, row in priors.items()
               if row.get("sampling")}
    if sampled:
        print("\nSampled with " + "; ".join(f"{name}: {text}" for name, text in sampled.items()))


if __name__ == "__main__":
    main()
