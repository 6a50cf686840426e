"""Token maps as flat sequences, the form a language model reads: one row per image, the tokens in raster order
(row by row, left to right; a residual quantizer's codes of one position in a row; a two-level map's top grid
before its bottom grid), each shifted by a vocabulary offset, optionally between a begin-of-image and an
end-of-image id (the two ids after the codebook's: offset + codebook_size and offset + codebook_size + 1).
"""

from dataclasses import dataclass

import numpy as np

from store.index_maps import check_token_range, read_index_maps, recorded_file, smallest_uint_dtype


@dataclass(frozen=True)
class SequenceLayout:
    codebook_size: int
    level_shapes: tuple  # the shape of one image's tokens per level, top first: ((h, w[, depth]), ...)
    vocab_offset: int = 0
    begin_end_ids: bool = False

    def __post_init__(self):
        if not isinstance(self.vocab_offset, int) or self.vocab_offset < 0:
            raise ValueError(f"`vocab_offset` must be a non-negative integer, not {self.vocab_offset!r}")
        if self.vocab_end - 1 > np.iinfo(np.uint64).max:
            raise ValueError(f"`vocab_offset` {self.vocab_offset} puts token ids past 2**64")

    @property
    def begin_id(self):
        return self.vocab_offset + self.codebook_size if self.begin_end_ids else None

    @property
    def end_id(self):
        return self.vocab_offset + self.codebook_size + 1 if self.begin_end_ids else None

    @property
    def vocab_end(self):
        """One past the largest id a sequence holds."""
        return self.vocab_offset + self.codebook_size + (2 if self.begin_end_ids else 0)

    @property
    def dtype(self):
        return np.dtype(smallest_uint_dtype(self.vocab_end))

    @property
    def length(self):
        return sum(int(np.prod(shape)) for shape in self.level_shapes) + (2 if self.begin_end_ids else 0)

    @classmethod
    def of_maps(cls, meta):
        """The layout that the MapsMeta of a maps folder describes under "sequences" (what
        `python -m pipelines.encode --sequences` writes)."""
        described = meta.sequences
        if not described:
            raise ValueError("these index maps have no sequences beside them (encode them with `sequences`)")
        return cls(meta.codebook_size, tuple(meta.level_shapes), described["vocab_offset"],
                   described["begin_id"] is not None)

    def describe(self):
        """What meta.json records of the sequences."""
        return {"vocab_offset": self.vocab_offset, "begin_id": self.begin_id, "end_id": self.end_id,
                "vocab_size": self.vocab_end, "length": self.length,
                "order": "raster (row by row); the top grid before the bottom; residual codes of a position together"}

    def to_sequences(self, levels):
        """levels: per level (top first) the maps (n, *shape) of ints -> (n, length) ids of self.dtype."""
        if len(levels) != len(self.level_shapes):
            raise ValueError(f"{len(levels)} level(s) of maps, the layout has {len(self.level_shapes)}")
        n = len(levels[0])
        parts = [np.asarray(level).reshape(n, -1).astype(self.dtype) + self.dtype.type(self.vocab_offset)
                 for level in levels]
        if self.begin_end_ids:
            parts = [np.full((n, 1), self.begin_id, self.dtype), *parts, np.full((n, 1), self.end_id, self.dtype)]
        return np.concatenate(parts, axis=1)

    def to_maps(self, sequences):
        """(n, length) ids -> per level (top first) the maps (n, *shape) int64; a one-line ValueError for a sequence
        of the wrong length, a missing begin or end id, or a token outside the codebook's ids."""
        sequences = np.asarray(sequences)
        if sequences.ndim != 2 or sequences.shape[1] != self.length:
            raise ValueError(f"sequences must have shape (n, {self.length}), not {sequences.shape}")
        if sequences.dtype.kind not in "ui":
            raise ValueError(f"sequences must hold integers, not {sequences.dtype}")
        if self.begin_end_ids:
            if (sequences[:, 0] != self.begin_id).any() or (sequences[:, -1] != self.end_id).any():
                raise ValueError(f"every sequence must begin with id {self.begin_id} and end with id {self.end_id}")
            sequences = sequences[:, 1:-1]
        check_token_range("the sequences", sequences, self.codebook_size, first=self.vocab_offset)
        tokens = sequences.astype(np.int64) - self.vocab_offset
        levels, start = [], 0
        for shape in self.level_shapes:
            size = int(np.prod(shape))
            levels.append(tokens[:, start:start + size].reshape(len(tokens), *shape))
            start += size
        return levels



class SequenceWriter:
    """An IndexMapWriter that also writes each batch's sequences in a layout beside its maps; the writer must have
    been made with extra={"sequences": (layout.dtype, (layout.length,))}."""

    def __init__(self, writer, layout):
        self.writer, self.layout = writer, layout

    def write(self, maps, labels, top=None):
        levels = [maps] if top is None else [top, maps]
        self.writer.write(maps, labels, top, extra={"sequences": self.layout.to_sequences(levels)})


def read_sequences(directory, split):
    """(the split's sequences (n, length), memory-mapped, checked against their recorded SHA-256; their
    SequenceLayout) of a folder that `python -m pipelines.encode --sequences` wrote."""
    index_maps = read_index_maps(directory, split)
    layout = SequenceLayout.of_maps(index_maps.meta)
    entry = index_maps.meta.splits[split].get("sequences")
    if entry is None:
        raise ValueError(f"meta.json of {directory} names no sequences for the {split!r} split")
    path = recorded_file(directory, entry)
    sequences = np.load(path, mmap_mode="r", allow_pickle=False)
    if sequences.shape != (len(index_maps.maps), layout.length):
        raise ValueError(f"{path} has shape {sequences.shape}, not ({len(index_maps.maps)}, {layout.length})")
    return sequences, layout
