"""Evaluate a tokenizer, a prior and its samples offline, in the features of a classifier trained on the data set.

    python -m pipelines.evaluate                                        # the newest prior run and its tokenizer
    python -m pipelines.evaluate --prior checkpoints/prior/RUN --n-samples 2000
    python -m pipelines.evaluate --tokenizer checkpoints/tokenizer/RUN  # the tokenizer alone, no samples

The figures and the report are evaluation.evaluate's; this command parses flags, calls it, prints one line.
"""

import time
from pathlib import Path

import torch

from evaluation import evaluate
from evaluation.classifier import ClassifierConfig
from evaluation.reference import DERIVED_FROM_DATA, ClassifierTrainConfig
from pipelines import cli
from training import TrainConfig, make_accelerator


def build_parser():
    parser = cli.ArgumentParser(
        prog="python -m pipelines.evaluate",
        description="Evaluate a tokenizer, a prior and its samples with a reference classifier's features; "
                    "write report.json and report.html.")
    p = parser.add_argument
    p("--prior", metavar="RUN_DIR", default=None,
      help="prior run to evaluate (default: the newest under OUTPUT_ROOT/prior, unless --tokenizer alone is given)")
    p("--tokenizer", metavar="RUN_DIR", default=None,
      help="tokenizer run to evaluate (default: the one the prior was trained for); alone, without --prior, "
           "only the tokenizer is evaluated")
    p("--output-root", default="checkpoints",
      help="where runs are found, reference classifiers kept (OUTPUT_ROOT/classifiers) and reports written "
           "(default: checkpoints)")
    p("--out", default=None, help="output folder (default: a new OUTPUT_ROOT/evaluations/<time>)")
    p("--overwrite", action="store_true", help="replace --out if it exists already (default: refuse)")
    p("--n-samples", type=int, default=10000,
      help="grids to sample from the prior, drawn as `python -m pipelines.sample` draws them: a class-conditional "
           "prior's classes in the mix of the training split unless --label says otherwise (default: 10000)")
    p("--batch-size", type=int, default=500,
      help="grids sampled at once, and images per batch through the tokenizer and classifier (default: 500)")
    p("--seed", type=int, default=0, help="sampling seed; the same seed on the same device gives the same report "
                                          "(default: 0)")
    cli.add_sampling_flags(parser)
    p("--threads", type=int, default=0,
      help="CPU threads for torch (default: 0, torch's own choice); on a CPU shared with other jobs, 1 avoids "
           "threads waiting on each other (10x faster classifier training measured on 2 busy cores)")
    cli.add_config_flags(parser, ClassifierConfig, "reference classifier (used only when one is first trained for "
                                                   "the data set)", skip=DERIVED_FROM_DATA)
    group = cli.add_config_flags(parser, ClassifierTrainConfig, "reference classifier training")
    group.description = "OUTPUT_ROOT/classifiers/<data set> is reused when it exists; delete it to retrain"
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (torch's choice) or positive, not {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Only width and feature_dim count: the image shape and class count are replaced by the data's.
    classifier_config = cli.config_from_args(ClassifierConfig, args)
    classifier_train = cli.config_from_args(ClassifierTrainConfig, args)
    accelerator = make_accelerator(TrainConfig())
    out = Path(args.out) if args.out else Path(args.output_root) / "evaluations" / time.strftime("%Y%m%d-%H%M%S")
    report = evaluate(args.prior, args.tokenizer, output_root=args.output_root, out=out, overwrite=args.overwrite,
                      n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed, label=args.label,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      guidance_scale=args.guidance_scale, classifier_config=classifier_config,
                      classifier_train=classifier_train, device=accelerator.device,
                      accelerator=accelerator)
    if not accelerator.is_main_process:
        return
    f = report["figures"]
    samples = (f"samples {f['fd_samples_vs_test']:.3g} ({f['fd_samples_over_reconstructions']:.2f}x the "
               "reconstructions)" if f["fd_samples_vs_test"] is not None else "no samples")
    bits = f["prior_test_bits_per_token"]
    print(f"Frechet distance to test: train {f['fd_train_vs_test']:.3g} (floor), reconstructions "
          f"{f['fd_reconstructions_vs_test']:.3g}, {samples}; PSNR {f['reconstruction_psnr']:.2f} dB"
          + (f"; {bits:.3f} bits/token" if bits is not None else "") + f" -> {out / 'report.html'}")


if __name__ == "__main__":
    cli.run(main)
