"""The standard protocol end to end without the internet: Inception-v3 with weights the test builds (random: the
plumbing, not the values) through evaluate --features inception, an .npz and a folder of the same samples scoring
alike, torch-fidelity's own calculate_metrics agreeing, and one-line errors when the weights are not at hand."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from bench.inception_speed import random_inception_weights
from conftest import TINY_CLASSIFIER_FLAGS, make_fashion_dir, run_in_process
from evaluation import inception
from pipelines import evaluate, sample
from store.images import DataConfig, load_images, read_image_collection
from store.pictures import save_pngs
from store.runs import file_sha256

@pytest.fixture(scope="module")
def built_weights(tmp_path_factory):
    """A weights file of torch-fidelity's Inception-v3 with random weights, written as the real one is."""
    return random_inception_weights(tmp_path_factory.mktemp("inception") / inception.INCEPTION_WEIGHTS_NAME)


class Images(torch.utils.data.Dataset):
    """uint8 (3, H, W) images, as torch-fidelity's inputs are."""

    def __init__(self, images):
        self.images = images.expand(-1, 3, -1, -1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_inception_figures_of_an_npz_and_a_folder_agree_with_each_other_and_with_torch_fidelity(
        prior_run, built_weights, tmp_path, capsys, monkeypatch):
    from torch_fidelity import calculate_metrics

    samples = tmp_path / "samples"
    status, _, errors = run_in_process(sample.main, ["--prior", prior_run, "--n", 8, "--npz", "--out", samples],
                                       capsys)
    assert status == 0, errors
    # A smaller test split keeps 299x299 Inception passes few: 10 test images, 8 training images for the floor.
    data = make_fashion_dir(tmp_path / "small", n_train=24, n_test=10)
    reports = {}
    # The .npz through Inception; the folder of the same samples in the classifier's features only (Inception's
    # passes are what takes time, and torch-fidelity reads the folder below).
    for name, images, features in (("npz", samples / "samples.npz", "inception"),
                                   ("folder", samples / "images", "classifier")):
        status, lines, errors = run_in_process(evaluate.main, [
            "--samples", images, "--features", features, "--inception-weights", built_weights,
            "--fashion-mnist-dir", data, "--output-root", tmp_path / "eval", "--batch-size", 8,
            *TINY_CLASSIFIER_FLAGS, "--out", tmp_path / f"report-{name}"], capsys)
        assert status == 0, errors
        assert ("FID" in lines[-1]) == (features == "inception") and "reconstructions" not in lines[-1]
        reports[name] = json.loads((tmp_path / f"report-{name}" / "report.json").read_text())
        assert reports[name]["counts"] == {"train": 24, "test": 10, "samples": 8}
    figures = reports["npz"]["figures"]
    assert {key: value for key, value in figures.items() if not key.startswith("inception_")} == \
        {key: value for key, value in reports["folder"]["figures"].items() if not key.startswith("inception_")}
    for key in ("inception_fid_train_vs_test", "inception_fid_samples_vs_test", "inception_kid_samples_vs_test",
                "inception_precision", "inception_recall", "inception_density", "inception_coverage",
                "fd_samples_vs_test", "precision", "copies_samples"):
        assert figures[key] is not None and np.isfinite(figures[key]), key
    assert figures["inception_fid_reconstructions_vs_test"] is None and figures["fd_reconstructions_vs_test"] is None
    assert reports["npz"]["inception"]["weights_sha256"] == file_sha256(built_weights)
    html = (tmp_path / "report-npz" / "report.html").read_text()
    assert "FID (Inception-v3), samples vs test" in html and "made elsewhere" in html

    # torch-fidelity itself, reading the PNG folder, and the test split as it takes a data set.
    test_images = load_images(DataConfig(fashion_mnist_dir=str(data)), "test").images
    theirs = calculate_metrics(input1=str(samples / "images"), input2=Images(test_images), fid=True, kid=True,
                               kid_subset_size=8, feature_extractor_weights_path=str(built_weights), cuda=False,
                               verbose=False, save_cpu_ram=True, cache=False)
    assert figures["inception_fid_samples_vs_test"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert figures["inception_kid_samples_vs_test"] == pytest.approx(theirs["kernel_inception_distance_mean"],
                                                                     rel=1e-4, abs=1e-9)


def test_without_the_weights_offline_it_is_one_line_naming_the_file_and_where_it_goes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(url, destination, **_):
        from urllib.error import URLError
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    status, _, errors = run_in_process(evaluate.main, ["--samples", tmp_path / "images", "--features", "inception",
                                                       "--output-root", tmp_path, "--out", tmp_path / "r"], capsys)
    assert status == 2 and len(errors) == 1, errors
    assert inception.INCEPTION_WEIGHTS_NAME in errors[0] and str(tmp_path / "hub" / "checkpoints") in errors[0]
    assert "--inception-weights" in errors[0] and not (tmp_path / "r").exists()


def test_without_torch_fidelity_it_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_fidelity" else
                        find_spec(name, *a))
    downloads = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *args, **_: downloads.append(args))
    status, _, errors = run_in_process(evaluate.main, ["--samples", tmp_path / "images", "--features", "inception",
                                                       "--output-root", tmp_path, "--out", tmp_path / "r"], capsys)
    assert status == 2 and len(errors) == 1, errors
    assert "vqprior[inception]" in errors[0] and downloads == [] and not (tmp_path / "r").exists()


def test_a_bad_out_is_refused_before_the_weights_are_downloaded(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    downloads = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *args, **_: downloads.append(args))
    (tmp_path / "r").mkdir()
    status, _, errors = run_in_process(evaluate.main, ["--samples", tmp_path / "images", "--features", "inception",
                                                       "--output-root", tmp_path, "--out", tmp_path / "r"], capsys)
    assert status == 2 and "exists already" in errors[0] and downloads == []


def test_float_images_reach_inception_with_the_pixels_their_pngs_hold(tmp_path):
    # Every level and a half: where rounding half to even and a PNG's rounding part.
    images = ((torch.arange(256).float() + 0.5) / 255).clamp(0, 1).reshape(1, 1, 16, 16)
    save_pngs(tmp_path, images)
    assert torch.equal(inception.as_inception_input(images), read_image_collection(tmp_path, 3, 16))


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a torch file", "cannot read Inception weights"),
    ({"fc.weight": torch.zeros(3)}, "does not hold Inception-v3 weights"),
])
def test_bad_weights_files_are_one_line(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        inception.load_inception(inception.inception_weights(path))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "weights.pth"
    torch.save({"x": Payload()}, path)
    with pytest.raises(ValueError, match="cannot read Inception weights"):
        inception.load_inception(path)
