"""Draw token grids from a trained prior, decode them with its tokenizer, write images.

    python -m pipelines.sample --n 64                       # newest prior run -> checkpoints/samples/<time>/
                                                            # (with none: the shipped checkpoints/fashion-mnist)
    python -m pipelines.sample --prior owner/name           # a run shared on the Hugging Face Hub
    python -m pipelines.sample --n 16 --label 7 --guidance-scale 3
    python -m pipelines.sample --n 16 --label none          # a conditional prior's "no label" (unconditional) draw
    python -m pipelines.sample --n 8 --complete shoe.png --keep-rows 3
    python -m pipelines.sample --n 10000 --npz              # also samples.npz, for other projects' evaluators

As a library: generation.ImageGenerator.load("checkpoints/prior/RUN").sample(16, temperature=0.9)
"""

import contextlib
import itertools
import math
import time

import numpy as np
import torch

from generation import ImageGenerator, ProgressBar, check_memory
from generation.pretrained import choose_prior
from pipelines import cli
from store.images import read_image
from store.index_maps import smallest_uint_dtype, writing_maps
from store.pictures import NpzImageWriter, save_mosaic, save_pngs
from store.runs import check_disk_space, check_output_folder, output_lock, path_from, staged_folder, write_json
from training import TrainConfig, make_accelerator

NO_LABEL_ID = -1  # the label written beside a grid drawn with no class asked for


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.sample",
                                description="Sample token grids from a prior, decode them, and write images.")
    cli.add_run_choice_flag(parser, "prior", "sample from",
                            default="the newest under OUTPUT_ROOT/prior; with none, the shipped Fashion-MNIST "
                                    "generator in checkpoints/fashion-mnist")
    cli.add_output_root_flag(parser)
    cli.add_output_flags(parser, "samples")
    cli.add_sample_count_flag(parser, 64)
    cli.add_batch_size_flag(parser, "grids sampled and decoded", 64)
    cli.add_sampling_flags(parser)
    cli.add_mosaic_flag(parser)
    p = parser.add_argument
    p("--complete", metavar="IMAGE", default=None,
      help="an image to complete: keep its first --keep-rows token rows and sample the rest")
    p("--keep-rows", type=cli.non_negative_int, default=None,
      help="token rows of --complete to keep (default: half the grid)")
    p("--sampler", choices=["cached", "naive"], default="cached",
      help="cached: fast generation (Ramachandran et al. 2017); naive: the whole network per position; "
           "both give the same grids (default: cached)")
    p("--npz", action="store_true",
      help="also write every image into OUT/samples.npz, arr_0 uint8 (n, H, W, 3) (grey repeated), as the "
           "reference-batch evaluators of guided-diffusion, LlamaGen and VAR read it; `python -m pipelines.evaluate "
           "--samples` scores it")
    cli.add_mixed_precision_flag(parser, "no")
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    precision = TrainConfig(mixed_precision=args.mixed_precision)  # "auto" resolved for this machine
    accelerator = make_accelerator(precision)
    if args.keep_rows is not None and not args.complete:
        raise ValueError("--keep-rows needs --complete IMAGE")
    prior_dir = choose_prior(args.prior, args.output_root)
    out = cli.output_folder(args, "samples")
    started = time.perf_counter()
    generator = ImageGenerator.load(prior_dir, accelerator.device)
    check_output_folder(out, args.overwrite, inputs=[prior_dir, generator.tokenizer.run_dir, args.complete])
    with output_lock(out, accelerator.is_main_process):  # a second writer of --out is refused before any work
        write_samples(args, out, generator, prior_dir, accelerator, precision, time.perf_counter() - started)


