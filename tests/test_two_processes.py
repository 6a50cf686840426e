"""Both fits on two CPU processes (torchrun, gloo), data parallel through accelerate and nothing of our own."""

import json
import subprocess
import sys

from safetensors.torch import load_file

from conftest import REPO, TINY_PRIOR, TINY_TOKENIZER



def torchrun(module, *args, env, probe_dir):
    """Two processes; each leaves the weights it ends with in probe_dir/rank<r>.safetensors."""
    probe_dir.mkdir()
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           str(REPO / "tests" / "distributed_probe.py"), module, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**env, "PROBE_DIR": str(probe_dir)})


def assert_processes_agree(probe_dir, saved):
    """Both processes hold exactly the weights and buffers (EMA codebook statistics included) that were saved."""
    rank0, rank1 = (load_file(probe_dir / f"rank{r}.safetensors") for r in (0, 1))
    saved = load_file(saved)
    assert rank0.keys() == rank1.keys() == saved.keys()
    different = [name for name in rank0 if not (rank0[name].equal(rank1[name]) and rank0[name].equal(saved[name]))]
    assert not different, f"the processes ended with different {different}"


def test_two_processes_shard_the_data_and_write_one_run(fashion_dir, tmp_path):
    import os

    env = {**os.environ, "FASHION_MNIST_DIR": str(fashion_dir)}
    runs = tmp_path / "runs"
    result = torchrun("pipelines.fit_tokenizer", *TINY_TOKENIZER, "--epochs", "2", "--output-root", runs,
                      "--run-name", "two", env=env, probe_dir=tmp_path / "tokenizer-weights")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("tokenizer:") == 1, "only the main process prints"
    run = runs / "tokenizer" / "two"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2 * 256 // (32 * 2), "each process should take half the batches"
    assert (run / "maps" / "meta.json").exists() and len(list((runs / "tokenizer").iterdir())) == 1
    assert_processes_agree(tmp_path / "tokenizer-weights", run / "model.safetensors")

    result = torchrun("pipelines.fit_prior", *TINY_PRIOR, "--epochs", "2", "--output-root", runs, "--run-name", "p",
                      "--condition", "class", "--label-dropout", "0.2", env=env, probe_dir=tmp_path / "prior-weights")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((runs / "prior" / "p" / "results.json").read_text())
    assert 0 < results["test_bits_per_token"] < 6
    assert_processes_agree(tmp_path / "prior-weights", runs / "prior" / "p" / "model.safetensors")


def test_two_processes_keep_the_same_discriminator(fashion_dir, tmp_path):
    import os

    env = {**os.environ, "FASHION_MNIST_DIR": str(fashion_dir)}
    runs, probe_dir = tmp_path / "runs", tmp_path / "weights"
    result = torchrun("pipelines.fit_tokenizer", *TINY_TOKENIZER, "--epochs", "2", "--adversarial-weight", "0.5",
                      "--discriminator-channels", "8", "--discriminator-start", "2", "--output-root", runs,
                      "--run-name", "gan", env=env, probe_dir=probe_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    rank0, rank1 = (load_file(probe_dir / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys() and any(name.startswith("discriminator.") for name in rank0)
    assert not [name for name in rank0 if not rank0[name].equal(rank1[name])], "the processes ended apart"
    saved = load_file(runs / "tokenizer" / "gan" / "model.safetensors")
    assert saved.keys() == {name[len("vqvae."):] for name in rank0 if name.startswith("vqvae.")}
    assert all(saved[name].equal(rank0[f"vqvae.{name}"]) for name in saved)
