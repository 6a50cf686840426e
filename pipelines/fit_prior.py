"""Stage two: train the PixelCNN prior on the index maps that a tokenizer run dumped.

    python -m pipelines.fit_prior                                  # newest tokenizer run, gated PixelCNN
    python -m pipelines.fit_prior --arch pixelcnn --tokenizer checkpoints/tokenizer/RUN
    python -m pipelines.fit_prior --condition class --label-dropout 0.1
    python -m pipelines.fit_prior --resume checkpoints/prior/RUN
"""

import dataclasses
import functools
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pipelines import cli
from pipelines.data import MapDataset, read_index_maps
from pipelines.runs import (AVERAGED_WEIGHTS, create_run_dir, file_sha256, new_run_dir, newest_run, read_run_config,
                           remove_stale_temporaries, save_tensors, write_json)
from pipelines.train import TrainConfig, check_one_batch, decided_by_main, make_accelerator, train
from prior.model import Prior, PriorConfig

DERIVED_FROM_MAPS = ("codebook_size", "grid_height", "grid_width", "num_classes", "depth")
# From BENCHMARKS.md ("Sample quality: the levers"): the learning rate of 1e-3 used before was 4x too low (1-epoch
# probes: 6.68 bits at 1e-3, 6.08 at 4e-3, 6.04 at 8e-3); bf16 where the hardware has it trains 1.4-1.6x faster at
# the same bits, so the default prior's 7 epochs take ~8 minutes on 2 CPU cores; the averaged weights sample better.
PRIOR_TRAIN_DEFAULTS = {"epochs": 7, "learning_rate": 4e-3, "mixed_precision": "auto", "ema_decay": 0.999}
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
    return parser


def prior_step(model, batch, label_dropout, num_classes):
    tokens, labels = batch
    if num_classes:
        # "No label" is class index num_classes; dropping labels trains the unconditional half of guidance.
        dropped = torch.rand(labels.shape, device=labels.device) < label_dropout
        labels = torch.where(dropped, torch.full_like(labels, num_classes), labels)
    else:
        labels = None
    logits = model(tokens, labels)
    nats = F.cross_entropy(logits.float(), tokens)
    return nats, {"loss": nats.item(), "bits_per_token": nats.item() / math.log(2)}


@torch.no_grad()
def bits_per_token(model, dataset, batch_size, device, conditional):
    """Mean negative log-likelihood of the split, in bits per token (labels given when conditional)."""
    total_nats, total_tokens = 0.0, 0
    for tokens, labels in DataLoader(dataset, batch_size=batch_size):
        tokens = tokens.to(device)
        logits = model(tokens, labels.to(device) if conditional else None)
        total_nats += F.cross_entropy(logits.float(), tokens, reduction="sum").item()
        total_tokens += tokens.numel()
    return total_nats / max(1, total_tokens) / math.log(2)


