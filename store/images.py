"""Image data sets on disk as uint8 tensors (n, c, h, w) with int64 labels.

Data sets: Fashion-MNIST (the default: Debian's package where it is installed, offline; else downloaded once into the
data folder, with torchvision's mirror and checksums), MNIST and CIFAR-10 through torchvision (downloaded), and any
folder of images; also one image file read for a given tokenizer (completion).
"""

import array
import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from store.runs import owner_tag, remove_orphans

# Where Debian's dataset-fashion-mnist package puts its files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Pillow's modes of one grey channel (with or without alpha), and of 16 or 32-bit integer grey.
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
SPLITS = ("train", "test")
# Fashion-MNIST's files per split (images, labels), as Debian's package and the download both hold them.
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                       "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# A downloaded file passes with torchvision's MD5 sum of the original .gz, or with the SHA-256 of the idx bytes inside
# Debian's package's files, which are recompressed (other MD5 sums): a mirror of either is accepted.
FASHION_MNIST_IDX_SHA256 = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"}
# The data sets known by name; any other images are read as folder:PATH.
DATASETS = ("fashion-mnist", "mnist", "cifar10")


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    data_dir: str = "data"
    image_size: int = 0
    fashion_mnist_dir: str = DEBIAN_FASHION_MNIST_DIR
    fashion_mnist_mirror: str = ""

    def sources(self):
        """The paths reading this data set reads: its folder, or where its files are kept."""
        if self.dataset.startswith("folder:"):
            return [Path(self.dataset[len("folder:"):])]
        if self.dataset == "fashion-mnist":
            return [fashion_mnist_folder(self)]
        return [Path(self.data_dir)]


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


def load_images(config, split, lazy=False, channels=None):
    """The split ('train' or 'test'; for a folder also 'all', every image) of the configured data set; a one-line
    ValueError when it can't be had.

    lazy: a folder's images are checked now but decoded only when indexed (FolderImages), so that a pass over
    them in batches (training, the dump) holds one batch at a time; the other data sets are small and always in
    memory. channels: 1 or 3 to read a folder's images as grey or RGB (default: as its first image is).
    """
    name = config.dataset
    if config.image_size < 0:
        raise ValueError(f"`image_size` must be positive (or 0: the data set's own size), not {config.image_size}")
    if name == "fashion-mnist":
        return resized(_read_fashion_mnist(download_fashion_mnist(config), split), config.image_size)
    if name in DATASETS:  # the others, through torchvision
        return resized(_read_torchvision(name, split, config.data_dir), config.image_size)
    if name.startswith("folder:"):
        images = _read_folder(Path(name[len("folder:"):]), split, config.image_size or 28, channels)
        return images if lazy else ImageSet(images[:], images.labels, images.class_names)
    raise ValueError(f"unknown dataset {name!r}: use {', '.join(DATASETS)} or folder:PATH")


