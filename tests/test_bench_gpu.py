"""The prepared GPU run (bench/gpu.py), dry-run on the CPU with tiny settings: every stage runs through
accelerate launch and its figures land in figures.json. The float32 pipeline is the same code path with another
flag, so it is left out here to keep the suite short."""

import json
import subprocess
import sys

from conftest import REPO


def test_the_gpu_run_goes_through_end_to_end_on_a_cpu(fashion_dir, tmp_path):
    out = tmp_path / "gpu"
    result = subprocess.run([sys.executable, "-m", "bench.gpu", "--out", out, "--dry-run", "--skip", "no",
                             "--fashion-mnist-dir", fashion_dir], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((out / "figures.json").read_text())
    assert figures["machine"]["dry_run"] and "failed" not in figures
    assert set(figures["stages"]) == {"fit_tokenizer_bf16", "fit_prior_bf16", "sample_bf16", "evaluate_bf16",
                                      "sampling", "fit_prior_larger", "evaluate_larger"}
    assert all(stage["wall_seconds"] > 0 for stage in figures["stages"].values())
    assert figures["stages"]["fit_tokenizer_bf16"]["max_rss_bytes"] > 0  # recorded by bench.peak_memory
    pipeline = figures["pipeline_bf16"]
    assert pipeline["sample_grids_per_s"] > 0 and 0 < pipeline["test_codes_used"] <= 1
    assert pipeline["fd_samples_vs_test"] > 0 and pipeline["fd_reconstructions_vs_test"] > 0
    # The command ran as the README shows it: the run kept the precision it was asked for.
    config = json.loads((out / "runs" / "bf16" / "tokenizer" / "t" / "config.json").read_text())
    assert config["train"]["mixed_precision"] == "bf16"
    assert {row["batch"] for row in figures["sampling"]} == {1, 64}
    assert figures["larger_prior"]["fd_samples_vs_test"] > 0
    assert (out / "samples_bf16.png").exists() and (out / "report_samples_larger.png").exists()
