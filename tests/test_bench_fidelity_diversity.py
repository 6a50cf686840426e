"""bench.fidelity_diversity on a tiny prior: one evaluation per (sampler, seed, yardstick), its figures in rows.json
and the tables, each yardstick its own classifier, finished reports reused."""

import json

import pytest

from bench import fidelity_diversity

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_yardsticks(monkeypatch):
    """Both yardsticks as classifiers that train in a second on the synthetic images, still two different ones."""
    from evaluation.classifier import ClassifierConfig
    from evaluation.reference import ClassifierTrainConfig

    quick = dict(classifier_epochs=2, classifier_batch_size=32)
    monkeypatch.setitem(fidelity_diversity.YARDSTICKS, "reference", (
        ClassifierConfig(width=8, feature_dim=16), ClassifierTrainConfig(**quick)))
    monkeypatch.setitem(fidelity_diversity.YARDSTICKS, "second", (
        ClassifierConfig(width=4, feature_dim=12), ClassifierTrainConfig(classifier_seed=1, **quick)))


def test_each_sampler_seed_and_yardstick_is_evaluated_once_and_tabled(prior_run, tmp_path, capsys, small_yardsticks):
    """The baseline (constant 1.5) runs first though not asked for: every row is read against it."""
    ramp = "--guidance-scale 1:3 --guidance-schedule cosine"
    argv = ["--prior", str(prior_run), "--samplers", ramp, "--seeds", "0",
            "--n-samples", "12", "--output-root", str(tmp_path)]
    fidelity_diversity.main(argv)
    out = capsys.readouterr().out.splitlines()
    folder = tmp_path / "bench-fidelity-diversity"
    rows = json.loads((folder / "rows.json").read_text())
    assert [(row["sampler"], row["seed"], row["yardstick"]) for row in rows] == [
        ("--guidance-scale 1.5", 0, "reference"), ("--guidance-scale 1.5", 0, "second"), (ramp, 0, "reference"),
        (ramp, 0, "second")]
    reports = {}
    for row in rows:
        name = fidelity_diversity.folder_name(row["sampler"], 0, row["yardstick"])
        report = reports[row["sampler"], row["yardstick"]] = json.loads((folder / name / "report.json").read_text())
        assert report["counts"]["samples"] == 12
        assert all(row[key] == report["figures"][key] for key in fidelity_diversity.COLUMNS)
    settings = reports[ramp, "reference"]["settings"]
    assert (settings["guidance_scale"], settings["guidance_schedule"]) == ([1.0, 3.0], "cosine")
    assert reports["--guidance-scale 1.5", "second"]["settings"]["guidance_schedule"] == "constant"
    # Two classifiers: the same samples scored in other features, by a network trained apart.
    reference, second = (reports[ramp, y]["classifier"] for y in ("reference", "second"))
    assert reference["weights_sha256"] != second["weights_sha256"] and second["config"]["feature_dim"] == 12
    assert reports[ramp, "reference"]["figures"]["fd_samples_vs_test"] != \
        reports[ramp, "second"]["figures"]["fd_samples_vs_test"]

    table = [line for line in out if line.startswith("|")]
    assert table[0].startswith("| sampler | sample FD") and table[3].startswith("| guidance cosine 1 -> 3, ")
    assert table[2].startswith("| guidance 1.5, ") and "| +0.0% |" in table[2]
    assert table[4].startswith("| floor: train vs test |")
    assert table[10].startswith("| sampler | reference | second | worse of the two |")
    assert table[12].startswith("| guidance 1.5, ") and table[12].endswith("| +0.0% |")
    assert table[13].startswith("| guidance cosine 1 -> 3, ")
    assert len(table) == 14

    written = (folder / fidelity_diversity.folder_name(ramp, 0, "second") / "report.json").stat().st_mtime_ns
    fidelity_diversity.main(argv)
    assert (folder / fidelity_diversity.folder_name(ramp, 0, "second") / "report.json").stat().st_mtime_ns == written


def test_a_sampler_is_written_as_samples_flags():
    settings = fidelity_diversity.sampler_settings(
        "--guidance-scale 1:2.5 --guidance-schedule cosine --guidance-from 3")
    assert (settings["guidance_scale"], settings["guidance_schedule"], settings["guidance_from"]) == (
        (1.0, 2.5), "cosine", 3)
    assert settings["temperature"] is None
    assert fidelity_diversity.folder_name("--guidance-scale 1:2.5 --guidance-schedule cosine", 1, "second") == \
        "guidance-scale-1to2.5-guidance-schedule-cosine-1-second"