def resized(image_set, size, chunk=4096):
    """The ImageSet with its images resized to size x size (bilinear with antialiasing, as PIL resizes a folder's
    images), or as it is when size is 0 or its own."""
    images = image_set.images
    if not size or tuple(images.shape[-2:]) == (size, size):
        return image_set
    out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        batch = torch.nn.functional.interpolate(images[start:start + chunk].float(), size=(size, size),
                                                mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = batch.round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(out, image_set.labels, image_set.class_names)


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _holds_fashion_mnist(directory):
    return all((Path(directory) / name).is_file() for names in FASHION_MNIST_FILES.values() for name in names)


def fashion_mnist_folder(config):
    """The folder Fashion-MNIST is read from: fashion_mnist_dir when it holds the four files (Debian's package puts
    them in its default), else DATA_DIR/fashion-mnist, where download_fashion_mnist puts them."""
    directory = Path(config.fashion_mnist_dir)
    return directory if _holds_fashion_mnist(directory) else Path(config.data_dir) / "fashion-mnist"


def download_fashion_mnist(config, progress=True):
    """fashion_mnist_folder(config), its files downloaded first when it lacks them (from config's mirror, else
    torchvision's), each checked (FASHION_MNIST_IDX_SHA256) and renamed into place whole: nothing is written
    beside them until a file is complete, and a copy killed on its way in (a hidden .NAME.<host>-<pid>-part.tmp)
    is removed by the next download once that process is gone. No network and no files: one ValueError saying both
    ways to get them."""
    folder = fashion_mnist_folder(config)
    if _holds_fashion_mnist(folder):
        return folder
    import torchvision  # its mirror list and checksums, the ones torchvision.datasets.FashionMNIST downloads with

    checksums = dict(torchvision.datasets.FashionMNIST.resources)
    mirrors = [config.fashion_mnist_mirror] if config.fashion_mnist_mirror else \
        list(torchvision.datasets.FashionMNIST.mirrors)
    remove_orphans(folder)
    staging = Path(tempfile.mkdtemp(prefix="fashion-mnist-"))  # the system's temporary folder
    try:
        for names in FASHION_MNIST_FILES.values():
            for name in names:
                if not (folder / name).is_file():
                    _download_checked(mirrors, name, checksums[name], staging / name, progress)
                    folder.mkdir(parents=True, exist_ok=True)
                    part = folder / f".{name}.{owner_tag()}-part.tmp"
                    shutil.move(staging / name, part)  # a copy where the temporary folder is another file system
                    os.replace(part, folder / name)
    except (OSError, ValueError) as error:
        raise ValueError(f"Fashion-MNIST is not in {config.fashion_mnist_dir} and could not be downloaded into "
                         f"{folder} ({' '.join(str(error).split())}): install Debian's package "
                         "('apt-get install -y dataset-fashion-mnist'), or put its four .gz files in a folder and "
                         "name it as `fashion_mnist_dir`") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _download_checked(mirrors, name, md5, path, progress):
    """One file from the first mirror that gives it whole, with its MD5 sum checked; a ValueError naming each
    mirror's failure otherwise."""
    from tqdm.auto import tqdm

    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        try:
            digest = hashlib.md5()
            with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out, \
                    tqdm(total=response.length, unit="B", unit_scale=True, desc=f"download {name}", leave=False,
                         disable=not progress) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if digest.hexdigest() != md5 and _idx_sha256(path) != FASHION_MNIST_IDX_SHA256[name]:
                raise ValueError(f"{url} gave a file that is not Fashion-MNIST's (checksums differ)")
            return
        except (OSError, http.client.HTTPException, ValueError) as error:  # URLError is an OSError
            failures.append(f"{url}: {error!r}" if isinstance(error, http.client.HTTPException) else f"{url}: {error}")
    raise ValueError("; ".join(failures))


def _idx_sha256(path):
    """The SHA-256 of a .gz file's decompressed bytes (None when it is no gzip file)."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError):
        return None
    return digest.hexdigest()


def _read_fashion_mnist(directory, split):
    images_path, labels_path = (directory / name for name in FASHION_MNIST_FILES[split])
    try:
        images = torch.from_numpy(_read_idx(images_path).copy()).unsqueeze(1)
        labels = torch.from_numpy(_read_idx(labels_path).astype(np.int64))
    except (OSError, EOFError, ValueError) as error:
        raise ValueError(f"Fashion-MNIST files in {directory} are unreadable ({error})") from None
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


def _read_folder(root, split, image_size, channels=None):
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder of images" if root.exists()
                         else f"image folder {root} does not exist")
    # The split's paths are kept as one string of bytes (a PathList), their folders as one integer per file.
    paths, parents, parent_ids = PathList(), array.array("q"), {}
    for i, relative in enumerate(_image_files(root)):
        # Sub-folders are classes, as in torchvision's ImageFolder; a flat folder is one class (".").
        parent = relative.rpartition("/")[0] or "."
        parent_id = parent_ids.setdefault(parent, len(parent_ids))
        if split == "all" or (i % 10 == 9) == (split == "test"):
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
    unreadable, floats, mode = [], [], {None: None, 1: "L", 3: "RGB"}[channels]
    for relative in paths:
        path = root / relative
        try:
            with Image.open(path) as image:
                if image.mode == "F":
                    floats.append(str(path))
                image.verify()
            if mode is None:  # the first image's channels (a palette is read, which verify() must precede)
                with Image.open(path) as image:
                    mode = "L" if is_grey(image) else "RGB"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            unreadable.append(str(path))
    if unreadable:
        raise ValueError(f"{len(unreadable)} unreadable image file(s): {', '.join(unreadable)}")
    if floats:
        raise ValueError(f"{len(floats)} image file(s) with 32-bit float pixels, whose range is unknown (save them "
                         f"with 8 or 16-bit pixels): {', '.join(floats)}")
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
                    image = eight_bit(image, self.mode).resize((self.image_size, self.image_size), Image.BILINEAR)
                    decoded.append(torch.from_numpy(np.asarray(image).copy()))
            except (OSError, UnidentifiedImageError, ValueError) as error:
                raise ValueError(f"unreadable image file {path} ({error})") from None
        if not decoded:
            return torch.zeros((0, *self.shape[1:]), dtype=torch.uint8)
        stacked = torch.stack(decoded)
        return (stacked.unsqueeze(1) if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)).contiguous()


def is_grey(image):
    """Whether a Pillow image has one grey channel: a grey mode, or a palette of grey colours only."""
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.getpalette() or [0, 0, 0]).reshape(-1, 3)
        return bool((palette == palette[:, :1]).all())
    return image.mode in GREY_MODES


def eight_bit(image, mode):
    """A Pillow image of any mode as 8-bit "L" or "RGB" (mode) with the intensities of its 8-bit version: 16-bit
    grey (and Pillow's 32-bit "I", which it gives for some 16-bit files) is scaled by 255 / 65535, not clipped at
    255 as Image.convert does; every other mode (1-bit, grey + alpha, palette, RGB(A), CMYK, 16-bit RGB, which
    Pillow reads as 8-bit) goes through convert. Float pixels (mode F) have no range to scale from: refused."""
    from PIL import Image

    if image.mode == "F":
        raise ValueError("its pixels are 32-bit floats, whose range is unknown: save it with 8 or 16-bit pixels")
    if image.mode in WIDE_GREY_MODES:
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.rint(values / 257).clip(0, 255).astype(np.uint8), mode="L")
    with warnings.catch_warnings():  # a palette's transparency: dropped, as for RGBA, without a warning line
        warnings.simplefilter("ignore")
        return image.convert(mode)


def fit_image(image, channels, size):
    """A Pillow image of any size and mode as uint8 (1, channels, size, size): 8-bit (eight_bit), its centre
    square cropped, resized with antialiasing. For a picture a user hands over; read_image refuses other sizes."""
    from PIL import Image

    image = eight_bit(image, "L" if channels == 1 else "RGB")
    side = min(image.size)
    left, top = (image.size[0] - side) // 2, (image.size[1] - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)
    tensor = torch.from_numpy(np.asarray(image).copy())
    return (tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)).unsqueeze(0)


def read_image(path, channels, size):
    """One image file as uint8 (1, channels, size, size); a file of another size is refused, not resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(eight_bit(image, "L" if channels == 1 else "RGB")).copy()
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"cannot read image {path} ({error})") from None
    if array.shape[:2] != (size, size):
        raise ValueError(f"image {path} is {array.shape[1]}x{array.shape[0]}, the tokenizer takes {size}x{size}")
    tensor = torch.from_numpy(array)
    return (tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)).unsqueeze(0)


