"""bench.pretrained, the one command that regenerates the shipped generator, dry-run with tiny settings on the
synthetic data into a folder of the test's own: every step runs, the folder holds what the shipped one holds, and its
card holds the figures of the evaluations it made."""

import json
import subprocess
import sys

from conftest import REPO, TINY_CLASSIFIER_FLAGS, TINY_PRIOR, TINY_TOKENIZER
from generation import ImageGenerator
from store.runs import read_json


def test_one_command_makes_the_shipped_folder_its_card_and_figures(fashion_dir, tmp_path):
    shipped, work = tmp_path / "shipped", tmp_path / "work"
    command = [sys.executable, "-m", "bench.pretrained", "--work", work, "--shipped", shipped,
               "--tokenizer-flags", " ".join([*TINY_TOKENIZER, "--epochs", "1"]), "--prior-flags", " ".join(TINY_PRIOR),
               "--evaluate-flags", " ".join(["--n-samples", "40", *TINY_CLASSIFIER_FLAGS])]
    result = subprocess.run(list(map(str, command)), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout[result.stdout.index("{\n"):])
    assert summary["bytes"] == sum(p.stat().st_size for p in shipped.rglob("*") if p.is_file())
    assert {"README.md", "samples.png", "config.json", "tokenizer/maps/meta.json"} <= set(summary["files"])
    assert not any("training_state" in name or name.endswith(".npy") for name in summary["files"])

    card = (shipped / "README.md").read_text()
    reports = [read_json(work / "evaluations" / f"seed{seed}" / "report.json") for seed in (0, 1)]
    fd = [report["figures"]["fd_samples_vs_test"] for report in reports]
    assert f"| {fd[0]:.3f} | {fd[1]:.3f} |" in card and "| figure | seed 0 | seed 1 |" in card
    assert "python -m pipelines.fit_tokenizer --hidden-channels" in card and "- commit: " in card
    assert "- fit_prior (training): " in card and "bf16 flags" in card
    # The evaluations were of the exported folder itself, which samples.
    assert all((work / "evaluations" / f"seed{seed}" / report["runs"]["prior"]).resolve() == shipped.resolve()
               for seed, report in zip((0, 1), reports))
    images, _ = ImageGenerator.load(shipped).sample(2)
    assert images.shape == (2, 1, 28, 28)

    again = subprocess.run(list(map(str, command)), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reused") == 4  # tokenizer, prior, two evaluations: only export and card redone

    # --reevaluate: the folder evaluated as it is (a new sampling default, say), its weights untouched, its card new.
    before = {p.name: p.read_bytes() for p in shipped.rglob("*.safetensors")}
    other_work = tmp_path / "work-again"
    command = [sys.executable, "-m", "bench.pretrained", "--reevaluate", "--work", other_work, "--shipped", shipped,
               "--seeds", "1", "--evaluate-flags", " ".join(["--n-samples", "30", *TINY_CLASSIFIER_FLAGS])]
    result = subprocess.run(list(map(str, command)), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[export]" not in result.stdout and not (other_work / "prior").exists()
    assert {p.name: p.read_bytes() for p in shipped.rglob("*.safetensors")} == before
    report = read_json(other_work / "evaluations" / "seed1" / "report.json")
    card = (shipped / "README.md").read_text()
    assert f"| {report['figures']['fd_samples_vs_test']:.3f} |" in card and "| figure | seed 1 |" in card
    assert f"- fit_prior (training): {read_json(shipped / 'results.json')['train_seconds_this_session']:.0f} s" in card
