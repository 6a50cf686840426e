import json

import pytest
import torch

from conftest import TINY_PRIOR, run_in_process, run_module
from evaluation.classifier import ClassifierConfig
from evaluation.frechet import feature_statistics, frechet_distance
from evaluation.reference import ClassifierTrainConfig, load_or_train_classifier, predict
from evaluation.report import FIGURES
from pipelines import evaluate, fit_prior
from store.images import DataConfig, load_images

pytestmark = pytest.mark.usefixtures("one_thread")

# A classifier that trains in under a second on conftest's 256 synthetic images, to ~84% test accuracy.
TINY_CLASSIFIER = ClassifierConfig(width=8, feature_dim=16)
TINY_TRAINING = ClassifierTrainConfig(classifier_epochs=12, classifier_batch_size=32, classifier_learning_rate=5e-3)
TINY_CLASSIFIER_FLAGS = ["--width", "8", "--feature-dim", "16", "--classifier-epochs", "12",
                         "--classifier-batch-size", "32", "--classifier-learning-rate", "5e-3"]
PICTURES = ["tokenizer_curves.png", "prior_curves.png", "codebook_usage.png", "reconstructions.png", "samples.png"]


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


def run_cli(args, capsys):
    return run_in_process(evaluate.main, args, capsys)


def test_evaluate_writes_a_report_of_a_prior_and_of_a_tokenizer_alone(tokenizer_run, fashion_dir, tmp_path, capsys):
    root = tmp_path / "runs"
    fit_prior.main([*TINY_PRIOR, "--tokenizer", tokenizer_run, "--output-root", root, "--run-name", "p",
                    "--condition", "class"])
    out = tmp_path / "report"
    common = ["--output-root", root, "--batch-size", 8, *TINY_CLASSIFIER_FLAGS]
    status, lines, _ = run_cli([*common, "--n-samples", 23, "--out", out], capsys)  # the newest prior: p
    assert status == 0
    assert lines[-1].startswith("Frechet distance to test") and lines[-1].endswith(f"{out / 'report.html'}")

    report = json.loads((out / "report.json").read_text())
    figures = report["figures"]
    assert set(figures) == {key for key, *_ in FIGURES}
    assert all(value is not None for value in figures.values()), figures
    assert figures["fd_train_vs_test"] >= 0 and figures["fd_reconstructions_vs_test"] > 0
    assert figures["fd_samples_vs_test"] > 0 and 0 <= figures["classifier_accuracy_on_samples"] <= 1
    assert figures["prior_test_bits_per_token"] == json.loads((root / "prior" / "p" / "results.json").read_text())[
        "test_bits_per_token"]
    assert 0 < figures["reconstruction_mse"] < 1 and figures["reconstruction_psnr"] > 0
    assert report["runs"]["prior"] == str((root / "prior" / "p").resolve())
    assert report["runs"]["tokenizer"] == str(tokenizer_run.resolve())
    assert report["counts"] == {"train": 256, "test": 64, "samples": 23}
    # 23 samples over 10 classes: 3 of the first three, 2 of the others, each checked against its own label.
    classes = load_images(DataConfig(fashion_mnist_dir=str(fashion_dir)), "test").class_names
    assert list(report["per_class_sample_accuracy"]) == classes
    assert report["classifier"]["trained_now"] and report["classifier"]["config"]["width"] == 8
    assert report["settings"]["n_samples"] == 23 and report["seconds"]["total"] > 0
    assert report["pictures"] == PICTURES
    html = (out / "report.html").read_text()
    for name in PICTURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{name}"' in html
    assert "Frechet distance, samples vs test" in html and "Sandal" in html  # the table and the per-class table
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.")], "staging folder left behind"

    # The tokenizer alone: no samples, no prior figures, the same classifier, not retrained.
    alone = tmp_path / "alone"
    status, _, _ = run_cli([*common, "--tokenizer", tokenizer_run, "--out", alone], capsys)
    assert status == 0
    report_alone = json.loads((alone / "report.json").read_text())
    assert report_alone["runs"]["prior"] is None and report_alone["counts"]["samples"] == 0
    assert report_alone["figures"]["fd_samples_vs_test"] is None
    assert report_alone["figures"]["prior_test_bits_per_token"] is None
    assert report_alone["figures"]["fd_train_vs_test"] == pytest.approx(figures["fd_train_vs_test"], rel=1e-9)
    assert not report_alone["classifier"]["trained_now"]
    assert report_alone["classifier"]["weights_sha256"] == report["classifier"]["weights_sha256"]
    assert report_alone["pictures"] == ["tokenizer_curves.png", "codebook_usage.png", "reconstructions.png"]

    # Bad input: one line on stderr, exit status 2, the existing report untouched.
    before = (out / "report.json").read_bytes()
    for extra, message in ((["--out", out], "exists already"),
                           (["--out", tmp_path / "x", "--n-samples", 0], "n must be a positive integer"),
                           (["--out", tmp_path / "x", "--top-k", 999], "top_k must be an integer in 1..32"),
                           (["--out", tmp_path / "x", "--prior", root / "prior" / "p", "--tokenizer", tmp_path],
                            "was trained for tokenizer")):
        status, _, errors = run_cli([*common, *extra], capsys)
        assert status == 2 and len(errors) == 1 and message in errors[0], errors
    assert (out / "report.json").read_bytes() == before and not (tmp_path / "x").exists()


def test_a_missing_run_is_one_line_from_the_command_line(tmp_path):
    result = run_module("pipelines.evaluate", "--prior", tmp_path / "nowhere", "--out", tmp_path / "out",
                        "--output-root", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: run directory {tmp_path / 'nowhere'} does not exist"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "classifiers").exists()


def test_no_prior_run_at_all_is_one_line(tmp_path, capsys):
    status, _, errors = run_cli(["--output-root", tmp_path, "--out", tmp_path / "out"], capsys)
    assert status == 2 and errors == [f"error: no finished prior run under {tmp_path / 'prior'}: train one first"]


def test_residual_tokens_with_a_depth_axis_go_through(fashion_dir, tmp_path, capsys):
    from conftest import TINY_TOKENIZER
    from pipelines import fit_tokenizer

    root = tmp_path / "runs"
    fit_tokenizer.main([*TINY_TOKENIZER, "--epochs", "1", "--quantizer", "residual", "--depth", "2",
                        "--output-root", root, "--run-name", "rq"])
    fit_prior.main([*TINY_PRIOR, "--tokenizer", root / "tokenizer" / "rq", "--output-root", root, "--run-name", "p",
                    "--condition", "none"])
    out = tmp_path / "report"
    status, _, errors = run_cli(["--output-root", root, "--n-samples", 6, "--batch-size", 4, "--out", out,
                                 *TINY_CLASSIFIER_FLAGS], capsys)
    assert status == 0, errors
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["samples"] == 6 and report["figures"]["fd_samples_vs_test"] > 0
    assert report["figures"]["classifier_accuracy_on_samples"] is None  # unconditional
    assert "codebook_usage.png" in report["pictures"] and "samples.png" in report["pictures"]
