"""evaluation.manifold: precision, recall, density and coverage against values worked out by hand and against
torch-fidelity's own precision and recall; fidelity and diversity told apart; copies of the training set found."""

import pytest
import torch

from evaluation import manifold
from evaluation.manifold import copies, knn_radii, precision_recall_density_coverage


def column(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]


def test_one_dimensional_sets_give_the_figures_worked_out_by_hand():
    real, fake = column(0, 1, 2, 3, 10), column(0.5, 2.5, 20, 9, 9.5)
    # Radii (k = 1): real 1, 1, 1, 1, 7; fake 2, 2, 10.5, 0.5, 0.5.
    assert knn_radii(real, k=1).tolist() == [1, 1, 1, 1, 7]
    assert knn_radii(fake, k=1).tolist() == [2, 2, 10.5, 0.5, 0.5]
    figures = precision_recall_density_coverage(real, fake, k=1)
    # 20 lies in no real ball: precision 4/5. The outlier's wide ball reaches 10: recall 5/5 (what coverage avoids
    # for outliers is not at stake here: every real ball holds a sample). Balls holding each sample: 0.5 -> {0, 1},
    # 2.5 -> {2, 3}, 20 -> none, 9 -> {10}, 9.5 -> {10}: density 6 / (1 * 5).
    assert figures == pytest.approx({"precision": 0.8, "recall": 1.0, "density": 1.2, "coverage": 1.0}, abs=1e-12)


def test_the_third_neighbour_radii_and_balls_that_reach_exactly_a_sample():
    real = column(0, 1, 2, 3, 4, 5, 6)
    assert knn_radii(real).tolist() == [3, 2, 2, 2, 2, 2, 3]  # k = 3: the third nearest other point
    figures = precision_recall_density_coverage(real, column(0, 1, 2, 100))
    # Real balls holding sample 0: those of 0, 1, 2 (3 is 3 away, its radius 2); sample 1: 0, 1, 2, 3 (at 2 exactly:
    # a ball is closed); sample 2: 0..4; sample 100: none.
    assert figures["precision"] == 0.75 and figures["density"] == pytest.approx((3 + 4 + 5) / (3 * 4))
    # The samples' radii (k = 3): 100, 99, 98, 100: every real point lies in some sample's ball.
    assert figures["recall"] == 1.0
    # Real balls holding a sample: those of 0..4 (5 is 3 from sample 2, its radius 2; 6 is 4 from it, radius 3).
    assert figures["coverage"] == pytest.approx(5 / 7)


def test_precision_and_recall_agree_with_torch_fidelity():
    from torch_fidelity.metric_prc import prc_features_to_metric

    generator = torch.Generator().manual_seed(3)
    real = torch.randn(300, 8, generator=generator)
    fake = 0.7 * torch.randn(250, 8, generator=generator) + 0.4
    ours = precision_recall_density_coverage(real, fake)
    theirs = prc_features_to_metric(fake, real)  # torch-fidelity takes the generated features first
    assert ours["precision"] == pytest.approx(theirs["precision"], abs=1e-6)
    assert ours["recall"] == pytest.approx(theirs["recall"], abs=1e-6)


def test_density_and_coverage_agree_with_a_direct_computation_across_blocks(monkeypatch):
    monkeypatch.setattr(manifold, "BLOCK_ELEMENTS", 1000)  # many small blocks of rows
    generator = torch.Generator().manual_seed(4)
    real, fake = torch.randn(120, 5, generator=generator), torch.randn(90, 5, generator=generator) + 0.3
    distances = torch.cdist(real.double(), fake.double())
    radii = torch.cdist(real.double(), real.double()).sort(dim=1).values[:, 3]
    figures = precision_recall_density_coverage(real, fake)
    assert figures["density"] == pytest.approx((distances <= radii[:, None]).sum().item() / (3 * 90))
    assert figures["coverage"] == pytest.approx((distances.min(dim=1).values <= radii).double().mean().item())


def test_a_generator_that_draws_one_mode_well_has_fidelity_without_diversity():
    generator = torch.Generator().manual_seed(5)
    centres = 10 * torch.randn(5, 4, generator=generator)
    real = (centres.repeat_interleave(100, 0) + torch.randn(500, 4, generator=generator))
    one_mode = centres[0] + torch.randn(500, 4, generator=generator)
    everywhere = centres.repeat_interleave(100, 0) + torch.randn(500, 4, generator=generator)
    narrow = precision_recall_density_coverage(real, one_mode)
    like_real = precision_recall_density_coverage(real, everywhere)
    assert narrow["precision"] > 0.8 and narrow["recall"] < 0.3 and narrow["coverage"] < 0.3
    assert like_real["precision"] > 0.8 and like_real["recall"] > 0.8 and like_real["coverage"] > 0.8
    assert 0.7 < like_real["density"] < 1.3  # real against real: about 1
    noise = precision_recall_density_coverage(real, 30 * torch.randn(500, 4, generator=generator))
    assert noise["precision"] < 0.2 and noise["density"] < 0.2


def test_copies_are_told_from_new_images_by_the_test_split_yardstick():
    train, test = column(0, 10), column(1, 2, 9)
    # Test 1: nearest training image 0 at 1, the other test images come no nearer than 2: counts. Test 2: at 2 from
    # 0, where test 1 is at 1: does not. Test 9: at 1 from 10, the others 8 away: counts.
    found = copies(column(0.2, 5.5, 10), train, test)
    assert found["test_fraction"] == pytest.approx(2 / 3)
    # 0.2 lies nearer 0 than any test image (1); 5.5 is 4.5 from 10, where 9 lies at 1; 10 is a training image.
    assert found["fraction"] == pytest.approx(2 / 3)
    assert found["indices"].tolist() == [0, 1, 1] and found["distances"].tolist() == pytest.approx([0.2, 4.5, 0])

    generator = torch.Generator().manual_seed(6)
    train, test = torch.randn(400, 6, generator=generator), torch.randn(100, 6, generator=generator)
    assert copies(train[:50] + 1e-4, train, test)["fraction"] == 1.0  # near-exact copies
    assert copies(torch.randn(50, 6, generator=generator) + 20, train, test)["fraction"] == 0.0


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match="need 4 or more feature vectors"):
        precision_recall_density_coverage(column(0, 1, 2), column(0, 1, 2, 3))
    with pytest.raises(ValueError, match="different dimensions"):
        precision_recall_density_coverage(torch.zeros(5, 2), torch.zeros(5, 3))
