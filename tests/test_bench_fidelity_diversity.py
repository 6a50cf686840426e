"""bench.fidelity_diversity on a tiny prior: one evaluation per (scale, seed), its figures in rows.json and the
table, finished reports reused."""

import json

import pytest

from bench import fidelity_diversity

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_scale_and_seed_is_evaluated_once_and_tabled(prior_run, tmp_path, capsys):
    argv = ["--prior", str(prior_run), "--scales", "1", "2", "--seeds", "0", "--n-samples", "12",
            "--output-root", str(tmp_path)]
    fidelity_diversity.main(argv)
    table = capsys.readouterr().out.splitlines()
    folder = tmp_path / "bench-fidelity-diversity"
    rows = json.loads((folder / "rows.json").read_text())
    assert [(row["guidance_scale"], row["seed"]) for row in rows] == [(1.0, 0), (2.0, 0)]
    for row in rows:
        report = json.loads((folder / f"{row['guidance_scale']:g}-0" / "report.json").read_text())
        assert report["settings"]["guidance_scale"] == row["guidance_scale"] and report["counts"]["samples"] == 12
        assert all(row[key] == report["figures"][key] for key in fidelity_diversity.COLUMNS)
    assert table[0].startswith("| guidance | sample FD") and table[2].startswith("| 1 | ")
    assert table[3].startswith("| 2 | ") and table[4].startswith("| floor: train vs test |")
    assert len(table) == 5

    written = (folder / "1-0" / "report.json").stat().st_mtime_ns
    fidelity_diversity.main(argv)
    assert (folder / "1-0" / "report.json").stat().st_mtime_ns == written  # reused, not evaluated again
