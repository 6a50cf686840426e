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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from store.runs import atomic_path, file_sha256, write_json


def smallest_uint_dtype(codebook_size):
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return dtype
    return np.uint64


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

    def entry(self, split_stats=None):
        """This split's entry in meta.json: its files, their SHA-256, the count and any statistics."""
        return {**self.files, "count": self.count, **(split_stats or {})}


def record_index_maps(directory, entries, metadata):
    """Write meta.json (last, after the files it describes): metadata and each split's entry {split: entry}."""
    meta_path = Path(directory) / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({k: v for k, v in metadata.items() if k != "split_stats"})
    meta.setdefault("splits", {}).update(entries)
    write_json(meta_path, meta)


def write_index_maps(directory, split, maps, labels, metadata, top=None):
    """Write one split: maps (n, h, w) or (n, h, w, depth) ints, labels (n,), for two levels the top maps, and
    the split's entry in meta.json (last)."""
    maps = np.asarray(maps)
    top_shape = None if top is None else np.asarray(top).shape[1:]
    with IndexMapWriter(directory, split, len(maps), maps.shape[1:], metadata["codebook_size"], top_shape) as writer:
        writer.write(maps, labels, top)
    record_index_maps(directory, {split: writer.entry(metadata.get("split_stats"))}, metadata)


@dataclass
class IndexMaps:
    maps: np.ndarray  # (n, h, w) or (n, h, w, depth) unsigned ints, memory-mapped
    labels: np.ndarray  # (n,) int64
    meta: dict
    top: np.ndarray | None = None  # (n, h', w'[, depth]) a two-level tokenizer's top maps, memory-mapped

    @property
    def levels(self):
        return 2 if self.top is not None else 1


def read_index_maps(directory, split, check_hashes=True):
    """Load one split memory-mapped; every inconsistency is a one-line ValueError."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise ValueError(f"no index maps in {directory} (meta.json missing): run fit_tokenizer or its --dump-only")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{meta_path} is not valid JSON") from None
    required = ("codebook_size", "grid_height", "grid_width", "weights_sha256", "splits")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"{meta_path} lacks metadata: {', '.join(missing)}")
    if split not in meta["splits"]:
        raise ValueError(f"{meta_path} has no {split!r} split")
    entry = meta["splits"][split]
    two_levels = meta.get("levels", 1) == 2
    if two_levels and not all(k in meta for k in ("top_grid_height", "top_grid_width")):
        raise ValueError(f"{meta_path} lacks metadata: top_grid_height, top_grid_width")
    arrays = {}
    for kind in ("maps", "labels", "top_maps") if two_levels else ("maps", "labels"):
        if kind not in entry:
            raise ValueError(f"{meta_path} names no {kind} file for the {split!r} split")
        path = directory / entry[kind]["file"]
        if not path.exists():
            raise ValueError(f"index-map file {path} is missing")
        if check_hashes and file_sha256(path) != entry[kind]["sha256"]:
            raise ValueError(f"index-map file {path} does not match its recorded SHA-256 (corrupt or replaced)")
        try:
            arrays[kind] = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise ValueError(f"index-map file {path} is unreadable: {error}") from None
    maps, labels = arrays["maps"], arrays["labels"]
    depth = meta.get("depth", 1)
    levels = [(maps, (meta["grid_height"], meta["grid_width"]), "")]
    if two_levels:
        levels.append((arrays["top_maps"], (meta["top_grid_height"], meta["top_grid_width"]), "top "))
    for array, grid, name in levels:
        expected = grid + ((depth,) if depth > 1 else ())
        if array.shape[1:] != expected or len(labels) != len(array):
            raise ValueError(f"{name}index maps in {directory} have shape {array.shape}, "
                             f"expected (n, {', '.join(map(str, expected))}) with {len(labels)} labels")
        if array.dtype.kind != "u":
            raise ValueError(f"{name}index maps in {directory} have dtype {array.dtype}, expected an unsigned "
                             "integer type")
        if len(array) and int(array.max()) >= meta["codebook_size"]:
            raise ValueError(f"{name}index maps in {directory} hold token {int(array.max())}, "
                             f"past the codebook size {meta['codebook_size']}")
    return IndexMaps(maps, labels, meta, arrays.get("top_maps"))


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
