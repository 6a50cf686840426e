"""Stage two: train the PixelCNN prior on the index maps that a tokenizer run dumped.

    python -m pipelines.fit_prior                                  # newest tokenizer run, default prior
    python -m pipelines.fit_prior --arch gated --tokenizer checkpoints/tokenizer/RUN
    python -m pipelines.fit_prior --condition class --label-dropout 0.1
    python -m pipelines.fit_prior --resume checkpoints/prior/RUN
"""

import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from pipelines import cli
from prior import PriorConfig, PriorRun
from prior.fit import bits_per_token, prior_step, read_maps_for
from prior.run import TokenizerReference, tokenizer_copy
from store.index_maps import MapDataset
from store.runs import (check_resumable, create_run_dir, new_run_dir, newest_run, remove_stale_temporaries,
                        save_run_weights, write_json)
from training import TrainConfig, check_one_batch, decided_by_main, make_accelerator, mean_items_per_s, train

DERIVED_FROM_MAPS = ("codebook_size", "grid_height", "grid_width", "num_classes", "depth")
# From BENCHMARKS.md ("Sample quality: the levers"): the learning rate of 1e-3 used before was 4x too low (1-epoch
# probes: 6.68 bits at 1e-3, 6.08 at 4e-3, 6.04 at 8e-3); bf16 where the hardware has it trains 1.4-1.6x faster at
# the same bits, so the default prior's 7 epochs take ~8 minutes on 2 CPU cores; the averaged weights sample better.
PRIOR_TRAIN_DEFAULTS = {"epochs": 7, "learning_rate": 4e-3, "mixed_precision": "auto", "weight_ema_decay": 0.999}
DEFAULT_LABEL_DROPOUT = 0.1


