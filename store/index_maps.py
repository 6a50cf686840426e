"""Index maps on disk: one split's token grids as an unsigned integer .npy array [N, h, w] (a trailing depth axis
for multi-code quantizers) in the smallest dtype that holds the codebook size, its labels as int64 .npy, and
meta.json beside them (codebook size, grid shape, data set, class names, the SHA-256 of the tokenizer weights that
made them and of each file). A two-level tokenizer's top maps lie beside them as <split>_top_maps.npy, [N, h', w'],
and meta.json says "levels": 2 with the top grid and codebook size. No pickle; every file loads memory-mapped with
numpy.load(path, mmap_mode="r").
"""

import contextlib
import hashlib
import io
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from store.runs import META_FILE, atomic_path, file_sha256, write_json


def smallest_uint_dtype(codebook_size):
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


def check_token_range(name, tokens, codebook_size, first=0):
    """The one token-range check: a one-line ValueError when tokens (a numpy array or a torch tensor) hold a value
    outside first..first + codebook_size - 1 (the codebook's ids, shifted by first where a format offsets them)."""
    if not (tokens.size if isinstance(tokens, np.ndarray) else tokens.numel()):
        return
    high = int(tokens.max())
    # Unsigned tokens from 0 cannot fall short: one pass over them (memory-mapped maps are read from disk).
    unsigned_from_zero = first == 0 and isinstance(tokens, np.ndarray) and tokens.dtype.kind == "u"
    if high >= first + codebook_size or not unsigned_from_zero and int(tokens.min()) < first:
        raise ValueError(f"{name} hold tokens {int(tokens.min())}..{high}, outside the codebook's "
                         f"{first}..{first + codebook_size - 1}")


@dataclass
class MapsMeta:
    """meta.json of a folder of index maps: what its tokens are (codebook, grid, levels), what made them (the
    tokenizer's weights, the data set) and each split's files. read_maps_meta is its one reader and
    record_index_maps its one writer; Tokenizer.map_metadata says what a tokenizer's maps are."""
    codebook_size: int
    grid_height: int
    grid_width: int
    weights_sha256: str  # of the tokenizer weights that made the maps: a prior checks it against its tokenizer's
    depth: int = 1  # tokens per position (a residual quantizer's levels): the maps' trailing axis when > 1
    levels: int = 1  # 2: a two-level tokenizer's top maps lie beside, <split>_top_maps.npy
    top_grid_height: int | None = None
    top_grid_width: int | None = None
    top_codebook_size: int | None = None
    quantizer: str | None = None
    dataset: str | None = None
    class_names: list | None = None
    tokenizer_run: str | None = None  # the run by its folder's name: no folder of the machine that made them
    source: dict | None = None  # pipelines.encode: what was encoded, and how
    sequences: dict | None = None  # the flat layout of the maps' sequences, where pipelines.encode wrote them
    # {split: {"maps": {"file", "sha256"}, "labels": ..., "count": n, and the split's statistics}}
    splits: dict = field(default_factory=dict)

    REQUIRED = ("codebook_size", "grid_height", "grid_width", "weights_sha256", "splits")

    @property
    def token_shape(self):
        """One map's shape: (h, w), or (h, w, depth)."""
        return (self.grid_height, self.grid_width) + ((self.depth,) if self.depth > 1 else ())

    @property
    def top_shape(self):
        """One top map's shape with two levels, else None."""
        if self.levels != 2:
            return None
        return (self.top_grid_height, self.top_grid_width) + ((self.depth,) if self.depth > 1 else ())

    @property
    def level_shapes(self):
        """The maps' shape per level, top first."""
        return [self.token_shape] if self.levels != 2 else [self.top_shape, self.token_shape]


def read_maps_meta(directory):
    """The MapsMeta of a folder of index maps; a missing, unreadable or incomplete meta.json is one ValueError.
    Keys it does not know (written by a later version) are left out."""
    meta_path = Path(directory) / META_FILE
    if not meta_path.exists():
        raise ValueError(f"no index maps in {directory} (meta.json missing): a tokenizer run makes them "
                         "(python -m pipelines.fit_tokenizer, or --dump-only RUN for a run without them)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{meta_path} is not valid JSON") from None
    missing = [key for key in MapsMeta.REQUIRED if key not in meta]
    if not missing and meta.get("levels", 1) == 2:
        missing = [key for key in ("top_grid_height", "top_grid_width") if meta.get(key) is None]
    if missing:
        raise ValueError(f"{meta_path} lacks metadata: {', '.join(missing)}")
    return MapsMeta(**{f.name: meta[f.name] for f in fields(MapsMeta) if f.name in meta})


