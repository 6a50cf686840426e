"""A small convolutional classifier whose penultimate features stand in for Inception's in a Frechet distance.

The Frechet Inception Distance (Heusel et al. 2017) compares Gaussian fits to a network's features of real and
generated images. Inception was trained on ImageNet and needs the internet; for 28x28 Fashion-MNIST a classifier
trained once on the data set's own training split is the usual offline substitute, and it also tells whether a
class-conditional sample shows the class it was asked for.
"""

from dataclasses import dataclass, field

import torch.nn as nn


def conv_stage(in_channels, out_channels):
    """A 3x3 convolution and a 2x2 max-pool: half the size, out_channels wide."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))


@dataclass
class ClassifierConfig:
    image_channels: int = field(default=1, metadata={"help": "channels of the images: 1 or 3"})
    image_size: int = field(default=28, metadata={"help": "height and width of the images, a multiple of 4"})
    num_classes: int = field(default=10, metadata={"help": "classes of the data set"})
    # Small on purpose: it trains in about a minute on 2 CPU cores and still reaches ~90% on Fashion-MNIST.
    width: int = field(default=16, metadata={"help": "channels of the first stage; the second has twice this"})
    # 128 features: enough to separate ten classes, few enough that 10,000 samples give a stable covariance.
    feature_dim: int = field(default=128, metadata={"help": "dimensions of the penultimate features"})


class Classifier(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        c, side = config.width, config.image_size // 4
        self.body = nn.Sequential(conv_stage(config.image_channels, c), conv_stage(c, 2 * c), nn.Flatten(),
                                  nn.Linear(2 * c * side * side, config.feature_dim), nn.ReLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images):
        """images (b, c, H, W) in [0, 1] -> penultimate features (b, feature_dim)."""
        return self.body(images)

    def forward(self, images):
        return self.head(self.features(images))  # (b, num_classes) logits
