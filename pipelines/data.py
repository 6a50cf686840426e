"""Image data sets as uint8 tensors (n, c, h, w) with int64 labels, and the index-map files of stage one.

Data sets: Fashion-MNIST from Debian's package (offline, the default), MNIST and CIFAR-10 through torchvision
(downloaded), and any folder of images. Index maps are numpy .npy files (memory-mappable, never pickled) with a
JSON file of metadata beside them.
"""

import array
import contextlib
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.runs import atomic_path, file_sha256, write_json

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "test")


@dataclass
class DataConfig:
    dataset: str = field(default="fashion-mnist", metadata={
        "help": "fashion-mnist (Debian's files, offline), mnist or cifar10 (downloaded to --data-dir), "
                "or folder:PATH (any folder of images; every tenth file, sorted by path, is the test split)"})
    data_dir: str = field(default="data", metadata={"help": "where mnist and cifar10 are downloaded to"})
    image_size: int = field(default=0, metadata={
        "help": "resize folder images to this size (0: the data set's own size; 28 for folders)"})


@dataclass
class ImageSet:
    images: torch.Tensor  # (n, c, h, w) uint8
    labels: torch.Tensor  # (n,) int64
    class_names: list

    def __len__(self):
        return len(self.images)


class ImageDataset(torch.utils.data.Dataset):
    """(image (c, h, w) uint8, label) pairs of an ImageSet; a lazy folder's images are decoded as they are asked for,
    so training on a folder of any size holds a batch of images at a time."""

    def __init__(self, image_set):
        self.images, self.labels = image_set.images, image_set.labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def load_images(config, split, lazy=False):
    """The split ('train' or 'test') of the configured data set; a one-line ValueError when it can't be had.

    lazy: a folder's images are checked now but decoded only when indexed (FolderImages), so that a pass over
    them in batches (training, the dump) holds one batch at a time; the other data sets are small and always in
    memory.
    """
    name = config.dataset
    if name == "fashion-mnist":
        return _read_fashion_mnist(split)
    if name in ("mnist", "cifar10"):
        return _read_torchvision(name, split, config.data_dir)
    if name.startswith("folder:"):
        images = _read_folder(Path(name[len("folder:"):]), split, config.image_size or 28)
        return images if lazy else ImageSet(images[:], images.labels, images.class_names)
    raise ValueError(f"unknown dataset {name!r}: use fashion-mnist, mnist, cifar10 or folder:PATH")


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _read_fashion_mnist(split):
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        raise ValueError(f"Fashion-MNIST not found in {FASHION_MNIST_DIR}: "
                         "install it with 'apt-get install -y dataset-fashion-mnist'")
    try:
        images = torch.from_numpy(_read_idx(images_path).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(labels_path).astype(np.int64))
    except (OSError, EOFError, ValueError) as error:
        raise ValueError(f"Fashion-MNIST files in {FASHION_MNIST_DIR} are unreadable ({error})") from None
    return ImageSet(images, labels, list(FASHION_MNIST_CLASSES))


def _read_torchvision(name, split, data_dir):
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.CIFAR10
    try:
        dataset = cls(data_dir, train=split == "train", download=True)
    except Exception as error:  # torchvision raises many kinds; the user needs one line
        raise ValueError(f"could not download or read {name} into {data_dir}: {error}") from None
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return ImageSet(images.contiguous(), labels, list(dataset.classes))


def _image_files(root):
    """The relative POSIX path of every image file under root, in the order of sorted(root.rglob("*")), one at a
    time: no Path is kept per file (a sorted list of 100,000 Paths takes 40 MiB). A Path sorts by its parts, so a
    depth-first walk that takes each folder's entries in name order gives that order; links to folders are not
    followed (as rglob), links to files are."""
    from pathlib import PurePosixPath

    def walk(directory, prefix):
        entries = []
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            entries.append((entry.name, True))
                        elif PurePosixPath(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                            entries.append((entry.name, False))
                    except OSError:
                        continue
        except PermissionError:
            return
        for name, is_dir in sorted(entries):
            if is_dir:
                yield from walk(os.path.join(directory, name), f"{prefix}{name}/")
            else:
                yield f"{prefix}{name}"

    return walk(root, "")


def _read_folder(root, split, image_size):
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist")
    # The split's paths are kept as one string of bytes (a PathList), their folders as one integer per file.
    paths, parents, parent_ids = PathList(), array.array("q"), {}
    for i, relative in enumerate(_image_files(root)):
        # Sub-folders are classes, as in torchvision's ImageFolder; a flat folder is one class (".").
        parent = relative.rpartition("/")[0] or "."
        parent_id = parent_ids.setdefault(parent, len(parent_ids))
        if (i % 10 == 9) == (split == "test"):
            paths.append(relative)
            parents.append(parent_id)
    if not parent_ids:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    if not paths:
        raise ValueError(f"no images in the {split} split of {root} (every tenth file is the test split)")
    class_names = sorted(parent_ids)
    class_index = {name: i for i, name in enumerate(class_names)}
    class_of_parent = np.array([class_index[name] for name in parent_ids], dtype=np.int64)
    labels = torch.from_numpy(class_of_parent[np.frombuffer(parents, dtype=np.int64)])
    # Every file is checked (header and checksums, not decoded) before any work, and all bad ones named at once.
    unreadable, mode = [], None
    for relative in paths:
        path = root / relative
        try:
            with Image.open(path) as image:
                mode = mode or ("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
                image.verify()
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            unreadable.append(str(path))
    if unreadable:
        raise ValueError(f"{len(unreadable)} unreadable image file(s): {', '.join(unreadable)}")
    return FolderImages(root, paths, labels, class_names, mode, image_size)


class PathList:
    """A sequence of relative paths kept as one bytes string and an array of end offsets: about the paths' own
    length per file, where a list of str takes some 70 bytes more and a list of Path some 400."""

    def __init__(self):
        self.blob, self.ends = bytearray(), array.array("q")

    def append(self, path):
        self.blob += os.fsencode(path)
        self.ends.append(len(self.blob))

    def __len__(self):
        return len(self.ends)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        start = self.ends[index - 1] if index else 0
        return os.fsdecode(bytes(self.blob[start:self.ends[index]]))


class FolderImages:
    """A folder split as (n, c, s, s) uint8 images decoded when sliced; also an ImageSet (images is itself).

    paths: the split's file paths relative to root (a PathList), in sorted order."""

    def __init__(self, root, paths, labels, class_names, mode, image_size):
        self.root, self.paths, self.labels, self.class_names = Path(root), paths, labels, class_names
        self.mode, self.image_size = mode, image_size
        self.shape = (len(paths), 1 if mode == "L" else 3, image_size, image_size)

    @property
    def images(self):
        return self

    def __len__(self):
        return len(self.paths)

    def numel(self):
        return int(np.prod(self.shape))

    def __getitem__(self, index):
        from PIL import Image, UnidentifiedImageError

        if not isinstance(index, slice):
            index = range(len(self))[index]  # an IndexError past the end, as a tensor gives
            return self[index:index + 1][0]
        decoded = []
        for relative in self.paths[index]:
            path = self.root / relative
            try:
                with Image.open(path) as image:
                    image = image.convert(self.mode).resize((self.image_size, self.image_size), Image.BILINEAR)
                    decoded.append(torch.from_numpy(np.asarray(image).copy()))
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise ValueError(f"unreadable image file {path} ({error})") from None
        if not decoded:
            return torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)
        stacked = torch.stack(decoded)
        return (stacked.unsqueeze(1) if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)).contiguous()