class IndexMapWriter:
    """One split's maps and labels written batch by batch into .npy files, so a dump of N images never holds N maps.

        with IndexMapWriter(directory, split, count, token_shape, codebook_size) as writer:
            writer.write(maps, labels)   # as many times as it takes, in order
        record_index_maps(directory, {split: writer.entry()}, metadata)

    The files are those np.save would write, byte for byte (header from numpy's own writer, then the data), made
    under temporary names and renamed into place on leaving the block (atomic_path); an exception or a count short
    of `count` leaves the old files whole. Plain writes rather than np.lib.format.open_memmap: the pages written
    through a mapping stay in the process's resident memory while it is open.
    """

    def __init__(self, directory, split, count, token_shape, codebook_size, top_shape=None, extra=None):
        self.directory, self.split, self.count = Path(directory), split, int(count)
        dtype = smallest_uint_dtype(codebook_size)
        self.kinds = {"maps": (dtype, tuple(int(d) for d in token_shape)), "labels": (np.dtype(np.int64), ())}
        if top_shape is not None:  # a two-level tokenizer's top maps (the same codebook size)
            self.kinds["top_maps"] = (dtype, tuple(int(d) for d in top_shape))
        # Other per-image arrays written beside the maps, {kind: (dtype, shape of one row)}: e.g. "sequences".
        self.kinds.update({kind: (np.dtype(dtype), tuple(shape)) for kind, (dtype, shape) in (extra or {}).items()})
        self.extra_kinds = set(extra or {})
        self.written, self.files, self._handles, self._digests = 0, {}, {}, {}
        self.details = {}  # what meta.json records of the split beside its files and count (statistics, sources)

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        try:
            for kind, (dtype, shape) in self.kinds.items():
                tmp = self._stack.enter_context(atomic_path(self.directory / f"{self.split}_{kind}.npy"))
                self._handles[kind] = self._stack.enter_context(open(tmp, "wb"))
                self._digests[kind] = hashlib.sha256()
                header = io.BytesIO()
                np.lib.format.write_array_header_1_0(header, {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                    "shape": (self.count, *shape)})
                self._write(kind, header.getvalue())
        except BaseException:
            self._stack.close()
            raise
        return self

    def _write(self, kind, data):
        self._handles[kind].write(data)
        self._digests[kind].update(data)

    def write(self, maps, labels, top=None, extra=None):
        """Append a batch: maps (b, *token_shape) of ints below the codebook size, labels (b,), for two
        levels the top maps (b, *top_shape), and the rows of each extra kind {kind: (b, *shape)}."""
        dtype, shape = self.kinds["maps"]
        maps, labels = np.asarray(maps), np.asarray(labels)
        if maps.shape[1:] != shape or len(labels) != len(maps) or self.written + len(maps) > self.count:
            raise ValueError(f"a batch of maps {maps.shape} with {len(labels)} labels does not fit: "
                             f"{self.count - self.written} more maps of shape {shape} expected")
        if ("top_maps" in self.kinds) != (top is not None) or (
                top is not None and np.asarray(top).shape != (len(maps), *self.kinds["top_maps"][1])):
            raise ValueError(f"top maps {None if top is None else np.asarray(top).shape} do not fit this writer")
        if set(extra or {}) != self.extra_kinds:
            raise ValueError(f"a batch must bring {sorted(self.extra_kinds) or 'no other arrays'}, "
                             f"not {sorted(extra or {})}")
        self._write("maps", np.ascontiguousarray(maps.astype(dtype, copy=False)).tobytes())
        self._write("labels", np.ascontiguousarray(labels.astype(np.int64, copy=False)).tobytes())
        if top is not None:
            self._write("top_maps", np.ascontiguousarray(np.asarray(top).astype(dtype, copy=False)).tobytes())
        for kind, rows in (extra or {}).items():
            extra_dtype, extra_shape = self.kinds[kind]
            rows = np.asarray(rows)
            if rows.shape != (len(maps), *extra_shape):
                raise ValueError(f"{kind} of shape {rows.shape} do not fit: ({len(maps)}, {extra_shape}) expected")
            self._write(kind, np.ascontiguousarray(rows.astype(extra_dtype, copy=False)).tobytes())
        self.written += len(maps)

    def __exit__(self, kind, error, traceback):
        short = error is None and self.written != self.count
        if short:
            kind, error, traceback = ValueError, ValueError(
                f"{self.written} index maps written to the {self.split} split, {self.count} promised"), None
        # Closes the files, then renames them into place, or deletes them when the block raised (or fell short).
        self._stack.__exit__(kind, error, traceback)
        if short:
            raise error
        if error is None:
            self.files = {kind: {"file": f"{self.split}_{kind}.npy", "sha256": digest.hexdigest()}
                          for kind, digest in self._digests.items()}
        return False

    def entry(self):
        """This split's entry in meta.json: its files, their SHA-256, the count and its details."""
        return {**self.files, "count": self.count, **self.details}


