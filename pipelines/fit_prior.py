"""Stage two: train the PixelCNN prior on the index maps that a tokenizer run dumped.

    python -m pipelines.fit_prior                                  # newest tokenizer run, default prior
    python -m pipelines.fit_prior --arch gated --tokenizer checkpoints/tokenizer/RUN
    python -m pipelines.fit_prior --condition class --label-dropout 0.1
    python -m pipelines.fit_prior --resume checkpoints/prior/RUN
"""

import dataclasses
import functools
import time
from pathlib import Path

import torch

from pipelines import cli
from prior import PriorConfig, PriorRun
from prior.fit import (CONDITIONS, DEFAULT_LABEL_DROPOUT, bits_per_token, new_prior_run, prior_step, read_maps_for,
                       test_results)
from prior.run import tokenizer_copy
from store.index_maps import MapDataset
from store.runs import check_resumable, newest_run, path_from, recorded_path, save_run_weights
from training import (TrainConfig, check_one_batch, finish_run, make_accelerator, mean_items_per_s, open_run_dir,
                      train)

DERIVED_FROM_MAPS = ("codebook_size", "grid_height", "grid_width", "num_classes", "depth", "condition_codebook_size",
                     "condition_height", "condition_width")
# From BENCHMARKS.md ("Sample quality: the levers"): the learning rate of 1e-3 used before was 4x too low (1-epoch
# probes: 6.68 bits at 1e-3, 6.08 at 4e-3, 6.04 at 8e-3); bf16 where the hardware has it trains 1.4-1.6x faster at
# the same bits, so the default prior's 7 epochs take 456 s on 2 cores with AVX512-BF16; the averaged weights sample
# better.
PRIOR_TRAIN_DEFAULTS = {"epochs": 7, "learning_rate": 4e-3, "mixed_precision": "auto", "weight_ema_decay": 0.999}


def build_parser():
    parser = cli.ArgumentParser(
        prog="python -m pipelines.fit_prior",
        description="Train the PixelCNN prior on the index maps of a tokenizer run (its RUN/maps/).")
    run = cli.add_run_flags(parser)
    cli.add_run_choice_flag(run, "tokenizer", "model the maps of", default="the newest under OUTPUT_ROOT/tokenizer")
    run.add_argument("--condition", choices=CONDITIONS, default="auto",
                     help="none: one prior for all images; class: condition on the data set's labels; auto: class "
                          "when the maps carry two or more classes, else none (default: auto)")
    run.add_argument("--label-dropout", type=float, default=None,
                     help="with class conditioning, train on 'no label' this fraction of the time, which "
                          f"classifier-free guidance needs (default: {DEFAULT_LABEL_DROPOUT} when conditional)")
    run.add_argument("--eval-batch-size", type=cli.positive_int, default=1000,
                     help="grids per batch when evaluating (default: 1000; config.json keeps it, since the sums "
                          "differ in the last bits with it)")
    cli.add_config_flags(parser, PriorConfig, "model", skip=DERIVED_FROM_MAPS)
    cli.add_config_flags(parser, TrainConfig, "training", defaults=PRIOR_TRAIN_DEFAULTS)
    cli.add_renamed_flag(parser, "--ema-decay", "--weight-ema-decay")
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.resume:
        check_resumable(args.resume)
        run = PriorRun.load(args.resume)
        tokenizer_dir = recorded_path(args.resume, run.tokenizer.run)
    else:
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else newest_run(args.output_root, "tokenizer",
                                                                               must_have="maps/meta.json")
    train_config = run.train if args.resume else cli.config_from_args(TrainConfig, args)
    accelerator = make_accelerator(train_config)
    train_maps, test_maps = read_maps_for(tokenizer_dir)
    if args.resume:  # the maps it was trained on, still
        if train_maps.meta.weights_sha256 != run.tokenizer.weights_sha256:
            raise ValueError(f"prior run {args.resume} was trained on maps of other tokenizer weights than those now "
                             f"in {tokenizer_dir} (SHA-256 differs): start a new prior run")
        if (run.top is not None) != (train_maps.levels == 2):
            raise ValueError(f"prior run {args.resume} models {1 if run.top is None else 2} level(s) of codes, the "
                             f"maps in {tokenizer_dir} have {train_maps.levels}")
    else:
        run = new_prior_run(tokenizer_dir, train_maps, cli.config_from_args(PriorConfig, args), train_config,
                            args.condition, args.label_dropout, args.eval_batch_size)
        check_one_batch(len(train_maps.maps), train_config)
    # config.json names the tokenizer run relative to the new run's folder: no folder of this machine in it.
    config = lambda folder: dataclasses.replace(run, tokenizer=dataclasses.replace(
        run.tokenizer, run=path_from(folder, tokenizer_dir))).to_dict()
    with open_run_dir(accelerator, "prior", config, resume_dir=args.resume and Path(args.resume),
                      output_root=args.output_root, run_name=args.run_name,
                      copies=tokenizer_copy(tokenizer_dir)) as run_dir:
        train_prior(run, run_dir, train_maps, test_maps, accelerator, resume=bool(args.resume))


def train_prior(run, run_dir, train_maps, test_maps, accelerator, resume):
    """Train the prior of run (a PriorRun) in run_dir, then write its weights and results.json."""
    torch.manual_seed(run.train.seed)
    model = run.build()
    grids = " and ".join("x".join(map(str, c.token_shape)) for c in (run.top, run.model) if c is not None)
    accelerator.print(f"prior: {run.model.arch}, {model.num_parameters():,} parameters, grid {grids}, "
                      f"{run.model.codebook_size} codes, {len(train_maps.maps)} training grids -> {run_dir}")
    test_set = MapDataset(test_maps)
    conditional = run.model.num_classes > 0
    evaluate = lambda m: bits_per_token(m, test_set, run.eval_batch_size, accelerator.device, conditional)
    step = functools.partial(prior_step, label_dropout=run.label_dropout, num_classes=run.model.num_classes)
    started = time.perf_counter()
    model, metrics, averaged = train(model, MapDataset(train_maps), step, run.train, run_dir, accelerator,
                                     resume=resume, description="fit prior", evaluate=evaluate)
    train_seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        save_run_weights(run_dir, model.state_dict(), averaged)
        results = test_results(model, averaged, test_set, run, accelerator.device)
        finish_run(run_dir, {**results, "train_seconds_this_session": train_seconds,
                             "train_grids_per_s": mean_items_per_s(metrics)})
        accelerator.print(f"test {results['test_bits_per_token']:.4f} bits per token, "
                          f"{results['test_bits_per_image']:.2f} bits per image -> {run_dir}")


if __name__ == "__main__":
    cli.run(main, build_parser)
