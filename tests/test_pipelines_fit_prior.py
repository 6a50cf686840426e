import json
import os

import numpy as np
import pytest
import torch

from prior import Prior
from conftest import TINY_PRIOR, resume_matches_uninterrupted, run_module
from pipelines import fit_prior
from store.index_maps import MapDataset, MapsMeta, read_index_maps, write_index_maps
from store.runs import file_sha256, load_tensors, save_tensors, weights_file


def test_fit_prior_writes_a_run_that_names_its_tokenizer(tokenizer_run, tmp_path):
    fit_prior.main([*TINY_PRIOR, "--epochs", "2", "--tokenizer", tokenizer_run, "--output-root", tmp_path / "runs",
                    "--run-name", "p"])
    run_dir = tmp_path / "runs" / "prior" / "p"
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "results.json", "training_state.safetensors"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tokenizer"]["weights_sha256"] == file_sha256(tokenizer_run / "model.safetensors")
    assert config["model"]["codebook_size"] == 32 and config["model"]["grid_height"] == 7
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [m for m in metrics if "test_bits_per_token" in m]
    assert [m["epoch"] for m in evaluations] == [1.0, 2.0]
    results = json.loads((run_dir / "results.json").read_text())
    assert 0 < results["test_bits_per_token"] <= 5.1  # log2(32) = 5 bits is a uniform guess; training helps
    assert results["test_bits_per_image"] == pytest.approx(49 * results["test_bits_per_token"])


def test_newest_tokenizer_run_is_the_default_and_class_conditioning_records_labels(tokenizer_run, tmp_path):
    fit_prior.main([*TINY_PRIOR, "--epochs", "1", "--output-root", tmp_path / "runs", "--run-name", "c",
                    "--condition", "class", "--label-dropout", "0.2"])
    config = json.loads((tmp_path / "runs" / "prior" / "c" / "config.json").read_text())
    # The tokenizer run relative to the prior run's folder: no folder of the machine in the config.
    assert config["tokenizer"]["run"] == os.path.join("..", "..", "tokenizer", "tiny")
    assert (tmp_path / "runs" / "prior" / "c" / config["tokenizer"]["run"]).resolve() == tokenizer_run.resolve()
    assert config["model"]["num_classes"] == 10 and len(config["class_names"]) == 10
    assert config["class_names"][0] == "T-shirt/top" and config["label_dropout"] == 0.2
    labels = read_index_maps(tokenizer_run / "maps", "train").labels
    assert config["class_counts"] == np.bincount(labels, minlength=10).tolist() and sum(config["class_counts"]) == 256


def test_labelled_maps_give_a_conditional_prior_with_label_dropout_by_default(tokenizer_run, tmp_path):
    root = tmp_path / "runs"
    fit_prior.main([*TINY_PRIOR, "--epochs", "1", "--output-root", root, "--run-name", "auto"])
    fit_prior.main([*TINY_PRIOR, "--epochs", "1", "--output-root", root, "--run-name", "plain", "--condition", "none"])
    auto, plain = (json.loads((root / "prior" / name / "config.json").read_text()) for name in ("auto", "plain"))
    assert auto["model"]["num_classes"] == 10 and auto["label_dropout"] == fit_prior.DEFAULT_LABEL_DROPOUT > 0
    assert plain["model"]["num_classes"] == 0 and plain["label_dropout"] == 0 and plain["class_counts"] is None


def test_the_weight_average_is_saved_beside_the_raw_weights_and_is_what_loads(tokenizer_run, tmp_path):
    fit_prior.main([*TINY_PRIOR, "--epochs", "2", "--tokenizer", tokenizer_run, "--output-root", tmp_path / "runs",
                    "--run-name", "ema", "--weight-ema-decay", "0.9"])
    run_dir = tmp_path / "runs" / "prior" / "ema"
    raw, averaged = load_tensors(run_dir / "model.safetensors"), load_tensors(run_dir / "model_ema.safetensors")
    assert raw.keys() == averaged.keys()
    assert not all(torch.equal(raw[k], averaged[k]) for k in raw), "the average is the raw weights"
    model = Prior.load(run_dir)
    assert weights_file(run_dir) == "model_ema.safetensors"
    assert all(torch.equal(v, averaged[k]) for k, v in model.state_dict().items())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_bits_per_token"] != results["test_bits_per_token_raw_weights"]
    raw_model = Prior.load(run_dir, weights="model.safetensors")
    assert all(torch.equal(v, raw[k]) for k, v in raw_model.state_dict().items())


