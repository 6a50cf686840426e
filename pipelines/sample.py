"""Draw token grids from a trained prior, decode them with its tokenizer, write images.

    python -m pipelines.sample --n 64                       # newest prior run -> checkpoints/samples/<time>/
    python -m pipelines.sample --n 16 --label 7 --guidance-scale 3
    python -m pipelines.sample --n 16 --label none          # a conditional prior's "no label" (unconditional) draw
    python -m pipelines.sample --n 8 --complete shoe.png --keep-rows 3

As a library: generation.ImageGenerator.load("checkpoints/prior/RUN").sample(16, temperature=0.9)
"""

import time
from pathlib import Path

import numpy as np
import torch

from generation import ImageGenerator, ProgressBar
from pipelines import cli
from store.images import read_image
from store.index_maps import write_index_maps
from store.pictures import save_mosaic, save_pngs
from store.runs import check_output_folder, newest_run, staged_folder, write_json
from training import TrainConfig, make_accelerator


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.sample",
                                description="Sample token grids from a prior, decode them, and write images.")
    p = parser.add_argument
    p("--prior", metavar="RUN_DIR", default=None,
      help="prior run to sample from (default: the newest under OUTPUT_ROOT/prior)")
    p("--output-root", default="checkpoints", help="where runs are found and samples go (default: checkpoints)")
    p("--out", default=None, help="output folder (default: a new OUTPUT_ROOT/samples/<time>)")
    p("--overwrite", action="store_true", help="replace --out if it exists already (default: refuse)")
    # torchrun's own parser takes --n for an abbreviation of one of its flags: --num-samples there.
    p("--n", "--num-samples", dest="n", type=int, default=64,
      help="number of samples (default: 64); under torchrun write --num-samples")
    p("--batch-size", type=int, default=64, help="grids sampled at once (default: 64)")
    p("--seed", type=int, default=0, help="the same seed on the same device gives the same images (default: 0)")
    cli.add_sampling_flags(parser)
    p("--complete", metavar="IMAGE", default=None,
      help="an image to complete: keep its first --keep-rows token rows and sample the rest")
    p("--keep-rows", type=int, default=None, help="token rows of --complete to keep (default: half the grid)")
    p("--sampler", choices=["cached", "naive"], default="cached",
      help="cached: fast generation (Ramachandran et al. 2017); naive: the whole network per position; "
           "both give the same grids (default: cached)")
    p("--mixed-precision", choices=["no", "fp16", "bf16"], default="no", help="through accelerate (default: no)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    accelerator = make_accelerator(TrainConfig(mixed_precision=args.mixed_precision))
    device = accelerator.device
    if args.n < 1:
        raise ValueError(f"--n must be positive, not {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, not {args.batch_size}")
    prior_dir = Path(args.prior) if args.prior else newest_run(args.output_root, "prior")
    out = Path(args.out) if args.out else Path(args.output_root) / "samples" / time.strftime("%Y%m%d-%H%M%S")
    check_output_folder(out, args.overwrite)
    started = time.perf_counter()
    generator = ImageGenerator.load(prior_dir, device)
    tokenizer, run = generator.tokenizer, generator.run
    completion, original = {}, None
    if args.complete:
        original = read_image(args.complete, *tokenizer.image_shape[:2]).to(device)
        keep_rows = tokenizer.grid_shape[0] // 2 if args.keep_rows is None else args.keep_rows
        encoded = tokenizer.encode(original)  # a pair (top, bottom) for a two-level tokenizer
        prefix = tuple(level.expand(args.n, *level.shape[1:]) for level in encoded) if isinstance(encoded, tuple) \
            else encoded.expand(args.n, *tokenizer.token_shape)
        completion = {"prefix": prefix, "keep_rows": keep_rows}
    elif args.keep_rows is not None:
        raise ValueError("--keep-rows needs --complete IMAGE")
    load_seconds = time.perf_counter() - started

    bar = ProgressBar(desc="sample", unit="pos", dynamic_ncols=True, disable=not accelerator.is_main_process)
    with accelerator.autocast():
        started = time.perf_counter()
        try:
            tokens, labels, settings = generator.sample_tokens(
                args.n, args.label, seed=args.seed, batch_size=args.batch_size, progress=bar, sampler=args.sampler,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                guidance_scale=args.guidance_scale, accelerator=accelerator, **completion)
        finally:
            bar.close()
        sample_seconds = time.perf_counter() - started
    started = time.perf_counter()
    images = generator.decode(tokens, args.batch_size, accelerator)
    top, tokens = tokens if isinstance(tokens, tuple) else (None, tokens)  # the bottom grids, and the top's
    decode_seconds = time.perf_counter() - started
    if not accelerator.is_main_process:
        return

    with staged_folder(out, args.overwrite) as folder:
        save_mosaic(folder / "grid.png",
                    images if original is None else torch.cat([original.float().cpu() / 255, images]))
        (folder / "images").mkdir()
        save_pngs(folder / "images", images)
        asked = np.full(len(tokens), -1, dtype=np.int64) if labels is None else labels.numpy()  # -1: no label
        write_index_maps(folder / "tokens", "samples", tokens.cpu().numpy(), asked,
                         tokenizer.map_metadata("samples", run.class_names),
                         top=None if top is None else top.cpu().numpy())
        write_json(folder / "sample.json", {
            "prior_run": str(prior_dir.resolve()), "tokenizer_run": str(tokenizer.run_dir.resolve()),
            "n": args.n, "batch_size": args.batch_size, "seed": args.seed, "device": str(device),
            "mixed_precision": args.mixed_precision, "label": args.label,
            "label_name": None if labels is None or args.label is None else run.class_names[int(labels[0])],
            "class_counts": None if labels is None
            else np.bincount(labels.numpy(), minlength=len(run.class_names)).tolist(),
            **settings, "sampler": args.sampler, "complete": args.complete,
            "keep_rows": completion.get("keep_rows", 0),
            "seconds": {"load": load_seconds, "sample": sample_seconds, "decode": decode_seconds},
            "grids_per_s": args.n / max(sample_seconds, 1e-9)})
    accelerator.print(f"{args.n} samples in {sample_seconds:.2f} s ({args.n / max(sample_seconds, 1e-9):.0f} grids/s) "
                      f"-> {out}/grid.png")


if __name__ == "__main__":
    cli.run(main)
