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

from generation.pretrained import choose_tokenizer
from pipelines import cli
from store.index_maps import read_token_levels
from store.pictures import save_mosaic, save_pngs
from store.runs import check_output_folder, output_lock, path_from, staged_folder, write_json
from tokenizer import Tokenizer
from training import TrainConfig, batches_in_order, make_accelerator


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.decode",
                                description="Decode token maps into images with a tokenizer run.")
    cli.add_run_choice_flag(parser, "tokenizer", "decode with (a prior run's folder or id names the tokenizer it "
                                                 "carries)",
                            default="the newest under OUTPUT_ROOT/tokenizer; with none, the tokenizer of "
                                    "the shipped Fashion-MNIST generator in checkpoints/fashion-mnist")
    cli.add_output_root_flag(parser)
    p = parser.add_argument
    p("--tokens", metavar="PATH", required=True,
      help="a folder of index maps (meta.json), one of its <split>_maps.npy, or a plain .npy (n, h, w[, depth])")
    p("--top-tokens", metavar="FILE", default=None,
      help="for a two-level tokenizer and a plain .npy: the top maps (n, h', w'), row for row")
    p("--split", default=None, help="the split of a folder of index maps (default: its only one)")
    cli.add_output_flags(parser)
    cli.add_batch_size_flag(parser, "maps decoded", 500)
    cli.add_mosaic_flag(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    out = Path(args.out)
    tokenizer_dir = choose_tokenizer(args.tokenizer, args.output_root)
    check_output_folder(out, args.overwrite, inputs=[tokenizer_dir, args.tokens, args.top_tokens])
    accelerator = make_accelerator(TrainConfig())
    with output_lock(out, accelerator.is_main_process):  # a second writer of --out is refused before any work
        tokenizer = Tokenizer.load(tokenizer_dir, device=accelerator.device)
        levels, source = read_token_levels(args.tokens, tokenizer.level_shapes, tokenizer.codebook_size,
                                           tokenizer.weights_sha256, args.split, args.top_tokens)
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
                write_json(folder / "decode.json", {"tokenizer_run": path_from(out, tokenizer.run_dir),
                                                    "tokenizer_weights_sha256": tokenizer.weights_sha256,
                                                    "tokens": source, "count": count, "batch_size": args.batch_size})
        if main_process:
            print(f"{count} images -> {out}/images, mosaic {out}/grid.png")


if __name__ == "__main__":
    cli.run(main, build_parser)
