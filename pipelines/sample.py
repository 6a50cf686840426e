"""Draw token grids from a trained prior, decode them with its tokenizer, write images.

    python -m pipelines.sample --n 64                       # newest prior run -> checkpoints/samples/<time>/
    python -m pipelines.sample --n 16 --label 7 --guidance-scale 3
    python -m pipelines.sample --n 16 --label none          # a conditional prior's "no label" (unconditional) draw
    python -m pipelines.sample --n 8 --complete shoe.png --keep-rows 3

As a library: images, tokens = sample_images("checkpoints/prior/RUN", 16, temperature=0.9)
"""

import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import prior
from evaluation.pictures import enlarged
from pipelines import cli
from pipelines.data import write_index_maps
from pipelines.runs import check_can_write_in, newest_run, write_json
from pipelines.train import TrainConfig, make_accelerator
from prior.sampling import NO_LABEL, SamplingConfig, resolve_labels, sample_tokens, settings_for
from tokenizer import Tokenizer


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.sample",
                                description="Sample token grids from a prior, decode them, and write images.")
    p = parser.add_argument
    p("--prior", metavar="RUN_DIR", default=None,
      help="prior run to sample from (default: the newest under OUTPUT_ROOT/prior)")
    p("--output-root", default="checkpoints", help="where runs are found and samples go (default: checkpoints)")
    p("--out", default=None, help="output folder (default: a new OUTPUT_ROOT/samples/<time>)")
    p("--overwrite", action="store_true", help="replace --out if it exists already (default: refuse)")
    p("--n", type=int, default=64, help="number of samples (default: 64)")
    p("--batch-size", type=int, default=64, help="grids sampled at once (default: 64)")
    p("--seed", type=int, default=0, help="the same seed on the same device gives the same images (default: 0)")
    add_sampling_flags(parser)
    p("--complete", metavar="IMAGE", default=None,
      help="an image to complete: keep its first --keep-rows token rows and sample the rest")
    p("--keep-rows", type=int, default=None, help="token rows of --complete to keep (default: half the grid)")
    p("--sampler", choices=["cached", "naive"], default="cached",
      help="cached: fast generation (Ramachandran et al. 2017); naive: the whole network per position; "
           "both give the same grids (default: cached)")
    p("--mixed-precision", choices=["no", "fp16", "bf16"], default="no", help="through accelerate (default: no)")
    return parser


def add_sampling_flags(parser):
    """The flags of how tokens are drawn, shared with pipelines.evaluate; their defaults are SamplingConfig's."""
    defaults = SamplingConfig()
    p = parser.add_argument
    p("--temperature", type=float, default=None,
      help=f"divide the logits by this; < 1 is more conservative (default: {defaults.temperature})")
    p("--top-k", type=int, default=None,
      help=f"sample only among the k likeliest tokens (default: {defaults.top_k or 'all'})")
    p("--top-p", type=float, default=None,
      help=f"nucleus sampling: the likeliest tokens holding this mass (default: {defaults.top_p or 'off'})")
    p("--label", default=None,
      help=f"class to sample, by index or by name, for a class-conditional prior; {NO_LABEL!r} samples it with "
           "no label (default: classes in the mix of the training split, e.g. a class-balanced mosaic)")
    p("--guidance-scale", type=float, default=None,
      help="classifier-free guidance s: uncond + s * (cond - uncond), for a class-conditional prior trained "
           f"with label dropout (default: {defaults.guidance_scale} where there are labels, else 1)")


def load_pair(prior_dir, device, weights=None):
    """The prior (its averaged weights if kept, or the weights file named) and the tokenizer it was trained for;
    a changed tokenizer is a one-line error."""
    model, config = prior.load(prior_dir, device, weights)
    try:
        tokenizer_dir, expected = Path(config["tokenizer"]["run"]), config["tokenizer"]["weights_sha256"]
    except KeyError:
        raise ValueError(f"{Path(prior_dir) / 'config.json'} does not name the tokenizer it was trained for") from None
    if not (tokenizer_dir / "model.safetensors").exists():
        raise ValueError(f"the tokenizer this prior was trained for, {tokenizer_dir}, is missing")
    tokenizer = Tokenizer.load(tokenizer_dir, device=device)
    if tokenizer.weights_sha256 != expected:
        raise ValueError(f"the tokenizer weights in {tokenizer_dir} changed since the prior in {prior_dir} was "
                         "trained on its maps (SHA-256 differs)")
    if (tokenizer.codebook_size, tokenizer.token_shape) != (model.config.codebook_size, model.config.token_shape):
        raise ValueError(f"prior {prior_dir} and tokenizer {tokenizer_dir} disagree on codebook or grid size")
    return model, tokenizer, config


def read_image(path, tokenizer):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("L" if tokenizer.config.image_channels == 1 else "RGB")
            array = np.asarray(image).copy()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image {path} ({error})") from None
    size = tokenizer.config.image_size
    if array.shape[:2] != (size, size):
        raise ValueError(f"image {path} is {array.shape[1]}x{array.shape[0]}, the tokenizer takes {size}x{size}")
    tensor = torch.from_numpy(array)
    return (tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)).unsqueeze(0)


