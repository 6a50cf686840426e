"""Pictures of images: drawn large enough to judge by eye (a 28-pixel image is a thumbnail on any screen), one PNG
per image, or one .npz of them all for the evaluators of other projects."""

import math
import zipfile

import numpy as np
import torch
import torch.nn.functional as F


def enlarged(images, min_side=84):
    """images (n, c, H, W) float, repeated pixel by pixel (nearest) a whole number of times so that each side
    reaches min_side; images that large already come back as they are."""
    factor = math.ceil(min_side / min(images.shape[-2:]))
    return images if factor <= 1 else F.interpolate(images, scale_factor=factor, mode="nearest")


def mosaic(images, pad_value=1.0, columns=None):
    """images (n, c, H, W) float in [0, 1], enlarged, in a square-ish grid (or `columns` wide): one float image
    (3, H', W') in [0, 1]."""
    from torchvision.utils import make_grid  # seconds to import: not before there is work

    images = enlarged(images)
    return make_grid(images, nrow=columns or math.ceil(math.sqrt(len(images))), padding=2, pad_value=pad_value)


def mosaic_array(images, pad_value=1.0, columns=None):
    """mosaic() as a uint8 array (H', W', 3), for an image widget or PIL."""
    grid = mosaic(images, pad_value, columns)
    return (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def save_mosaic(path, images, pad_value=1.0):
    """A PNG of images (n, c, H, W) float in [0, 1], enlarged, in a square-ish grid."""
    from torchvision.utils import save_image

    save_image(mosaic(images, pad_value), path, format="PNG")


def save_pngs(folder, images, first=0):
    """One PNG per image (n, c, H, W) float in [0, 1], named by its index from first: 00000.png, 00001.png..."""
    from torchvision.utils import save_image

    for i, image in enumerate(images, start=first):
        save_image(image, folder / f"{i:05d}.png", format="PNG")


def as_uint8(images):
    """[0, 1] float images as the 8-bit pixels a PNG file of them holds (torchvision's save_image rounding)."""
    return images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


class NpzImageWriter:
    """An .npz as numpy.savez writes it, arr_0 uint8 (n, H, W, 3) (grey repeated: the reference-batch evaluators of
    guided-diffusion, LlamaGen and VAR read three channels), written batch by batch: memory stays flat in n. The
    pixels are those of the PNG files of the same images."""

    def __init__(self, path, count, height, width):
        self.archive = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.member = self.archive.open("arr_0.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self.member, {"descr": "|u1", "fortran_order": False,
                                                           "shape": (count, height, width, 3)})
        self.left = count

    def write(self, images):
        """images (b, c, H, W) float in [0, 1], the next b of the n."""
        if len(images) > self.left:
            raise ValueError(f"{len(images)} more images than the {self.left} left to write")
        pixels = as_uint8(images.detach().float().cpu()).expand(-1, 3, -1, -1)
        self.member.write(pixels.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
        self.left -= len(images)

    def __enter__(self):
        return self

    def __exit__(self, kind, *_):
        self.member.close()
        self.archive.close()
        if kind is None and self.left:
            raise ValueError(f"{self.left} images were never written into the .npz")
