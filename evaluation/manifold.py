"""Fidelity and diversity apart, and copies of the training set: figures of nearest neighbours in feature space.

One Frechet distance cannot tell a generator that draws few good images from one that draws many poor ones. Two
pairs of figures can, each estimating the real and the generated manifolds as unions of balls around the points,
a ball reaching a point's k-th nearest neighbour in its own set (k = 3 in both papers):

- precision and recall (Kynkaanniemi et al. 2019): the share of samples inside the real manifold (fidelity), and of
  real images inside the samples' manifold (diversity);
- density and coverage (Naeem et al. 2020): how many real balls hold a sample, on average, over k (fidelity; 1 when
  the samples sit where the real images are, above 1 where they crowd into dense real regions), and the share of
  real balls that hold a sample (diversity; robust to the outlying samples that swell recall).

copies() asks whether samples are training images: a sample counts when it lies nearer to its nearest training image
than any test image does; test images themselves, each against the rest of the test split, are the yardstick.

Distances are Euclidean in float64, a block of rows at a time, so that memory stays bounded for 60,000 training
images.
"""

import torch

NEAREST_K = 3
BLOCK_ELEMENTS = 1 << 24  # distances held at once (128 MiB of float64)


def _blocks(a, b):
    """(start, distances (rows, len(b)) float64) for blocks of a's rows against all of b."""
    a, b = a.double(), b.double()
    b_squared = b.square().sum(dim=1)
    rows = max(1, BLOCK_ELEMENTS // max(1, len(b)))
    for start in range(0, len(a), rows):
        block = a[start:start + rows]
        squared = block.square().sum(dim=1, keepdim=True) + b_squared - 2 * block @ b.T
        yield start, squared.clamp_(min=0).sqrt_()


def _check(features, name, at_least):
    if features.ndim != 2 or len(features) < at_least:
        raise ValueError(f"{name}: need {at_least} or more feature vectors (n, d), not shape {tuple(features.shape)}")


def knn_radii(features, k=NEAREST_K):
    """The distance from each point to its k-th nearest other point of the same set: (n,) float64."""
    _check(features, "nearest-neighbour radii", k + 1)
    radii = torch.empty(len(features), dtype=torch.float64)
    for start, distances in _blocks(features, features):
        # The point itself is among the k + 1 nearest (at distance 0, up to rounding): the (k + 1)-th is the k-th other.
        radii[start:start + len(distances)] = distances.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def precision_recall_density_coverage(real, fake, k=NEAREST_K):
    """{"precision", "recall", "density", "coverage"} of fake features (m, d) against real features (n, d)."""
    _check(real, "real features", k + 1)
    _check(fake, "generated features", k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"features of different dimensions: {real.shape[1]} and {fake.shape[1]}")
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    fake_inside = torch.zeros(len(fake), dtype=torch.bool)  # inside some real ball
    balls_holding = torch.zeros(len(fake), dtype=torch.float64)  # how many real balls hold each sample
    real_inside = torch.zeros(len(real), dtype=torch.bool)  # inside some fake ball
    real_covered = torch.zeros(len(real), dtype=torch.bool)  # its own ball holds some sample
    for start, distances in _blocks(real, fake):  # (real rows, fake)
        radii = real_radii[start:start + len(distances), None]
        within_real_ball = distances <= radii
        fake_inside |= within_real_ball.any(dim=0)
        balls_holding += within_real_ball.sum(dim=0)
        real_inside[start:start + len(distances)] = (distances <= fake_radii).any(dim=1)
        real_covered[start:start + len(distances)] = within_real_ball.any(dim=1)
    return {"precision": fake_inside.double().mean().item(), "recall": real_inside.double().mean().item(),
            "density": (balls_holding.sum() / (k * len(fake))).item(),
            "coverage": real_covered.double().mean().item()}


def nearest(queries, points):
    """(distances (q,) float64, indices (q,)) of each query's nearest point."""
    _check(points, "nearest points", 1)
    distances, indices = torch.empty(len(queries), dtype=torch.float64), torch.empty(len(queries), dtype=torch.long)
    for start, block in _blocks(queries, points):
        found = block.min(dim=1)
        distances[start:start + len(block)], indices[start:start + len(block)] = found.values, found.indices
    return distances, indices


def copies(samples, train, test):
    """Whether samples are copies of training images, in features (n, d) of samples, train and test.

    Returns {"fraction": the share of samples nearer to their nearest training image than any test image is,
    "test_fraction": the same share of test images, each against the other test images (what a generator that
    draws new images from the data's distribution would score), "distances", "indices": each sample's distance to
    its nearest training image and that image's index}.
    """
    _check(test, "test features", 2)
    _check(train, "training features", 1)
    # One pass over the (train, test) distances: each test image's nearest training image, and each training
    # image's two nearest test images (the nearest is the yardstick for a sample; for the test image that is itself
    # the nearest, the second).
    test_distances = torch.full((len(test),), float("inf"), dtype=torch.float64)
    test_nearest = torch.zeros(len(test), dtype=torch.long)
    closest = torch.empty((len(train), 2), dtype=torch.float64)
    closest_index = torch.empty((len(train), 2), dtype=torch.long)
    for start, block in _blocks(train, test):  # (train rows, test)
        two = block.topk(2, dim=1, largest=False)
        closest[start:start + len(block)], closest_index[start:start + len(block)] = two.values, two.indices
        found = block.min(dim=0)
        better = found.values < test_distances
        test_distances = torch.where(better, found.values, test_distances)
        test_nearest = torch.where(better, found.indices + start, test_nearest)
    itself_nearest = closest_index[test_nearest, 0] == torch.arange(len(test))
    yardstick = torch.where(itself_nearest, closest[test_nearest, 1], closest[test_nearest, 0])
    test_copies = test_distances < yardstick
    distances, indices = nearest(samples, train)
    sample_copies = distances < closest[indices, 0]
    return {"fraction": sample_copies.double().mean().item(), "test_fraction": test_copies.double().mean().item(),
            "distances": distances, "indices": indices}