def sample_images(prior_dir, n, *, batch_size=64, seed=0, device="cpu", label=None, temperature=None, top_k=None,
                  top_p=None, guidance_scale=None, **kwargs):
    """From a prior run to images: (images (n, c, H, W) in [0, 1], tokens (n, h, w)), drawn as the command draws
    them: label None is the training split's class mix for a conditional prior, "none" its no-label draw;
    settings left None take SamplingConfig's defaults. kwargs go to prior.generate: sampler, prefix, keep_rows.
    """
    model, tokenizer, config = load_pair(prior_dir, device)
    labels = resolve_labels(label, n, config)
    settings = settings_for(labels, temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale)
    tokens = sample_tokens(model, n, batch_size, seed, device, labels=labels, **settings, **kwargs)
    return tokenizer.decode(tokens), tokens


def write_outputs(out, overwrite, write):
    """Build the output in a temporary folder beside out and rename it into place: never half an output."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists already: pass --overwrite or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(staging)
        os.chmod(staging, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


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
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists already: pass --overwrite or another --out")
    check_can_write_in(out.parent)
    started = time.perf_counter()
    model, tokenizer, config = load_pair(prior_dir, device)
    labels = resolve_labels(args.label, args.n, config)
    h, w = model.config.grid_height, model.config.grid_width
    settings = settings_for(labels, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            guidance_scale=args.guidance_scale)
    settings.update(sampler=args.sampler, labels=labels)
    original = None
    if args.complete:
        original = read_image(args.complete, tokenizer).to(device)
        keep_rows = h // 2 if args.keep_rows is None else args.keep_rows
        settings.update(prefix=tokenizer.encode(original).expand(args.n, *tokenizer.token_shape), keep_rows=keep_rows)
    elif args.keep_rows is not None:
        raise ValueError("--keep-rows needs --complete IMAGE")
    load_seconds = time.perf_counter() - started

    def open_progress(total):
        return tqdm(total=total, desc="sample", unit="pos", dynamic_ncols=True,
                    disable=not accelerator.is_main_process)

    with accelerator.autocast():
        started = time.perf_counter()
        tokens = sample_tokens(model, args.n, args.batch_size, args.seed, device, open_progress, **settings)
        sample_seconds = time.perf_counter() - started
    started = time.perf_counter()
    images = tokenizer.decode(tokens).float().cpu()
    decode_seconds = time.perf_counter() - started
    if not accelerator.is_main_process:
        return

    def write(folder):
        from torchvision.utils import make_grid, save_image  # seconds to import: not before there is work

        mosaic = enlarged(images if original is None else torch.cat([original.float().cpu() / 255, images]))
        save_image(make_grid(mosaic, nrow=math.ceil(math.sqrt(len(mosaic))), padding=2, pad_value=1.0),
                   folder / "grid.png", format="PNG")
        (folder / "images").mkdir()
        for i, image in enumerate(images):
            save_image(image, folder / "images" / f"{i:05d}.png", format="PNG")
        asked = np.full(len(tokens), -1, dtype=np.int64) if labels is None else labels.numpy()  # -1: no label
        write_index_maps(folder / "tokens", "samples", tokens.cpu().numpy(), asked, {
            "codebook_size": tokenizer.codebook_size, "grid_height": h, "grid_width": w,
            "depth": tokenizer.config.token_depth, "quantizer": tokenizer.config.quantizer, "dataset": "samples",
            "class_names": config.get("class_names"),
            "weights_sha256": tokenizer.weights_sha256, "tokenizer_run": str(tokenizer.run_dir.resolve())})
        write_json(folder / "sample.json", {
            "prior_run": str(prior_dir.resolve()), "tokenizer_run": str(tokenizer.run_dir.resolve()),
            "n": args.n, "batch_size": args.batch_size, "seed": args.seed, "device": str(device),
            "mixed_precision": args.mixed_precision, "label": args.label,
            "label_name": None if labels is None or args.label is None else config["class_names"][int(labels[0])],
            "class_counts": None if labels is None
            else np.bincount(labels.numpy(), minlength=len(config["class_names"])).tolist(),
            **{name: settings[name] for name in ("temperature", "top_k", "top_p", "guidance_scale")},
            "sampler": args.sampler, "complete": args.complete,
            "keep_rows": settings.get("keep_rows", 0),
            "seconds": {"load": load_seconds, "sample": sample_seconds, "decode": decode_seconds},
            "grids_per_s": args.n / max(sample_seconds, 1e-9)})

    write_outputs(out, args.overwrite, write)
    accelerator.print(f"{args.n} samples in {sample_seconds:.2f} s ({args.n / max(sample_seconds, 1e-9):.0f} grids/s) "
                      f"-> {out}/grid.png")


if __name__ == "__main__":
    cli.run(main)