def _grey_of_rgb(array):
    """uint8 (..., 3) -> (...): Pillow's "L" conversion (ITU-R 601-2 luma, its integer rounding), so that an array
    and the PNG files of the same pictures read the same; equal channels give that channel back exactly."""
    wide = array.astype(np.uint32)
    return ((wide[..., 0] * 19595 + wide[..., 1] * 38470 + wide[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def read_image_collection(path, channels, size):
    """Images some model made, as uint8 (n, channels, size, size): a folder of image files (every one under it, in
    sorted order) or an .npz whose arr_0 is uint8 (n, H, W, 3), (n, H, W, 1) or (n, H, W), as the reference-batch
    evaluators write. Grey and colour are converted as Pillow converts; other sizes are refused, not resized."""
    path = Path(path)
    if path.is_dir():
        files = list(_image_files(path))
        if not files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}")
        return torch.cat([read_image(path / relative, channels, size) for relative in files])
    if not path.exists():
        raise ValueError(f"images {path} do not exist")
    if path.suffix.lower() != ".npz":
        raise ValueError(f"{path} is neither a folder of images nor an .npz file")
    if not zipfile.is_zipfile(path):  # np.load reads a non-zip file as a pickle, refused with a long message
        raise ValueError(f"cannot read {path}: not an .npz (zip) file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            array = archive["arr_0"] if "arr_0" in names else None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path} ({str(error).splitlines()[0]})") from None
    if array is None:
        raise ValueError(f"{path} has no array arr_0 (it has {', '.join(names) or 'none'})")
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3)):
        raise ValueError(f"arr_0 of {path} is {array.dtype} {array.shape}: expected uint8 (n, H, W, 3), "
                         "(n, H, W, 1) or (n, H, W)")
    if array.shape[1:3] != (size, size):
        raise ValueError(f"the images of {path} are {array.shape[2]}x{array.shape[1]}, the reference is {size}x{size}")
    if array.ndim == 3:
        array = array[..., None]
    if channels == 1 and array.shape[3] == 3:
        array = _grey_of_rgb(array)[..., None]
    images = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    return (images.expand(-1, 3, -1, -1) if channels == 3 and images.shape[1] == 1 else images).contiguous()
