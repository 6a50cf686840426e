"""Images drawn large enough to judge by eye: a 28-pixel image is a thumbnail on any screen."""

import math

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