def build_parser():
    parser = cli.ArgumentParser(
        prog="python -m pipelines.fit_prior",
        description="Train the PixelCNN prior on the index maps of a tokenizer run (its RUN/maps/).")
    run = cli.add_run_flags(parser, "prior")
    run.add_argument("--tokenizer", metavar="RUN_DIR", default=None,
                     help="tokenizer run whose maps to model (default: the newest under OUTPUT_ROOT/tokenizer)")
    run.add_argument("--condition", choices=["auto", "none", "class"], default="auto",
                     help="none: one prior for all images; class: condition on the data set's labels; auto: class "
                          "when the maps carry two or more classes, else none (default: auto)")
    run.add_argument("--label-dropout", type=float, default=None,
                     help="with class conditioning, train on 'no label' this fraction of the time, which "
                          f"classifier-free guidance needs (default: {DEFAULT_LABEL_DROPOUT} when conditional)")
    run.add_argument("--eval-batch-size", type=int, default=1000,
                     help="grids per batch when evaluating (default: 1000; config.json keeps it, since the sums "
                          "differ in the last bits with it)")
    cli.add_config_flags(parser, PriorConfig, "model", skip=DERIVED_FROM_MAPS)
    cli.add_config_flags(parser, TrainConfig, "training", defaults=PRIOR_TRAIN_DEFAULTS)
    cli.add_renamed_flag(parser, "--ema-decay", "--weight-ema-decay")
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.resume:
        run_dir = Path(args.resume)
        check_resumable(run_dir)
        run = PriorRun.load(run_dir)
        tokenizer_dir = Path(run.tokenizer.run)
    else:
        if args.label_dropout is not None and not 0 <= args.label_dropout < 1:
            raise ValueError(f"--label-dropout must lie in [0, 1), not {args.label_dropout}")
        if args.label_dropout and args.condition == "none":
            raise ValueError("--label-dropout needs class conditioning (--condition class or auto)")
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else newest_run(args.output_root, "tokenizer",
                                                                               must_have="maps/meta.json")
    train_config = run.train if args.resume else cli.config_from_args(TrainConfig, args)
    accelerator = make_accelerator(train_config)
    train_maps, test_maps = read_maps_for(tokenizer_dir)
    meta = train_maps.meta
    if args.resume and meta["weights_sha256"] != run.tokenizer.weights_sha256:
        raise ValueError(f"prior run {run_dir} was trained on maps of other tokenizer weights than those now in "
                         f"{tokenizer_dir} (SHA-256 differs): start a new prior run")
    if not args.resume:
        num_classes = len(meta.get("class_names") or []) if args.condition != "none" else 0
        if args.condition == "class" and num_classes < 2:
            raise ValueError(f"--condition class needs labelled maps; {tokenizer_dir} has {num_classes} class(es)")
        if num_classes < 2:
            num_classes = 0  # auto on maps of one class: unconditional
        if not num_classes and args.label_dropout:
            raise ValueError(f"--label-dropout needs class conditioning; the maps of {tokenizer_dir} have no classes")
        label_dropout = (DEFAULT_LABEL_DROPOUT if args.label_dropout is None else args.label_dropout) if num_classes \
            else 0.0
        shape = dict(codebook_size=meta["codebook_size"], num_classes=num_classes, depth=meta.get("depth", 1))
        top_config = None
        if train_maps.levels == 2:  # VQ-VAE-2: a top prior, and the bottom prior conditioned on the top maps
            top_config = cli.config_from_args(PriorConfig, args, grid_height=meta["top_grid_height"],
                                              grid_width=meta["top_grid_width"], **shape)
            shape.update(condition_codebook_size=meta["codebook_size"], condition_height=meta["top_grid_height"],
                         condition_width=meta["top_grid_width"])
        model_config = cli.config_from_args(PriorConfig, args, grid_height=meta["grid_height"],
                                            grid_width=meta["grid_width"], **shape)
        run = PriorRun(top=top_config,
            model=model_config, train=train_config,
            tokenizer=TokenizerReference(run=str(tokenizer_dir.resolve()), weights_sha256=meta["weights_sha256"]),
            label_dropout=label_dropout, eval_batch_size=args.eval_batch_size,
            class_names=meta.get("class_names") if num_classes else None,
            class_counts=np.bincount(np.asarray(train_maps.labels), minlength=num_classes).tolist()
            if num_classes else None)
        check_one_batch(len(train_maps.maps), train_config)
        run_dir = decided_by_main(accelerator, lambda: new_run_dir(args.output_root, "prior", args.run_name))

    if accelerator.is_main_process:
        if args.resume:
            remove_stale_temporaries(run_dir)  # what a killed writer left
        else:
            create_run_dir(run_dir, run.to_dict(), copies=tokenizer_copy(tokenizer_dir))
    accelerator.wait_for_everyone()

    if (run.top is not None) != (train_maps.levels == 2):
        raise ValueError(f"prior run {run_dir} models {1 if run.top is None else 2} level(s) of codes, the maps in "
                         f"{tokenizer_dir} have {train_maps.levels}")
    model_config, eval_batch_size = run.model, run.eval_batch_size
    torch.manual_seed(train_config.seed)
    model = run.build()
    grids = " and ".join("x".join(map(str, c.token_shape)) for c in (run.top, model_config) if c is not None)
    accelerator.print(f"prior: {model_config.arch}, {model.num_parameters():,} parameters, grid {grids}, "
                      f"{model_config.codebook_size} codes, {len(train_maps.maps)} training grids -> {run_dir}")
    test_set = MapDataset(test_maps)
    conditional = model_config.num_classes > 0
    evaluate = lambda m: bits_per_token(m, test_set, eval_batch_size, accelerator.device, conditional)
    step = functools.partial(prior_step, label_dropout=run.label_dropout, num_classes=model_config.num_classes)
    started = time.perf_counter()
    model, metrics, averaged = train(model, MapDataset(train_maps), step, train_config, run_dir, accelerator,
                                     resume=bool(args.resume), description="fit prior", evaluate=evaluate)
    train_seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        save_run_weights(run_dir, model.state_dict(), averaged)
        raw = bits_per_token(model, test_set, eval_batch_size, accelerator.device, conditional)
        bits = raw
        if averaged is not None:  # the weights sampled from (Prior.load prefers them)
            model.load_state_dict(averaged)
            bits = bits_per_token(model, test_set, eval_batch_size, accelerator.device, conditional)
        test_bits = bits["bits_per_token"]
        tokens_per_grid = sum(math.prod(c.token_shape) for c in (run.top, model_config) if c is not None)
        write_json(run_dir / "results.json", {
            "test_bits_per_token": test_bits, "test_bits_per_image": test_bits * tokens_per_grid,
            **{f"test_{name}": value for name, value in bits.items() if name != "bits_per_token"},
            "test_bits_per_token_raw_weights": raw["bits_per_token"],
            "parameters": model.num_parameters(), "train_seconds_this_session": train_seconds,
            "train_grids_per_s": mean_items_per_s(metrics)})
        accelerator.print(f"test {test_bits:.4f} bits per token, {test_bits * tokens_per_grid:.2f} bits per image "
                          f"-> {run_dir}")


if __name__ == "__main__":
    cli.run(main)