def test_killed_prior_run_resumes_to_the_same_weights(tokenizer_run, tmp_path):
    flags = [*TINY_PRIOR, "--epochs", "12", "--checkpoint-every", "5", "--tokenizer", tokenizer_run,
             "--output-root", tmp_path / "runs", "--condition", "class", "--label-dropout", "0.3",
             "--weight-ema-decay", "0.95"]
    resume_matches_uninterrupted("pipelines.fit_prior", flags, tmp_path / "runs" / "prior",
                                 ("model.safetensors", "model_ema.safetensors"))


def test_a_resume_at_another_thread_count_says_how_to_match_the_uninterrupted_run(tokenizer_run, tmp_path, capsys):
    from safetensors import safe_open

    fit_prior.main([*TINY_PRIOR, "--tokenizer", tokenizer_run, "--output-root", tmp_path / "runs", "--run-name", "p"])
    state_path = tmp_path / "runs" / "prior" / "p" / "training_state.safetensors"
    with safe_open(state_path, framework="pt") as f:
        meta = json.loads(f.metadata()["training"])
    assert meta["threads"] == torch.get_num_threads()
    meta["threads"] += 1
    save_tensors(state_path, load_tensors(state_path), metadata={"training": json.dumps(meta)})
    capsys.readouterr()
    fit_prior.main(["--resume", state_path.parent])
    assert (f"checkpointed at {meta['threads']} CPU thread(s) and resumes at {torch.get_num_threads()}: "
            f"for weights bit-identical to an uninterrupted run, resume with OMP_NUM_THREADS={meta['threads']}"
            in capsys.readouterr().err)


def _corrupt(tokenizer_run, case):
    maps_dir = tokenizer_run / "maps"
    meta = json.loads((maps_dir / "meta.json").read_text())
    if case == "hash-mismatch":
        meta["weights_sha256"] = "0" * 64
    elif case == "missing-metadata":
        del meta["codebook_size"]
    elif case == "token-past-codebook":
        maps = np.load(maps_dir / "train_maps.npy")
        maps[0, 0, 0] = 40
        np.save(maps_dir / "train_maps.npy", maps)
        meta["splits"]["train"]["maps"]["sha256"] = file_sha256(maps_dir / "train_maps.npy")
    elif case == "truncated-file":
        data = (maps_dir / "train_maps.npy").read_bytes()
        (maps_dir / "train_maps.npy").write_bytes(data[:100])
        meta["splits"]["train"]["maps"]["sha256"] = file_sha256(maps_dir / "train_maps.npy")
    elif case == "replaced-file":
        np.save(maps_dir / "test_maps.npy", np.zeros((64, 7, 7), dtype=np.uint8))
    elif case == "no-maps":
        (maps_dir / "meta.json").unlink()
        return
    (maps_dir / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("case,message", [
    ("hash-mismatch", "made by other weights"),
    ("missing-metadata", "lacks metadata: codebook_size"),
    ("token-past-codebook", "outside the codebook's 0..31"),
    ("truncated-file", "unreadable"),
    ("replaced-file", "does not match its recorded SHA-256"),
    ("no-maps", "meta.json missing"),
])
def test_bad_maps_are_refused_in_one_line(tokenizer_run, tmp_path, case, message):
    _corrupt(tokenizer_run, case)
    result = run_module("pipelines.fit_prior", *TINY_PRIOR, "--tokenizer", tokenizer_run,
                        "--output-root", tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert message in lines[0]
    assert not (tmp_path / "out").exists(), "a refused run wrote files"


def test_the_prior_trains_from_the_memory_mapped_maps(tmp_path, monkeypatch, one_thread):
    rng = np.random.default_rng(1)
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "model.safetensors").write_bytes(b"weights")
    sha = file_sha256(tokenizer_dir / "model.safetensors")
    for split, n in (("train", 64), ("test", 16)):
        write_index_maps(tokenizer_dir / "maps", split, rng.integers(0, 8, (n, 3, 3)), rng.integers(0, 2, n), MapsMeta(
            codebook_size=8, grid_height=3, grid_width=3, weights_sha256=sha, class_names=["a", "b"]))
    seen = []
    original = MapDataset.__init__

    def keep(self, index_maps):
        original(self, index_maps)
        seen.append(self.maps)

    monkeypatch.setattr(MapDataset, "__init__", keep)
    fit_prior.main(["--embed-dim", "4", "--hidden-channels", "4", "--num-layers", "2", "--batch-size", "16",
                    "--epochs", "1", "--warmup-steps", "1", "--tokenizer", tokenizer_dir, "--output-root",
                    tmp_path / "runs", "--run-name", "p"])
    assert len(seen) == 2 and all(isinstance(maps, np.memmap) for maps in seen), "the maps were copied into memory"
    assert (tmp_path / "runs" / "prior" / "p" / "model.safetensors").is_file()
    assert isinstance(read_index_maps(tokenizer_dir / "maps", "train").maps, np.memmap)