def read_maps_for(tokenizer_dir):
    """The tokenizer run's (train, test) maps, refused in one line when not made by that run's weights."""
    weights = Path(tokenizer_dir) / "model.safetensors"
    if not weights.exists():
        raise ValueError(f"tokenizer run {tokenizer_dir} has no model.safetensors")
    weights_sha256 = file_sha256(weights)
    splits = [read_index_maps(Path(tokenizer_dir) / "maps", split) for split in ("train", "test")]
    if any(maps.meta["weights_sha256"] != weights_sha256 for maps in splits):
        raise ValueError(f"the index maps in {tokenizer_dir}/maps were made by other weights than "
                         f"{weights} (SHA-256 differs): run fit_tokenizer --dump-only {tokenizer_dir}")
    return splits


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.resume:
        run_dir = Path(args.resume)
        saved = read_run_config(run_dir)
        try:
            model_config, train_config = PriorConfig(**saved["model"]), TrainConfig(**saved["train"])
            tokenizer_dir, label_dropout = Path(saved["tokenizer"]["run"]), saved["label_dropout"]
            eval_batch_size = saved.get("eval_batch_size", 1000)
        except (KeyError, TypeError) as error:
            raise ValueError(f"{run_dir / 'config.json'} is not a prior run config ({error})") from None
    else:
        if args.label_dropout is not None and not 0 <= args.label_dropout < 1:
            raise ValueError(f"--label-dropout must lie in [0, 1), not {args.label_dropout}")
        if args.label_dropout and args.condition == "none":
            raise ValueError("--label-dropout needs class conditioning (--condition class or auto)")
        tokenizer_dir = Path(args.tokenizer) if args.tokenizer else newest_run(args.output_root, "tokenizer",
                                                                               must_have="maps/meta.json")
        train_config = cli.config_from_args(TrainConfig, args)
        eval_batch_size = args.eval_batch_size
    accelerator = make_accelerator(train_config)
    train_maps, test_maps = read_maps_for(tokenizer_dir)
    meta = train_maps.meta
    if args.resume and meta["weights_sha256"] != saved["tokenizer"].get("weights_sha256"):
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
        model_config = cli.config_from_args(PriorConfig, args, codebook_size=meta["codebook_size"],
                                            grid_height=meta["grid_height"], grid_width=meta["grid_width"],
                                            num_classes=num_classes, depth=meta.get("depth", 1))
        check_one_batch(len(train_maps.maps), train_config)
        run_dir = decided_by_main(accelerator, lambda: new_run_dir(args.output_root, "prior", args.run_name))

    if accelerator.is_main_process:
        if args.resume:
            remove_stale_temporaries(run_dir)  # what a killed writer left
        else:
            create_run_dir(run_dir, {
                "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config),
                "label_dropout": label_dropout, "eval_batch_size": eval_batch_size,
                # The label encoding travels with the run: class i means class_names[i] after any reload.
                "class_names": meta.get("class_names") if model_config.num_classes else None,
                # How often each class occurs in training: a sampler told no class draws them in this mix.
                "class_counts": np.bincount(np.asarray(train_maps.labels), minlength=model_config.num_classes
                                            ).tolist() if model_config.num_classes else None,
                "tokenizer": {"run": str(tokenizer_dir.resolve()), "weights_sha256": meta["weights_sha256"]}})
    accelerator.wait_for_everyone()

    torch.manual_seed(train_config.seed)
    model = Prior(model_config)
    accelerator.print(f"prior: {model_config.arch}, {model.num_parameters():,} parameters, grid "
                      f"{'x'.join(map(str, model_config.token_shape))}, {model_config.codebook_size} codes, "
                      f"{len(train_maps.maps)} training grids -> {run_dir}")
    test_set = MapDataset(test_maps)
    conditional = model_config.num_classes > 0
    evaluate = lambda m: {"bits_per_token": bits_per_token(m, test_set, eval_batch_size, accelerator.device,
                                                           conditional)}
    step = functools.partial(prior_step, label_dropout=label_dropout, num_classes=model_config.num_classes)
    started = time.perf_counter()
    model, metrics, averaged = train(model, MapDataset(train_maps), step, train_config, run_dir, accelerator,
                                     resume=bool(args.resume), description="fit prior", evaluate=evaluate)
    train_seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        save_tensors(run_dir / "model.safetensors", model.state_dict())
        raw_bits = bits_per_token(model, test_set, eval_batch_size, accelerator.device, conditional)
        test_bits = raw_bits
        if averaged is not None:  # the weights sampled from (prior.load prefers them)
            save_tensors(run_dir / AVERAGED_WEIGHTS, averaged)
            model.load_state_dict(averaged)
            test_bits = bits_per_token(model, test_set, eval_batch_size, accelerator.device, conditional)
        tokens_per_grid = math.prod(model_config.token_shape)
        rates = [m["items_per_s"] for m in metrics if "items_per_s" in m]
        write_json(run_dir / "results.json", {
            "test_bits_per_token": test_bits, "test_bits_per_image": test_bits * tokens_per_grid,
            "test_bits_per_token_raw_weights": raw_bits,
            "parameters": model.num_parameters(), "train_seconds_this_session": train_seconds,
            "train_grids_per_s": sum(rates) / len(rates) if rates else None})
        accelerator.print(f"test {test_bits:.4f} bits per token, {test_bits * tokens_per_grid:.2f} bits per image "
                          f"-> {run_dir}")


if __name__ == "__main__":
    cli.run(main)