# Index maps ---------------------------------------------------------------------------------------------------

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

    def __init__(self, directory, split, count, token_shape, codebook_size):
        self.directory, self.split, self.count = Path(directory), split, int(count)
        self.kinds = {"maps": (smallest_uint_dtype(codebook_size), tuple(int(d) for d in token_shape)),
                      "labels": (np.dtype(np.int64), ())}
        self.written, self.files, self._handles, self._digests = 0, {}, {}, {}

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        try:
            for kind, (dtype, shape) in self.kinds.items():
                tmp = self._stack.enter_context(atomic_path(self.directory / f"{self.split}_{kind}.npy"))
                handle = self._handles[kind] = self._stack.enter_context(open(tmp, "wb"))
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

    def write(self, maps, labels):
        """Append a batch: maps (b, *token_shape) of ints below the codebook size, labels (b,)."""
        dtype, shape = self.kinds["maps"]
        maps, labels = np.asarray(maps), np.asarray(labels)
        if maps.shape[1:] != shape or len(labels) != len(maps) or self.written + len(maps) > self.count:
            raise ValueError(f"a batch of maps {maps.shape} with {len(labels)} labels does not fit: "
                             f"{self.count - self.written} more maps of shape {shape} expected")
        self._write("maps", np.ascontiguousarray(maps.astype(dtype, copy=False)).tobytes())
        self._write("labels", np.ascontiguousarray(labels.astype(np.int64, copy=False)).tobytes())
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


def write_index_maps(directory, split, maps, labels, metadata):
    """Write one split: maps (n, h, w) or (n, h, w, depth) ints, labels (n,), and its entry in meta.json (last)."""
    maps = np.asarray(maps)
    with IndexMapWriter(directory, split, len(maps), maps.shape[1:], metadata["codebook_size"]) as writer:
        writer.write(maps, labels)
    record_index_maps(directory, {split: writer.entry(metadata.get("split_stats"))}, metadata)


@dataclass
class IndexMaps:
    maps: np.ndarray  # (n, h, w) or (n, h, w, depth) unsigned ints, memory-mapped
    labels: np.ndarray  # (n,) int64
    meta: dict


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
    arrays = {}
    for kind in ("maps", "labels"):
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
    expected = (meta["grid_height"], meta["grid_width"]) + ((depth,) if depth > 1 else ())
    if maps.shape[1:] != expected or len(labels) != len(maps):
        raise ValueError(f"index maps in {directory} have shape {maps.shape}, "
                         f"expected (n, {', '.join(map(str, expected))}) with {len(labels)} labels")
    if maps.dtype.kind != "u":
        raise ValueError(f"index maps in {directory} have dtype {maps.dtype}, expected an unsigned integer type")
    if len(maps) and int(maps.max()) >= meta["codebook_size"]:
        raise ValueError(f"index maps in {directory} hold token {int(maps.max())}, "
                         f"past the codebook size {meta['codebook_size']}")
    return IndexMaps(maps, labels, meta)


class MapDataset(torch.utils.data.Dataset):
    """(tokens (h, w[, depth]) int64, label) pairs read from memory-mapped index maps: memory stays flat in N."""

    def __init__(self, index_maps):
        self.maps, self.labels = index_maps.maps, index_maps.labels

    def __len__(self):
        return len(self.maps)

    def __getitem__(self, i):
        return torch.from_numpy(self.maps[i].astype(np.int64)), int(self.labels[i])
