"""The Frechet distance between Gaussian fits to two sets of features (Heusel et al. 2017, the 'FID' formula):

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2)

The matrix square roots come from symmetric eigen-decompositions in float64 (no scipy); eigenvalues that round
below zero are clamped, so the distance of a set to itself is 0 up to rounding.
"""

import torch


def feature_statistics(features):
    """features (n, d) -> (mean (d,), covariance (d, d)), float64 on the CPU."""
    features = features.detach().double().cpu()
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"feature statistics need 2 or more feature vectors (n, d), not shape {tuple(features.shape)}")
    return features.mean(dim=0), torch.cov(features.T)


def _sqrt_psd(matrix):
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(stats_a, stats_b):
    """Frechet distance between two (mean, covariance) pairs; a float."""
    (mean_a, cov_a), (mean_b, cov_b) = stats_a, stats_b
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"feature statistics of different dimensions: {tuple(mean_a.shape)} and {tuple(mean_b.shape)}")
    # Tr((S_a^1/2 S_b S_a^1/2)^1/2) is the trace of sqrt(S_a S_b) in the formula, through a symmetric matrix, so
    # eigh applies and the result is real.
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_cross
    return max(float(distance), 0.0)
