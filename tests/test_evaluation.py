"""evaluation: the Frechet distance against closed forms, the reference classifier trained once per data set and
its features telling noise from data. (The command and evaluate() end to end: test_pipelines_evaluate.py.)"""

import json

import pytest
import torch

from evaluation.classifier import ClassifierConfig
from evaluation.frechet import feature_statistics, frechet_distance
from evaluation.reference import ClassifierTrainConfig, load_or_train_classifier, predict
from store.images import DataConfig, load_images

pytestmark = pytest.mark.usefixtures("one_thread")

# A classifier that trains in under a second on conftest's 256 synthetic images, to ~84% test accuracy.
TINY_CLASSIFIER = ClassifierConfig(width=8, feature_dim=16)
TINY_TRAINING = ClassifierTrainConfig(classifier_epochs=12, classifier_batch_size=32, classifier_learning_rate=5e-3)


def gaussian(n, mean, scale, seed):
    """n draws of a correlated 6-dimensional Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(6, 6, generator=torch.Generator().manual_seed(99))
    return mean + scale * torch.randn(n, 6, generator=generator, dtype=torch.float64) @ mixing.double()


def test_frechet_distance_of_a_set_to_itself_is_zero():
    stats = feature_statistics(gaussian(500, 3.0, 2.0, seed=0))
    assert frechet_distance(stats, stats) < 1e-6 * 2 * stats[1].trace().item()
    # Fewer vectors than dimensions: a singular covariance, whose rounding-negative eigenvalues are clamped.
    singular = feature_statistics(torch.randn(5, 40, generator=torch.Generator().manual_seed(1)))
    assert frechet_distance(singular, singular) < 1e-6 * 2 * singular[1].trace().item()


@pytest.mark.parametrize("mu1,s1,mu2,s2", [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.5), (3.0, 0.1, 3.0, 4.0)])
def test_frechet_distance_matches_the_closed_form_for_1d_gaussians(mu1, s1, mu2, s2):
    one = (torch.tensor([mu1], dtype=torch.float64), torch.tensor([[s1 ** 2]], dtype=torch.float64))
    two = (torch.tensor([mu2], dtype=torch.float64), torch.tensor([[s2 ** 2]], dtype=torch.float64))
    assert frechet_distance(one, two) == pytest.approx((mu1 - mu2) ** 2 + (s1 - s2) ** 2, rel=1e-9, abs=1e-12)


def test_frechet_distance_is_symmetric_and_blind_to_a_common_rotation():
    a, b = feature_statistics(gaussian(400, 0.0, 1.0, seed=2)), feature_statistics(gaussian(400, 0.5, 1.5, seed=3))
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))

    def rotate(stats):
        return rotation @ stats[0], rotation @ stats[1] @ rotation.T

    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert frechet_distance(rotate(a), rotate(b)) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_two_samples_of_one_gaussian_are_close_and_a_shifted_one_is_far():
    a, b = gaussian(4000, 0.0, 1.0, seed=5), gaussian(4000, 0.0, 1.0, seed=6)
    spread = feature_statistics(a)[1].trace().item()
    same = frechet_distance(feature_statistics(a), feature_statistics(b))
    shifted = frechet_distance(feature_statistics(a), feature_statistics(b + 1.0))
    assert same < 0.02 * spread
    assert shifted == pytest.approx(same + 6.0, rel=0.05)  # |shift|^2 = 6, the covariances are unchanged


def test_the_reference_classifier_is_trained_once_and_reused(fashion_dir, tmp_path):
    data = DataConfig(fashion_mnist_dir=str(fashion_dir))
    first = load_or_train_classifier(data, tmp_path, model_config=TINY_CLASSIFIER, train_config=TINY_TRAINING,
                                     progress=False)
    directory = tmp_path / "classifiers" / "fashion-mnist"
    assert first.trained and first.directory == directory
    assert {p.name for p in directory.iterdir()} == {"config.json", "model.safetensors", "results.json"}
    results = json.loads((directory / "results.json").read_text())
    assert results["test_accuracy"] > 0.6 and results["train_seconds"] > 0  # it learned: the majority class is 41%
    modified = (directory / "model.safetensors").stat().st_mtime_ns

    # Other training flags on the second call: the saved classifier is what counts, not the flags.
    second = load_or_train_classifier(data, tmp_path, model_config=ClassifierConfig(width=16),
                                      train_config=ClassifierTrainConfig(classifier_epochs=9), progress=False)
    assert not second.trained and second.results == results
    assert (directory / "model.safetensors").stat().st_mtime_ns == modified
    assert second.model.config.width == 8 and second.weights_sha256 == first.weights_sha256
    images = load_images(data, "test").images[:8]
    assert torch.equal(predict(first.model, images)[0], predict(second.model, images)[0])

    # Seeded: the same settings in another root give the same weights.
    again = load_or_train_classifier(data, tmp_path / "again", model_config=TINY_CLASSIFIER,
                                     train_config=TINY_TRAINING, progress=False)
    assert again.trained and again.weights_sha256 == first.weights_sha256

    config = json.loads((directory / "config.json").read_text())
    config["model"]["image_size"] = 32
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="was trained for fashion-mnist"):
        load_or_train_classifier(data, tmp_path, progress=False)


def test_noise_is_far_from_the_test_set_in_the_classifiers_features(fashion_dir, tmp_path):
    data = DataConfig(fashion_mnist_dir=str(fashion_dir))
    reference = load_or_train_classifier(data, tmp_path, model_config=TINY_CLASSIFIER, train_config=TINY_TRAINING,
                                         progress=False)
    train, test = load_images(data, "train"), load_images(data, "test")
    test_stats = feature_statistics(predict(reference.model, test.images)[0])
    floor = frechet_distance(feature_statistics(predict(reference.model, train.images)[0]), test_stats)
    noise = torch.rand(len(test), *test.images.shape[1:], generator=torch.Generator().manual_seed(0))
    far = frechet_distance(feature_statistics(predict(reference.model, noise)[0]), test_stats)
    assert far > 10 * floor and far > 0
