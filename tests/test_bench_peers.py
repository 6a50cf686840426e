"""The side-by-side benchmark against the peers (bench/peers.py), dry-run with tiny settings on the synthetic data:
every contender trains in a process of its own, its figures land in peers.json and the tables print. It needs the
bench-only extra (pip install -e '.[peers]'), which CI installs."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TINY_CLASSIFIER_FLAGS, TINY_PRIOR, TINY_TOKENIZER

pytest.importorskip("transformers")
pytest.importorskip("diffusers")


def test_every_contender_trains_for_its_seconds_and_is_measured(fashion_dir, tmp_path):
    out = tmp_path / "peers"
    command = [sys.executable, "-m", "bench.peers", "--out", out, "--samples", "40", "--seeds", "0", "1",
               "--tokenizer-flags", " ".join([*TINY_TOKENIZER, "--epochs", "1"]),
               "--prior-flags", " ".join(TINY_PRIOR), "--pixelsnail-epochs", "1",
               "--pixelsnail-flags", "--hidden-channels 8 --attention-heads 2",
               "--evaluate-flags", " ".join(TINY_CLASSIFIER_FLAGS), "--tokenizer-seconds", "3", "--prior-seconds", "3",
               "--gpt-flags", "--layers 1 --width 16 --heads 2 --evaluations 2", "--gpt-learning-rates", "2e-3", "4e-3",
               "--vqmodel-flags", "--channels 8 --latent-dim 8 --codebook-size 32 --batch-size 32"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "peers.json").read_text())
    assert set(summary["tokenizers"]) == {"ours", "vqmodel"}
    assert set(summary["priors"]) == {"ours", "pixelsnail", "gpt lr 0.002", "gpt lr 0.004"}
    vqmodel = summary["tokenizers"]["vqmodel"]
    assert vqmodel["grid"] == summary["tokenizers"]["ours"]["grid"] == "7x7 of 32"
    assert 3 <= vqmodel["train_seconds"] < 60 and vqmodel["reconstruction_fd"] > 0 and 0 < vqmodel["test_mse"] < 1
    for name, prior in summary["priors"].items():
        assert prior["test_bits_per_token"] > 0 and prior["sample_fd_seed0"] > 0 and prior["sample_fd_seed1"] > 0, name
        assert len(prior["curve"]) >= 1 and all(seconds > 0 for seconds, _ in prior["curve"]), name
        assert 0 <= prior["accuracy_on_samples_seed0"] <= 1, name
    for rate in ("0.002", "0.004"):
        gpt = summary["priors"][f"gpt lr {rate}"]
        assert 3 <= gpt["train_seconds"] < 60 and len(gpt["curve"]) == 2
        assert json.loads((out / "peers" / f"gpt-lr{rate}" / "results.json").read_text())[
            "learning_rate"] == float(rate)
    # Every prior is sampled with the guidance `sample` uses by default, the peer too.
    import torch
    from prior.sampling import SamplingConfig, resolve_sampling
    default = json.loads(json.dumps(resolve_sampling(torch.tensor([0]), SamplingConfig()).record()))
    for name, prior in summary["priors"].items():
        assert prior["sampling"] == {key: value for key, value in default.items() if key.startswith("guidance_")}, name
    assert summary["priors"]["pixelsnail"]["parameters"] > summary["priors"]["ours"]["parameters"]
    assert "| gpt lr 0.004 |" in result.stdout and "| vqmodel |" in result.stdout and "CPU bf16 flags" in result.stdout
    assert "Sampled with ours: guidance " in result.stdout
    # A second run reuses every finished step instead of training again.
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reused") == 11 and "| gpt lr 0.002 |" in again.stdout