def write_samples(args, out, generator, prior_dir, accelerator, precision, load_seconds):
    """Draw args.n_samples grids from generator, decode them, and write the output folder out whole."""
    tokenizer, run, device = generator.tokenizer, generator.run, accelerator.device
    n, batch_size = args.n_samples, args.batch_size
    check_room(generator, args, out)
    completion, original = {}, None
    if args.complete:
        original = read_image(args.complete, *tokenizer.image_shape[:2]).to(device)
        completion = generator.completion(original, n, args.keep_rows)
    labels, sampling = generator.request(n, args.label, **cli.sampling_settings(args))

    main_process = accelerator.is_main_process
    bar = ProgressBar(desc="sample", unit="pos", dynamic_ncols=True, disable=not main_process)
    shown = []  # the samples of the mosaic
    seconds = {"load": load_seconds, "sample": 0.0, "write": 0.0}
    started = time.perf_counter()
    with accelerator.autocast():
        # Each batch is drawn, decoded and written (by the main process) before the next one: memory stays flat in
        # --n. The first is drawn before the output folder is made: a setting generate() refuses writes nothing.
        batches = generator.draw_batches(n, labels, sampling, seed=args.seed, batch_size=batch_size, progress=bar,
                                         accelerator=accelerator, decode=True, sampler=args.sampler, **completion)
        try:
            first = next(batches)
        except BaseException:
            bar.close()
            raise
    with staged_folder(out, args.overwrite) if main_process else contextlib.nullcontext() as folder:
        with (writing_maps(folder / "tokens", tokenizer.map_metadata("samples", run.class_names), {"samples": n})
              if main_process else contextlib.nullcontext({})) as writers, \
                (NpzImageWriter(folder / "samples.npz", n, *tokenizer.image_shape[1:]) if main_process and args.npz
                 else contextlib.nullcontext()) as npz, accelerator.autocast():
            if main_process:
                (folder / "images").mkdir()
            try:
                for start, tokens, images in itertools.chain([first], batches):
                    written = time.perf_counter()
                    if main_process:
                        write_batch(folder, writers["samples"], start, tokens, images, labels)
                        if npz is not None:
                            npz.write(images)
                        shown.append(images[:max(0, args.mosaic - sum(len(s) for s in shown))])
                    seconds["write"] += time.perf_counter() - written
            finally:
                bar.close()
            seconds["sample"] = time.perf_counter() - started - seconds["write"]
        if not main_process:
            return
        # With --complete the original comes first.
        save_mosaic(folder / "grid.png", torch.cat(shown if original is None else [original.float().cpu() / 255,
                                                                                    *shown]))
        write_json(folder / "sample.json", _record(args, out, generator, prior_dir, precision, device, labels,
                                                   sampling, completion, seconds))
    print(f"{n} samples in {seconds['sample']:.2f} s ({n / max(seconds['sample'], 1e-9):.0f} grids/s, decoded) "
          f"-> {out}/grid.png")


def _record(args, out, generator, prior_dir, precision, device, labels, sampling, completion, seconds):
    """sample.json: what was drawn, from which runs, how, and in how many seconds."""
    n, class_names = args.n_samples, generator.run.class_names
    return {
        "prior_run": path_from(out, prior_dir), "tokenizer_run": path_from(out, generator.tokenizer.run_dir),
        "n": n, "batch_size": args.batch_size, "seed": args.seed, "device": str(device),
        "mixed_precision": precision.mixed_precision, "label": args.label,
        "label_name": None if labels is None or args.label is None else class_names[int(labels[0:1][0])],
        "class_counts": None if labels is None else labels.counts(),
        **sampling.record(), "sampler": args.sampler, "complete": args.complete, "npz": args.npz,
        "keep_rows": completion.get("keep_rows", 0), "seconds": seconds,
        "grids_per_s": n / max(seconds["sample"], 1e-9)}


def check_room(generator, args, out):
    """Before any work, a one-line error for a request that cannot fit: a batch and the mosaic in memory; the
    tokens, labels, PNGs (a block each at least) and the .npz on the disk of out."""
    n, batch_size, tokenizer = args.n_samples, args.batch_size, generator.tokenizer
    check_memory(generator.batch_bytes(min(batch_size, n)) + args.mosaic * generator.bytes_per_sample(),
                 f"a batch of {min(batch_size, n)} samples", "lower --batch-size")
    token_bytes = sum(math.prod(shape) for shape in tokenizer.level_shapes.values()) \
        * np.dtype(smallest_uint_dtype(tokenizer.codebook_size)).itemsize + 8
    height, width = tokenizer.image_shape[1:]
    npz_bytes = n * height * width * 3 if args.npz else 0
    check_disk_space(out.parent, n * token_bytes + npz_bytes, n + 8, f"{n} samples",
                     "sample fewer (--n), or write them elsewhere (--out)")


def write_batch(folder, writer, start, tokens, images, labels):
    """A batch of samples into the folder: its PNGs (images/<index>.png), its tokens and the labels asked for
    (NO_LABEL_ID where none was) into the index maps."""
    save_pngs(folder / "images", images, first=start)
    top, bottom = tokens if isinstance(tokens, tuple) else (None, tokens)
    asked = torch.full((len(bottom),), NO_LABEL_ID) if labels is None else labels[start:start + len(bottom)]
    writer.write(bottom.numpy(), asked.numpy(), None if top is None else top.numpy())


if __name__ == "__main__":
    cli.run(main, build_parser)
