"""Evaluate a tokenizer, a prior and its samples offline, in the features of a classifier trained on the data set.

    python -m pipelines.evaluate                                        # the newest prior run and its tokenizer
    python -m pipelines.evaluate --prior checkpoints/prior/RUN --n-samples 2000
    python -m pipelines.evaluate --tokenizer checkpoints/tokenizer/RUN  # the tokenizer alone, no samples
    python -m pipelines.evaluate --features inception                   # also FID and KID, the papers' protocol
    python -m pipelines.evaluate --samples other/samples.npz --dataset fashion-mnist  # another model's images

The figures and the report are evaluation.evaluate's; this command parses flags, calls it, prints one line.
"""

import torch

from evaluation import EvaluationConfig, evaluate
from evaluation.classifier import ClassifierConfig
from evaluation.evaluator import FEATURES
from evaluation.inception import INCEPTION_WEIGHTS_NAME, cached_weights_path
from evaluation.reference import DERIVED_FROM_DATA, ClassifierTrainConfig
from generation.pretrained import choose_prior, choose_tokenizer
from pipelines import cli
from store.images import DataConfig
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
    p = parser.add_argument
    p("--features", choices=FEATURES, default="classifier",
      help="classifier: figures in the reference classifier's features (offline); inception: also FID, KID, "
           "precision, recall, density and coverage in Inception-v3's features, as the papers report them "
           "(torch-fidelity; about 40 minutes per 10,000 images on 2 CPU cores) (default: classifier)")
    p("--inception-weights", metavar="PATH", default=None,
      help=f"the Inception-v3 weights file ({INCEPTION_WEIGHTS_NAME}) (default: torch's hub cache, "
           f"{cached_weights_path()}, downloaded there when missing)")
    p("--samples", metavar="PATH", default=None,
      help="score samples some other model made instead of a run's samples: a folder of image files or an .npz "
           "whose arr_0 is uint8 (n, H, W, 3) (as `python -m pipelines.sample --npz` and the reference-batch "
           "evaluators write), against the test split of the data set the flags below name; no --prior or "
           "--tokenizer")
    cli.add_renamed_flag(parser, "--images", "--samples")  # --images is what encode encodes
    data = cli.add_data_flags(parser)
    data.description = "the reference data set of --samples (a run brings its own)"
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
    # (Not config_from_args: the data flags' --image-size would land in the classifier's image_size.)
    classifier = ClassifierConfig(width=args.width, feature_dim=args.feature_dim)
    config = cli.config_from_args(EvaluationConfig, args, classifier=classifier,
                                  classifier_train=cli.config_from_args(ClassifierTrainConfig, args))
    accelerator = make_accelerator(TrainConfig())
    out = cli.output_folder(args, "evaluations")
    data_config = cli.config_from_args(DataConfig, args)
    if args.samples and (args.prior or args.tokenizer):
        raise ValueError("--samples scores images made elsewhere: give it without --prior and --tokenizer")
    if not args.samples and data_config != cli.config_from_args(DataConfig, build_parser().parse_args([])):
        raise ValueError("the data set flags name the reference of --samples: a run is evaluated on its own data set")
    # A tokenizer named alone is evaluated alone; a prior named or found (or the shipped one) brings its own.
    tokenizer_dir = choose_tokenizer(args.tokenizer, args.output_root) if args.tokenizer else None
    prior_dir = choose_prior(args.prior, args.output_root) if not args.samples and (
        args.prior or not args.tokenizer) else None
    report = evaluate(prior_dir, tokenizer_dir, config, images=args.samples, data_config=data_config,
                      output_root=args.output_root, out=out, overwrite=args.overwrite, device=accelerator.device,
                      accelerator=accelerator)
    if not accelerator.is_main_process:
        return
    print(summary(report["figures"]) + f" -> {out / 'report.html'}")


def summary(f):
    """The report's main figures in one line."""
    parts = [f"Frechet distance to test: train {f['fd_train_vs_test']:.3g} (floor)"]
    if f["fd_reconstructions_vs_test"] is not None:
        parts.append(f"reconstructions {f['fd_reconstructions_vs_test']:.3g}")
    if f["fd_samples_vs_test"] is not None:
        over = f["fd_samples_over_reconstructions"]
        parts.append(f"samples {f['fd_samples_vs_test']:.3g}" + (f" ({over:.2f}x the reconstructions)"
                                                                  if over is not None else ""))
    else:
        parts.append("no samples")
    line = ", ".join(parts)
    if f["precision"] is not None:
        line += (f"; precision {f['precision']:.3f}, recall {f['recall']:.3f}, density {f['density']:.3f}, "
                 f"coverage {f['coverage']:.3f}")
    if f["inception_fid_samples_vs_test"] is not None:
        line += f"; FID {f['inception_fid_samples_vs_test']:.4g}, KID {f['inception_kid_samples_vs_test']:.4g}"
    if f["reconstruction_psnr"] is not None:
        line += f"; PSNR {f['reconstruction_psnr']:.2f} dB"
    if f["prior_test_bits_per_token"] is not None:
        line += f"; {f['prior_test_bits_per_token']:.3f} bits/token"
    return line


if __name__ == "__main__":
    cli.run(main, build_parser)
