"""Turn token maps back into pictures with the tokenizer that made them (or any maps of the right shape and range).

    python -m pipelines.decode --tokenizer checkpoints/tokenizer/RUN --tokens tokens/ --out pictures/
    python -m pipelines.decode --tokenizer RUN --tokens my_maps.npy --out pictures/      # a plain (n, h, w) array
    python -m pipelines.decode --tokenizer RUN --tokens bottom.npy --top-tokens top.npy --out pictures/  # two levels

--tokens is a folder in the index-map format (pipelines.encode's output, a run's RUN/maps/, a sample's tokens/),
one of its <split>_maps.npy files, or a plain .npy of integers (n, h, w[, depth]) in 0..codebook size - 1. DIR
gets images/00000.png... (row i of the maps is image i), grid.png (the first --mosaic images, enlarged) and
decode.json.
"""

import contextlib
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipelines import cli
from store.index_maps import read_index_maps
from store.pictures import save_mosaic, save_pngs
from store.runs import check_output_folder, read_json, staged_folder, write_json
from tokenizer import Tokenizer
from training import TrainConfig, batches_in_order, make_accelerator


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.decode",
                                description="Decode token maps into images with a tokenizer run.")
    p = parser.add_argument
    p("--tokenizer", metavar="RUN_DIR", required=True, help="the tokenizer run to decode with")
    p("--tokens", metavar="PATH", required=True,
      help="a folder of index maps (meta.json), one of its <split>_maps.npy, or a plain .npy (n, h, w[, depth])")
    p("--top-tokens", metavar="FILE", default=None,
      help="for a two-level tokenizer and a plain .npy: the top maps (n, h', w'), row for row")
    p("--split", default=None, help="the split of a folder of index maps (default: its only one)")
    p("--out", metavar="DIR", required=True, help="output folder, written whole or not at all")
    p("--overwrite", action="store_true", help="replace --out if it exists already (default: refuse)")
    p("--batch-size", type=int, default=500, help="maps decoded at once (default: 500)")
    p("--mosaic", type=int, default=64, help="images shown in grid.png (default: 64)")
    return parser


def plain_tokens(path, shape, codebook_size, name):
    """A plain .npy of token maps, memory-mapped, with its shape, dtype and range checked in one line each."""
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{name} {path} is not a readable .npy file of integers ({error})") from None
    if tokens.dtype.kind not in "ui":
        raise ValueError(f"{name} {path} holds {tokens.dtype}, not integers")
    if tokens.shape[1:] != tuple(shape) or tokens.ndim != 1 + len(shape):
        raise ValueError(f"{name} {path} has shape {tokens.shape}, the tokenizer takes "
                         f"(n, {', '.join(map(str, shape))})")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
        raise ValueError(f"{name} {path} holds tokens {int(tokens.min())}..{int(tokens.max())}, outside the "
                         f"codebook's 0..{codebook_size - 1}")
    return tokens


def read_tokens(args, tokenizer):
    """[top maps, bottom maps] (or [maps]) as memory-mapped arrays, and where they came from."""
    path = Path(args.tokens)
    if not path.exists():
        raise ValueError(f"token file or folder {path} does not exist")
    folder = path if path.is_dir() else path.parent
    meta_path = folder / "meta.json"
    if path.is_dir() and not meta_path.exists():
        raise ValueError(f"no index maps in {folder} (meta.json missing)")
    # The splits of the maps folder the tokens are, or lie in; a plain .npy has none.
    splits = read_json(meta_path).get("splits", {}) if meta_path.exists() else {}
    if path.is_dir():
        split = args.split
    else:  # one of a maps folder's files: which split is it?
        split = next((name for name, entry in splits.items() if entry.get("maps", {}).get("file") == path.name), None)
    if split is not None or path.is_dir():
        if args.top_tokens:
            raise ValueError("--top-tokens goes with a plain .npy; a folder of index maps holds its own top maps")
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"{folder} holds the splits {', '.join(splits) or 'none'}: choose one with --split")
            split = next(iter(splits))
        maps = read_index_maps(folder, split)
        if maps.meta["weights_sha256"] != tokenizer.weights_sha256:
            raise ValueError(f"the maps in {folder} were made by other tokenizer weights than those in "
                             f"{tokenizer.run_dir} (SHA-256 differs)")
        return ([maps.maps] if maps.top is None else [maps.top, maps.maps]), f"{folder} ({split})"
    shapes = tokenizer.level_shapes
    bottom = plain_tokens(path, shapes["bottom"], tokenizer.codebook_size, "token file")
    if tokenizer.hierarchy == 1:
        if args.top_tokens:
            raise ValueError(f"--top-tokens: the tokenizer in {tokenizer.run_dir} has one level of codes")
        return [bottom], str(path)
    if not args.top_tokens:
        raise ValueError(f"the tokenizer in {tokenizer.run_dir} has two levels of codes: give the top maps with "
                         "--top-tokens")
    top = plain_tokens(Path(args.top_tokens), shapes["top"], tokenizer.codebook_size, "top token file")
    if len(top) != len(bottom):
        raise ValueError(f"{len(top)} top maps and {len(bottom)} bottom maps: they must pair row for row")
    return [top, bottom], f"{path} (top: {args.top_tokens})"


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    for flag in ("batch_size", "mosaic"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, not {getattr(args, flag)}")
    out = Path(args.out)
    check_output_folder(out, args.overwrite)
    accelerator = make_accelerator(TrainConfig())
    tokenizer = Tokenizer.load(args.tokenizer, device=accelerator.device)
    levels, source = read_tokens(args, tokenizer)
    count = len(levels[0])
    if count == 0:
        raise ValueError(f"{source} holds no token maps")

    def work(start, stop):
        batch = [torch.from_numpy(np.asarray(level[start:stop]).astype(np.int64)) for level in levels]
        return tokenizer.decode(batch[0] if len(batch) == 1 else tuple(batch)).float().cpu()

    main_process = accelerator.is_main_process
    with staged_folder(out, args.overwrite) if main_process else contextlib.nullcontext() as folder:
        shown = []
        if main_process:
            (folder / "images").mkdir()
        batches = batches_in_order(accelerator, count, args.batch_size, work)
        for start, images in tqdm(batches, total=-(-count // args.batch_size), desc="decode", dynamic_ncols=True,
                                  disable=not main_process):
            if main_process:
                save_pngs(folder / "images", images, first=start)
                shown.append(images[:args.mosaic - sum(len(s) for s in shown)])
        if main_process:
            save_mosaic(folder / "grid.png", torch.cat(shown))
            write_json(folder / "decode.json", {"tokenizer_run": str(tokenizer.run_dir.resolve()),
                                                "tokenizer_weights_sha256": tokenizer.weights_sha256,
                                                "tokens": source, "count": count, "batch_size": args.batch_size})
    if main_process:
        print(f"{count} images -> {out}/images, mosaic {out}/grid.png")


if __name__ == "__main__":
    cli.run(main)
