"""Encoding whole image sets into index-map files: a split streamed through a Tokenizer batch by batch (its usage
statistics, and its maps into a writer as they come), and a run's dump of both splits into RUN/maps/."""

import contextlib
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from store.images import SPLITS, load_images
from store.index_maps import writing_maps
from store.runs import MAPS_FOLDER
from tokenizer.quantizers import usage_stats
from tokenizer.tokenizer import Tokenizer, psnr
from training import batches_in_order


def encode_split(tokenizer, data, batch_size, reconstruct, desc, writer=None, accelerator=None):
    """Encode a split batch by batch: the usage histogram of each level of the hierarchy ({"bottom": counts},
    and "top" for two levels) and (if asked) the summed squared reconstruction error.

    data: an ImageSet (a lazy folder decodes each batch as it is sliced); writer: an IndexMapWriter that takes each
    batch's maps and labels as they come, so neither the split's images nor its maps are ever held whole.
    accelerator: with several processes, each encodes its share of the batches (training.shards) and the writer
    (the main process's) takes them all in order: the same bytes as one process writes.
    """
    depth, size = tokenizer.config.token_depth, tokenizer.codebook_size
    # Per level of the hierarchy, and within it per level of a residual quantizer.
    counts = {name: torch.zeros(depth, size, dtype=torch.long) for name in tokenizer.level_shapes}
    level_offsets = torch.arange(depth) * size

    def work(start, stop):
        batch = data.images[start:stop].to(tokenizer.device).float() / 255
        batch_error = 0.0
        if reconstruct:
            tokens, _, batch_error = tokenizer.reconstruct(batch)
        else:
            tokens = tokenizer.encode(batch)
        levels = zip(counts, tokens) if tokenizer.hierarchy == 2 else [("bottom", tokens)]
        return {name: level.cpu() for name, level in levels}, batch_error

    squared_error = 0.0
    batches = batches_in_order(accelerator, len(data), batch_size, work)
    for start, (by_level, batch_error) in tqdm(batches, total=math.ceil(len(data) / batch_size), desc=desc,
                                               leave=False, dynamic_ncols=True,
                                               disable=accelerator is not None and not accelerator.is_main_process):
        squared_error += batch_error
        for name, level in by_level.items():
            codes = level.reshape(-1, depth) + level_offsets
            counts[name] += torch.bincount(codes.flatten(), minlength=depth * size).reshape(depth, size)
        if writer is not None:
            top = by_level.get("top")
            writer.write(by_level["bottom"].numpy(), data.labels[start:start + len(by_level["bottom"])].numpy(),
                         None if top is None else top.numpy())
    return counts, squared_error


def level_usage_stats(counts):
    """Codebook health of encode_split's counts: the bottom level's usage_stats, and the top's prefixed "top_"."""
    stats = usage_stats(counts["bottom"])
    if "top" in counts:
        stats.update({f"top_{k}": v for k, v in usage_stats(counts["top"]).items()})
    return stats


def dump(run_dir, data_config, batch_size, accelerator, splits=None):
    """Encode both splits with the saved weights and write RUN/maps/; returns (the Tokenizer, per-split figures).

    splits: {"train": ImageSet, "test": ImageSet} already loaded (lazily for a folder), or None to load them here.
    """
    tokenizer = Tokenizer.load(run_dir, device=accelerator.device)
    # Both splits are read and checked (a folder's files up front, lazily) before a file is written. A folder is
    # decoded batch by batch and the maps go to their files as they come, so a dump of any size holds one batch.
    splits = splits or {split: load_images(data_config, split, lazy=True) for split in SPLITS}
    for data in splits.values():
        tokenizer.check_images(data.images.shape[1:], data_config.dataset)
    meta = tokenizer.map_metadata(data_config.dataset, splits["train"].class_names)
    sizes = {split: len(data) for split, data in splits.items()}
    results = {}
    # Every file of both splits is renamed into place only once both are complete (a failure leaves the old maps
    # whole), and meta.json, naming their SHA-256, is written after them.
    with writing_maps(Path(run_dir) / MAPS_FOLDER, meta, sizes) if accelerator.is_main_process \
            else contextlib.nullcontext({}) as writers:
        for split, data in splits.items():
            writer = writers.get(split)
            started = time.perf_counter()
            counts, squared_error = encode_split(tokenizer, data, batch_size, split == "test", f"dump {split}", writer,
                                                 accelerator)
            seconds = time.perf_counter() - started
            stats = level_usage_stats(counts)
            stats["dump_images_per_s"] = len(data) / max(seconds, 1e-9)
            if split == "test":
                stats["mse"] = squared_error / max(1, data.images.numel())
                stats["psnr"] = psnr(stats["mse"])
            if writer is not None:
                writer.details.update(stats)
            results[split] = {k: v for k, v in stats.items() if not k.endswith("usage_histogram")}
    return tokenizer, results
