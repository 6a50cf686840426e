"""pipelines.evaluate and evaluation.evaluate(): the report of a prior and of a tokenizer alone, its pictures and
page, and one-line refusals."""

import json
import os
from html import escape

import pytest
import torch

from conftest import TINY_CLASSIFIER_FLAGS, TINY_PRIOR, run_in_process, run_module
from store.figures import FIGURES
from pipelines import evaluate, fit_prior
from prior.sampling import SETTINGS, SamplingConfig, describe_settings, resolve_sampling
from store.images import DataConfig, load_images

pytestmark = pytest.mark.usefixtures("one_thread")
PICTURES = ["tokenizer_curves.png", "prior_curves.png", "codebook_usage.png", "reconstructions.png", "samples.png",
            "nearest_training.png"]


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
    assert set(figures) == {figure.key for figure in FIGURES}
    # Every figure but Inception's (asked for with --features inception).
    assert all((value is None) == key.startswith("inception_") for key, value in figures.items()), figures
    for prefix in ("", "train_"):  # the samples' and the floor's
        assert all(0 <= figures[prefix + name] <= 1 for name in ("precision", "recall", "coverage"))
        assert figures[prefix + "density"] >= 0
    assert 0 <= figures["copies_samples"] <= 1 and 0 <= figures["copies_test"] <= 1
    assert report["settings"]["floor_train_images"] == 23 and report["settings"]["nearest_k"] == 3
    assert figures["fd_train_vs_test"] >= 0 and figures["fd_reconstructions_vs_test"] > 0
    assert figures["fd_samples_vs_test"] > 0 and 0 <= figures["classifier_accuracy_on_samples"] <= 1
    assert figures["prior_test_bits_per_token"] == json.loads((root / "prior" / "p" / "results.json").read_text())[
        "test_bits_per_token"]
    assert 0 < figures["reconstruction_mse"] < 1 and figures["reconstruction_psnr"] > 0
    # The runs read, relative to the report's folder.
    assert report["runs"]["prior"] == os.path.join("..", "runs", "prior", "p")
    assert (out / report["runs"]["tokenizer"]).resolve() == tokenizer_run.resolve()
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
    assert "recall of samples" in html and "Inception" not in html.split("<table>")[1]  # no Inception rows
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.")], "staging folder left behind"
    # Drawn as `sample` draws with no flags: SamplingConfig's settings, recorded and said on the page.
    expected = json.loads(json.dumps(resolve_sampling(torch.tensor([0]), SamplingConfig()).record()))
    assert {name: report["settings"][name] for name in SETTINGS} == expected
    assert f"Sampled with {escape(describe_settings(report['settings']))}." in html

    # The sampling flags are sample's: a schedule asked for is the schedule drawn and recorded.
    ramp = tmp_path / "ramp"
    flags = ["--guidance-scale", "1:3", "--guidance-schedule", "linear", "--guidance-from", "4"]
    assert run_cli([*common, "--n-samples", 23, "--out", ramp, *flags], capsys)[0] == 0
    ramp_report = json.loads((ramp / "report.json").read_text())
    settings = ramp_report["settings"]
    assert (settings["guidance_scale"], settings["guidance_schedule"], settings["guidance_from"]) == (
        [1, 3], "linear", 4)
    assert ramp_report["figures"]["fd_samples_vs_test"] != figures["fd_samples_vs_test"]

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
                           (["--out", tmp_path / "x", "--n-samples", 0], "must be a positive integer, not 0"),
                           (["--out", tmp_path / "x", "--top-k", 999], "--top-k must be an integer in 1..32"),
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


def test_no_prior_run_at_all_is_one_line(tmp_path, capsys, monkeypatch):
    # Without the shipped generator either (a copy of the package without checkpoints/, say).
    monkeypatch.setattr("generation.pretrained.SHIPPED_GENERATOR", tmp_path / "not-shipped")
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


@pytest.mark.parametrize("flags, message", [
    (["--samples", "{tmp}", "--prior", "{tmp}"], "--samples scores images made elsewhere: give it without --prior"),
    (["--dataset", "mnist"], "the data set flags name the reference of --samples"),
    (["--features", "clip"], "invalid choice: 'clip'"),
    (["--samples", "{tmp}/missing.npz"], "images {tmp}/missing.npz do not exist"),
])
def test_scoring_images_made_elsewhere_refuses_mixed_or_bad_requests_in_one_line(fashion_dir, tmp_path, capsys,
                                                                               flags, message):
    flags = [flag.format(tmp=tmp_path) for flag in flags]
    status, _, errors = run_cli([*flags, "--output-root", tmp_path, "--out", tmp_path / "r", *TINY_CLASSIFIER_FLAGS],
                                capsys)
    assert status == 2 and len(errors) == 1 and message.format(tmp=tmp_path) in errors[0], errors
    assert not (tmp_path / "r").exists()


def test_an_images_folder_is_never_written_into(fashion_dir, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    status, _, errors = run_cli(["--samples", tmp_path / "images", "--out", tmp_path / "images" / "report",
                                 "--output-root", tmp_path], capsys)
    assert status == 2 and "which is read: choose another --out" in errors[0]
    assert list((tmp_path / "images").iterdir()) == []
