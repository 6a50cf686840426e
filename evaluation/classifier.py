"""A small convolutional classifier whose penultimate features stand in for Inception's in a Frechet distance.

The Frechet Inception Distance (Heusel et al. 2017) compares Gaussian fits to a network's features of real and
generated images. Inception was trained on ImageNet and needs the internet; for 28x28 Fashion-MNIST a classifier
trained once on the data set's own training split is the usual offline substitute, and it also tells whether a
class-conditional sample shows the class it was asked for. Figures made with one classifier are comparable with
each other only: the reference classifier is trained once per data set and reused.
"""

from dataclasses import dataclass

import torch.nn as nn


def conv_block(in_channels, out_channels, pool):
    """A 3x3 convolution and a ReLU, then (if pool) a 2x2 max-pool that halves the size."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


@dataclass
class ClassifierConfig:
    image_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    # 16, 32, 64 channels: one convolution per resolution is what lets two epochs of 60,000 images fit in about a
    # minute on two CPU cores (two per resolution at twice the width cost ~8x and gain ~1 point of accuracy).
    width: int = 16
    # 128 features: enough to separate ten classes, few enough that 10,000 samples give a stable covariance.
    feature_dim: int = 128

    def __post_init__(self):
        if self.image_size % 4 or self.image_size <= 0:
            raise ValueError(f"the classifier needs an image size divisible by 4, not {self.image_size}")
        for name in ("image_channels", "num_classes", "width", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"classifier {name} must be positive, not {getattr(self, name)}")


class Classifier(nn.Module):
    """images (b, c, H, W) in [0, 1] -> H/4 x W/4 maps of 4*width channels -> feature_dim features -> logits."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c, side = config.width, config.image_size // 4
        self.body = nn.Sequential(
            conv_block(config.image_channels, c, pool=True),  # (b, c, H/2, W/2)
            conv_block(c, 2 * c, pool=True),  # (b, 2c, H/4, W/4)
            conv_block(2 * c, 4 * c, pool=False),  # (b, 4c, H/4, W/4)
            nn.Flatten(),
            nn.Linear(4 * c * side * side, config.feature_dim), nn.ReLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())

    def features(self, images):
        """images (b, c, H, W) in [0, 1] -> penultimate features (b, feature_dim), after the ReLU."""
        return self.body(images)

    def forward(self, images):
        return self.head(self.features(images))  # (b, num_classes) logits