def record_index_maps(directory, entries, meta):
    """Write meta.json (last, after the files it describes): meta (a MapsMeta) with each split's entry {split:
    entry} added to the splits a meta.json there names already (one that cannot be read is replaced whole)."""
    try:
        splits = read_maps_meta(directory).splits
    except ValueError:
        splits = {}
    write_json(Path(directory) / META_FILE, asdict(replace(meta, splits={**splits, **meta.splits, **entries})))


@contextlib.contextmanager
def writing_maps(directory, meta, counts, extra=None):
    """The one sequence that writes index maps: an IndexMapWriter per split ({split: count}) of meta's grid,
    codebook and levels, yielded as {split: writer}; once the block ends well every file is renamed into place,
    then meta.json, naming them with each writer's details, is written last. A failure leaves the old maps whole.
    extra: other per-image arrays written beside the maps (IndexMapWriter)."""
    with contextlib.ExitStack() as files:
        writers = {split: files.enter_context(IndexMapWriter(directory, split, count, meta.token_shape,
                                                             meta.codebook_size, meta.top_shape, extra))
                   for split, count in counts.items()}
        yield writers
    record_index_maps(directory, {split: writer.entry() for split, writer in writers.items()}, meta)


def write_index_maps(directory, split, maps, labels, meta, top=None):
    """Write one split at once: maps (n, *meta.token_shape) ints, labels (n,), for two levels the top maps."""
    with writing_maps(directory, meta, {split: len(maps)}) as writers:
        writers[split].write(maps, labels, top)


@dataclass
class IndexMaps:
    maps: np.ndarray  # (n, h, w) or (n, h, w, depth) unsigned ints, memory-mapped
    labels: np.ndarray  # (n,) int64
    meta: MapsMeta
    top: np.ndarray | None = None  # (n, h', w'[, depth]) a two-level tokenizer's top maps, memory-mapped

    @property
    def levels(self):
        return 2 if self.top is not None else 1


def recorded_file(directory, entry, check_hash=True):
    """The path of a file that a meta.json entry ({"file": name, "sha256": digest}) names in directory, refused in
    one line when it is missing or (check_hash) not the file that was recorded."""
    path = Path(directory) / entry["file"]
    if not path.exists():
        raise ValueError(f"index-map file {path} is missing")
    if check_hash and file_sha256(path) != entry["sha256"]:
        raise ValueError(f"index-map file {path} does not match its recorded SHA-256 (corrupt or replaced)")
    return path


def read_index_maps(directory, split, check_hashes=True):
    """Load one split memory-mapped; every inconsistency is a one-line ValueError."""
    directory = Path(directory)
    meta = read_maps_meta(directory)
    if split not in meta.splits:
        raise ValueError(f"{directory / META_FILE} has no {split!r} split")
    entry = meta.splits[split]
    arrays = {}
    for kind in ("maps", "labels", "top_maps") if meta.levels == 2 else ("maps", "labels"):
        if kind not in entry:
            raise ValueError(f"{directory / META_FILE} names no {kind} file for the {split!r} split")
        path = recorded_file(directory, entry[kind], check_hashes)
        try:
            arrays[kind] = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"index-map file {path} is unreadable: {error}") from None
    labels = arrays["labels"]
    for (kind, array), expected in zip([(kind, arrays[kind]) for kind in ("top_maps", "maps") if kind in arrays],
                                       meta.level_shapes):
        name = f"{'top ' if kind == 'top_maps' else ''}index maps in {directory}"
        if array.shape[1:] != expected or len(labels) != len(array):
            raise ValueError(f"{name} have shape {array.shape}, expected (n, {', '.join(map(str, expected))}) with "
                             f"{len(labels)} labels")
        if array.dtype.kind != "u":
            raise ValueError(f"{name} have dtype {array.dtype}, expected an unsigned integer type")
        check_token_range(name, array, meta.codebook_size)
    return IndexMaps(arrays["maps"], labels, meta, arrays.get("top_maps"))


class MapDataset(torch.utils.data.Dataset):
    """(tokens (h, w[, depth]) int64, label) pairs read from memory-mapped index maps, and the top tokens third
    for two levels: memory stays flat in N."""

    def __init__(self, index_maps):
        self.maps, self.labels, self.top = index_maps.maps, index_maps.labels, index_maps.top

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        item = torch.from_numpy(self.maps[i].astype(np.int64)), int(self.labels[i])
        return item if self.top is None else (*item, torch.from_numpy(self.top[i].astype(np.int64)))


# Token files other than a folder's own maps: the sources list of an encoded folder, and plain token arrays --------


