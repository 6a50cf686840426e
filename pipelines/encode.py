"""Turn a folder of images (or a named data set) into tokens with a trained tokenizer, for models of your own.

    python -m pipelines.encode --tokenizer checkpoints/tokenizer/RUN --images photos/ --out tokens/
    python -m pipelines.encode --tokenizer RUN --images fashion-mnist --out tokens/ --sequences --begin-end-ids
    accelerate launch -m pipelines.encode ...   # the batches shared across processes, the same files written

The folder DIR holds the index-map format of RUN/maps/ (<split>_maps.npy, <split>_labels.npy, meta.json with the
SHA-256 of each file; a two-level tokenizer's <split>_top_maps.npy beside them). A folder is one split, "images",
every image file under it in sorted path order, and images_sources.txt lists those paths (relative to the folder,
one per line), so that token row i is the image on line i. A data set gives its train and test splits, row i its
image i. --sequences adds <split>_sequences.npy, the flat raster-order rows a language model reads.
"""

import contextlib
import dataclasses
import time
from pathlib import Path

from generation.pretrained import choose_tokenizer
from pipelines import cli
from store.images import DATASETS, SPLITS, DataConfig, load_images
from store.index_maps import sources_text, write_sources, writing_maps
from store.runs import check_output_folder, output_lock, path_from, staged_folder
from store.sequences import SequenceLayout, SequenceWriter
from tokenizer import Tokenizer
from tokenizer.encoding import encode_split, level_usage_stats
from training import TrainConfig, make_accelerator

FOLDER_SPLIT = "images"


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.encode",
                                description="Encode a folder of images (or a named data set) into token maps, "
                                            "and optionally flat token sequences.")
    cli.add_run_choice_flag(parser, "tokenizer", "encode with (a prior run's folder or id names the tokenizer it "
                                                 "carries)",
                            default="the newest under OUTPUT_ROOT/tokenizer; with none, the tokenizer of "
                                    "the shipped Fashion-MNIST generator in checkpoints/fashion-mnist")
    cli.add_output_root_flag(parser)
    p = parser.add_argument
    p("--images", metavar="PATH", required=True,
      help="a folder of images, read recursively (sub-folders are classes), or a data set: " + ", ".join(DATASETS))
    cli.add_output_flags(parser)
    p("--split", choices=SPLITS, default=None, help="a data set's split to encode (default: both)")
    cli.add_batch_size_flag(parser, "images encoded", 256)
    p("--sequences", action="store_true",
      help="also write <split>_sequences.npy: each image's tokens in raster order (a two-level map's top grid first)")
    p("--vocab-offset", type=int, default=0,
      help="with --sequences, add this to every token id, to place the codes after a language model's own ids "
           "(default: 0)")
    p("--begin-end-ids", action="store_true",
      help="with --sequences, put a begin-of-image id (offset + codebook size) before each sequence and an "
           "end-of-image id (offset + codebook size + 1) after it")
    cli.add_data_flags(parser, skip=("dataset",))
    return parser


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if not args.sequences and (args.vocab_offset or args.begin_end_ids):
        raise ValueError("--vocab-offset and --begin-end-ids shape the sequences: add --sequences")
    accelerator = make_accelerator(TrainConfig())
    tokenizer = Tokenizer.load(choose_tokenizer(args.tokenizer, args.output_root), device=accelerator.device)
    channels, size, _ = tokenizer.image_shape
    folder_source = args.images not in DATASETS
    images_path = args.images.removeprefix("folder:")
    if folder_source and args.split:
        raise ValueError("--split chooses a data set's split; a folder is encoded whole")
    dataset = f"folder:{images_path}" if folder_source else args.images
    data_config = cli.config_from_args(DataConfig, args, dataset=dataset, image_size=args.image_size or size)
    out = Path(args.out)
    check_output_folder(out, args.overwrite, inputs=[tokenizer.run_dir, *data_config.sources()])
    with output_lock(out, accelerator.is_main_process):  # a second writer of --out is refused before any work
        layout = SequenceLayout(tokenizer.codebook_size, tuple(tokenizer.level_shapes.values()), args.vocab_offset,
                                args.begin_end_ids) if args.sequences else None

        # Every file is listed and checked (unreadable ones named in one line) before any work; decoded batch by batch.
        names = [FOLDER_SPLIT] if folder_source else [args.split] if args.split else list(SPLITS)
        splits = {name: load_images(data_config, "all" if folder_source else name, lazy=True, channels=channels)
                  for name in names}
        for data in splits.values():
            tokenizer.check_images(data.images.shape[1:], args.images)
        sources = {name: sources_text(data.paths) for name, data in splits.items()} if folder_source else {}

        main_process = accelerator.is_main_process
        meta = dataclasses.replace(
            tokenizer.map_metadata(dataset, splits[names[0]].class_names),
            source={"images": path_from(out, images_path) if folder_source else args.images,
                    "data": dataclasses.asdict(data_config), "batch_size": args.batch_size},
            sequences=None if layout is None else layout.describe())
        sizes = {name: len(data) for name, data in splits.items()}
        extra = None if layout is None else {"sequences": (layout.dtype, (layout.length,))}
        started = time.perf_counter()
        with staged_folder(out, args.overwrite) if main_process else contextlib.nullcontext() as folder, \
                writing_maps(folder, meta, sizes, extra) if main_process else contextlib.nullcontext({}) as writers:
            for name, data in splits.items():
                writer = writers.get(name)
                sink = writer if layout is None or writer is None else SequenceWriter(writer, layout)
                usage, _ = encode_split(tokenizer, data, args.batch_size, False, f"encode {name}", sink, accelerator)
                if writer is not None:
                    writer.details.update(level_usage_stats(usage))
                    if name in sources:  # row i of the tokens is the image on line i
                        writer.details.update(write_sources(folder, name, sources[name]))
        if main_process:
            seconds, total = time.perf_counter() - started, sum(len(data) for data in splits.values())
            counted = ", ".join(f"{len(data)}" + ("" if name == FOLDER_SPLIT else f" {name}")
                                for name, data in splits.items())
            print(f"{counted} images -> {out} ({'x'.join(map(str, tokenizer.token_shape))} tokens each"
                  + (f", sequences of {layout.length}" if layout else "")
                  + f") in {seconds:.1f} s, {total / max(seconds, 1e-9):.0f} images/s")


if __name__ == "__main__":
    cli.run(main, build_parser)
