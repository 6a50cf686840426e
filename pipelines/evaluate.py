"""Evaluate a tokenizer, a prior and its samples offline, in the features of a classifier trained on the data set.

    python -m pipelines.evaluate                                        # the newest prior run and its tokenizer
    python -m pipelines.evaluate --prior checkpoints/prior/RUN --n-samples 2000
    python -m pipelines.evaluate --tokenizer checkpoints/tokenizer/RUN  # the tokenizer alone, no samples

The figures and the report are evaluation.evaluate's; this command parses flags, calls it, prints one line.
"""

import torch

from evaluation import EvaluationConfig, evaluate
from evaluation.classifier import ClassifierConfig
from evaluation.reference import DERIVED_FROM_DATA, ClassifierTrainConfig
from generation.pretrained import choose_prior, choose_tokenizer
from pipelines import cli
from training import TrainConfig, make_accelerator


def build_parser():
    parser = cli.ArgumentParser(
        prog="python -m pipelines.evaluate",
        description="Evaluate a tokenizer, a prior and its samples with a reference classifier's features; "
                    "write report.json and report.html.")
    cli.add_run_choice_flag(parser, "prior", "evaluate",
                            default="the newest under OUTPUT_ROOT/prior (with none, the shipped Fashion-MNIST "
                                    "generator in checkpoints/fashion-mnist), unless --tokenizer alone is given")
    cli.add_run_choice_flag(parser, "tokenizer", "evaluate (alone, without --prior, only the tokenizer is evaluated)",
                            default="the one the prior was trained for")
    cli.add_output_root_flag(parser)
    cli.add_output_flags(parser, "evaluations")
    cli.add_sample_count_flag(parser, 10000)
    cli.add_batch_size_flag(parser, "grids sampled, and images through the tokenizer and classifier,", 500)
    cli.add_sampling_flags(parser)
    parser.add_argument("--threads", type=cli.non_negative_int, default=0,
                        help="CPU threads for torch (default: 0, torch's own choice); on a CPU shared with other "
                             "jobs, 1 avoids threads waiting on each other (10x faster classifier training measured "
                             "on 2 busy cores)")
    cli.add_config_flags(parser, ClassifierConfig, "reference classifier (used only when one is first trained for "
                                                   "the data set)", skip=DERIVED_FROM_DATA)
    group = cli.add_config_flags(parser, ClassifierTrainConfig, "reference classifier training")
    group.description = "OUTPUT_ROOT/classifiers/<data set> is reused when it exists; delete it to retrain"
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.threads:
        torch.set_num_threads(args.threads)
    # Only width and feature_dim count: the image shape and class count are replaced by the data's.
    config = cli.config_from_args(EvaluationConfig, args, classifier=cli.config_from_args(ClassifierConfig, args),
                                  classifier_train=cli.config_from_args(ClassifierTrainConfig, args))
    accelerator = make_accelerator(TrainConfig())
    out = cli.output_folder(args, "evaluations")
    # A tokenizer named alone is evaluated alone; a prior named or found (or the shipped one) brings its own.
    tokenizer_dir = choose_tokenizer(args.tokenizer, args.output_root) if args.tokenizer else None
    prior_dir = choose_prior(args.prior, args.output_root) if args.prior or not args.tokenizer else None
    report = evaluate(prior_dir, tokenizer_dir, config, output_root=args.output_root, out=out,
                      overwrite=args.overwrite, device=accelerator.device, accelerator=accelerator)
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