def sources_text(paths):
    """The bytes of a <split>_sources.txt: the split's image paths (relative to the folder encoded), one per line,
    so that token row i is the image on line i. A path that would break the lines is refused (before any work)."""
    for path in paths:
        if "\n" in path or "\r" in path:
            raise ValueError(f"image file name {path!r} holds a line break: rename it to list it in a sources file")
    return "".join(f"{path}\n" for path in paths).encode("utf-8", "surrogateescape")


def write_sources(directory, split, data):
    """<split>_sources.txt holding sources_text's bytes; returns the split's meta.json entry for it."""
    name = f"{split}_sources.txt"
    with atomic_path(Path(directory) / name) as tmp:
        Path(tmp).write_bytes(data)
    return {"sources": {"file": name, "sha256": hashlib.sha256(data).hexdigest()}}


def read_sources(directory, split):
    """The image paths of a split that pipelines.encode wrote from a folder, row for row, checked against the hash
    meta.json records."""
    entry = read_index_maps(directory, split).meta.splits[split].get("sources")
    if entry is None:
        raise ValueError(f"the {split!r} split of {directory} lists no sources (it was not encoded from a folder)")
    return recorded_file(directory, entry).read_bytes().decode("utf-8", "surrogateescape").splitlines()


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def read_plain_tokens(path, shape, codebook_size, name="token file"):
    """A plain .npy of token maps (n, *shape) in 0..codebook_size - 1, memory-mapped; any other file (a .npz, a
    picture, a pickle, floats, another shape or range) is one ValueError that says what was expected."""
    path = Path(path)
    expected = f"a .npy array of integer tokens (n, {', '.join(map(str, shape))})"
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as error:
        raise ValueError(f"{name} {path} cannot be read ({error.strerror or error}): {expected} is expected") from None
    if magic.startswith(ZIP_MAGIC):
        raise ValueError(f"{name} {path} is a .npz archive, and {expected} is expected: save the array alone with "
                         "numpy.save(path, numpy.load(archive)[name])")
    if magic != NPY_MAGIC:
        raise ValueError(f"{name} {path} is not a .npy file: {expected} is expected")
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{name} {path} is not a readable .npy file of integers ({error})") from None
    if tokens.dtype.kind not in "ui":
        raise ValueError(f"{name} {path} holds {tokens.dtype}, not integers: {expected} is expected")
    if tokens.shape[1:] != tuple(shape) or tokens.ndim != 1 + len(shape):
        raise ValueError(f"{name} {path} has shape {tokens.shape}, the tokenizer takes "
                         f"(n, {', '.join(map(str, shape))})")
    check_token_range(f"{name} {path}", tokens, codebook_size)
    return tokens


def read_token_levels(path, level_shapes, codebook_size, weights_sha256, split=None, top_path=None):
    """The token maps at path for a tokenizer (its level_shapes {"top"?, "bottom"}, codebook size and weights'
    SHA-256), as a list per level, top first, of memory-mapped arrays, and a description of where they came from.

    path: a folder of index maps (split: which one, needed when it holds several), one of its <split>_maps.npy
    files, or a plain .npy (read_plain_tokens; top_path: the top maps of a two-level tokenizer, row for row).
    Maps that other weights made are refused."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"token file or folder {path} does not exist")
    folder = path if path.is_dir() else path.parent
    # The splits of the maps folder the tokens are, or lie in; a plain .npy has none.
    splits = read_maps_meta(folder).splits if path.is_dir() or (folder / META_FILE).exists() else {}
    if not path.is_dir():  # one of a maps folder's files: which split is it?
        split = next((name for name, entry in splits.items() if entry.get("maps", {}).get("file") == path.name), None)
    if split is not None or path.is_dir():
        if top_path:
            raise ValueError("top maps go with a plain .npy; a folder of index maps holds its own top maps")
        if split is None:
            if len(splits) != 1:
                raise ValueError(f"{folder} holds the splits {', '.join(splits) or 'none'}: choose one (`split`)")
            split = next(iter(splits))
        maps = read_index_maps(folder, split)
        if maps.meta.weights_sha256 != weights_sha256:
            raise ValueError(f"the maps in {folder} were made by other tokenizer weights than the tokenizer's "
                             "(SHA-256 differs)")
        return ([maps.maps] if maps.top is None else [maps.top, maps.maps]), f"{folder} ({split})"
    bottom = read_plain_tokens(path, level_shapes["bottom"], codebook_size)
    if "top" not in level_shapes:
        if top_path:
            raise ValueError("top maps given for a tokenizer with one level of codes")
        return [bottom], str(path)
    if not top_path:
        raise ValueError("the tokenizer has two levels of codes: give the top maps too (`top_path`)")
    top = read_plain_tokens(top_path, level_shapes["top"], codebook_size, "top token file")
    if len(top) != len(bottom):
        raise ValueError(f"{len(top)} top maps and {len(bottom)} bottom maps: they must pair row for row")
    return [top, bottom], f"{path} (top: {top_path})"
