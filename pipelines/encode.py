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
import hashlib
import os
import time
from pathlib import Path

from pipelines import cli
from store.images import DEBIAN_FASHION_MNIST_DIR, SPLITS, DataConfig, load_images
from store.index_maps import IndexMapWriter, record_index_maps
from store.runs import check_output_folder, staged_folder
from store.sequences import SequenceLayout
from tokenizer import Tokenizer
from tokenizer.fit import encode_split, level_usage_stats
from training import TrainConfig, make_accelerator

NAMED_DATASETS = ("fashion-mnist", "mnist", "cifar10")
FOLDER_SPLIT = "images"


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.encode",
                                description="Encode a folder of images (or a named data set) into token maps, "
                                            "and optionally flat token sequences.")
    p = parser.add_argument
    p("--tokenizer", metavar="RUN_DIR", required=True, help="the tokenizer run to encode with")
    p("--images", metavar="PATH", required=True,
      help="a folder of images, read recursively (sub-folders are classes), or a data set: "
           f"{', '.join(NAMED_DATASETS)}")
    p("--out", metavar="DIR", required=True, help="output folder, written whole or not at all")
    p("--overwrite", action="store_true", help="replace --out if it exists already (default: refuse)")
    p("--split", choices=SPLITS, default=None, help="a data set's split to encode (default: both)")
    p("--image-size", type=int, default=0,
      help="resize every image to this size, square (default: the size the tokenizer takes; another size is refused)")
    p("--batch-size", type=int, default=256, help="images encoded at once (default: 256)")
    p("--sequences", action="store_true",
      help="also write <split>_sequences.npy: each image's tokens in raster order (a two-level map's top grid first)")
    p("--vocab-offset", type=int, default=0,
      help="with --sequences, add this to every token id, to place the codes after a language model's own ids "
           "(default: 0)")
    p("--begin-end-ids", action="store_true",
      help="with --sequences, put a begin-of-image id (offset + codebook size) before each sequence and an "
           "end-of-image id (offset + codebook size + 1) after it")
    p("--data-dir", default="data", help="where mnist and cifar10 are downloaded to (default: data)")
    # FASHION_MNIST_DIR in the environment moves the default, as for fit_tokenizer.
    default_fashion = os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR)
    p("--fashion-mnist-dir", default=default_fashion,
      help=f"the folder of the Fashion-MNIST .gz files (default: {default_fashion})")
    return parser


def sources_lines(paths):
    """The text of <split>_sources.txt: one relative path per line; a path that would break the lines is refused."""
    lines = []
    for path in paths:
        if "\n" in path or "\r" in path:
            raise ValueError(f"image file name {path!r} holds a line break: rename it to list it in a sources file")
        lines.append(path)
    return "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")


class SequenceWriter:
    """An IndexMapWriter that also writes each batch's sequences (store.sequences) beside its maps."""

    def __init__(self, writer, layout):
        self.writer, self.layout = writer, layout

    def write(self, maps, labels, top=None):
        levels = [maps] if top is None else [top, maps]
        self.writer.write(maps, labels, top, extra={"sequences": self.layout.to_sequences(levels)})


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, not {args.batch_size}")
    if not args.sequences and (args.vocab_offset or args.begin_end_ids):
        raise ValueError("--vocab-offset and --begin-end-ids shape the sequences: add --sequences")
    out = Path(args.out)
    check_output_folder(out, args.overwrite)
    accelerator = make_accelerator(TrainConfig())
    tokenizer = Tokenizer.load(args.tokenizer, device=accelerator.device)
    channels, size, _ = tokenizer.image_shape
    layout = SequenceLayout(tokenizer.codebook_size, tuple(tokenizer.level_shapes.values()), args.vocab_offset,
                            args.begin_end_ids) if args.sequences else None

    folder_source = args.images not in NAMED_DATASETS
    images_path = args.images.removeprefix("folder:")
    if folder_source and args.split:
        raise ValueError("--split chooses a data set's split; a folder is encoded whole")
    dataset = f"folder:{images_path}" if folder_source else args.images
    data_config = DataConfig(dataset=dataset, data_dir=args.data_dir, image_size=args.image_size or size,
                             fashion_mnist_dir=args.fashion_mnist_dir)
    # Every file is listed and checked (unreadable ones named in one line) before any work; decoded batch by batch.
    names = [FOLDER_SPLIT] if folder_source else [args.split] if args.split else list(SPLITS)
    splits = {name: load_images(data_config, "all" if folder_source else name, lazy=True, channels=channels)
              for name in names}
    for data in splits.values():
        tokenizer.check_images(data.images.shape[1:], args.images)
    sources = {name: sources_lines(data.paths) for name, data in splits.items()} if folder_source else {}

    main_process = accelerator.is_main_process
    started = time.perf_counter()
    extra = None if layout is None else {"sequences": (layout.dtype, (layout.length,))}
    with staged_folder(out, args.overwrite) if main_process else contextlib.nullcontext() as folder:
        entries = {}
        for name, data in splits.items():
            with IndexMapWriter(folder, name, len(data), tokenizer.token_shape, tokenizer.codebook_size,
                                tokenizer.level_shapes.get("top"), extra) if main_process \
                    else contextlib.nullcontext() as writer:
                counts, _ = encode_split(tokenizer, data, args.batch_size, False, f"encode {name}",
                                         writer if layout is None or writer is None else SequenceWriter(writer, layout),
                                         accelerator)
            if not main_process:
                continue
            entry = writer.entry(level_usage_stats(counts))
            if name in sources:
                (folder / f"{name}_sources.txt").write_bytes(sources[name])  # (the staged folder is renamed whole)
                entry["sources"] = {"file": f"{name}_sources.txt", "sha256": hashlib.sha256(sources[name]).hexdigest()}
            entries[name] = entry
        if main_process:
            metadata = tokenizer.map_metadata(dataset, splits[names[0]].class_names)
            metadata.update(source={"images": str(Path(images_path).resolve()) if folder_source else args.images,
                                    "data": dataclasses.asdict(data_config), "batch_size": args.batch_size},
                            sequences=None if layout is None else layout.describe())
            record_index_maps(folder, entries, metadata)
    if main_process:
        seconds, total = time.perf_counter() - started, sum(len(data) for data in splits.values())
        counted = ", ".join(f"{len(data)}" + ("" if name == FOLDER_SPLIT else f" {name}")
                            for name, data in splits.items())
        print(f"{counted} images -> {out} ({'x'.join(map(str, tokenizer.token_shape))} tokens each"
              + (f", sequences of {layout.length}" if layout else "")
              + f") in {seconds:.1f} s, {total / max(seconds, 1e-9):.0f} images/s")


if __name__ == "__main__":
    cli.run(main)
