"""Images drawn large enough to judge by eye: a 28-pixel image is a thumbnail on any screen."""

import math

import torch.nn.functional as F


def enlarged(images, min_side=84):
    """images (n, c, H, W) float, repeated pixel by pixel (nearest) a whole number of times so that each side
    reaches min_side; images that large already come back as they are."""
    factor = math.ceil(min_side / min(images.shape[-2:]))
    return images if factor <= 1 else F.interpolate(images, scale_factor=factor, mode="nearest")
