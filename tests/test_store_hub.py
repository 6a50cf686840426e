"""Runs named by Hugging Face Hub repository ids: fetched with huggingface_hub's snapshot_download into its cache
(from a stand-in Hub on localhost, tests/fake_hub.py: nothing here reaches the network), then read from that cache
with HF_HUB_OFFLINE=1; weights that are not those their run recorded are refused in one line."""

import json
import os
import shutil
import subprocess
import sys

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from conftest import REPO
from fake_hub import serve
from generation import ImageGenerator
from store.hub import NOT_FETCHED, is_hub_id, run_folder
from store.runs import AVERAGED_WEIGHTS, MODEL_WEIGHTS, read_json
from tokenizer import Tokenizer


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """A Hub cache folder, and huggingface_hub told (as HF_HUB_OFFLINE=1 and HF_HUB_CACHE would) to read only it."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def lay_out(cache, repos):
    """Fetch each of {repo id: folder} from a stand-in Hub into cache with huggingface_hub's own snapshot_download,
    as our run_folder fetches (the same files left behind)."""
    server, url = serve(repos)
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False  # online for the layout only
    try:
        for repo in repos:
            huggingface_hub.snapshot_download(repo, cache_dir=cache, endpoint=url, ignore_patterns=NOT_FETCHED)
    finally:
        constants.HF_HUB_OFFLINE = offline
        server.shutdown()


def test_what_names_a_hub_repository():
    assert is_hub_id("tester/generator") and is_hub_id("tester/generator@v1.0") and is_hub_id("a-b/c_d.e")
    assert not is_hub_id("checkpoints/prior/run") and not is_hub_id("run") and not is_hub_id("/abs/path")


def test_a_shared_run_loads_from_the_offline_cache_and_samples_as_the_original(prior_run, offline_cache):
    lay_out(offline_cache, {"tester/generator": prior_run})
    generator = ImageGenerator.from_pretrained("tester/generator")
    assert generator.run_dir.is_relative_to(offline_cache)
    # Only what loading reads came down: no training state, no maps.
    fetched = {p.relative_to(generator.run_dir).as_posix() for p in generator.run_dir.rglob("*") if p.is_file()}
    assert "training_state.safetensors" not in fetched and AVERAGED_WEIGHTS in fetched
    assert "tokenizer/maps/meta.json" in fetched and not any(name.endswith(".npy") for name in fetched)
    images, tokens = generator.sample(3, seed=4)
    original_images, original_tokens = ImageGenerator.load(prior_run).sample(3, seed=4)
    assert torch.equal(tokens, original_tokens) and torch.equal(images, original_images)

    # The tokenizer by the same name: the one the generator carries.
    tokenizer = Tokenizer.from_pretrained("tester/generator")
    assert tokenizer.weights_sha256 == generator.run.tokenizer.weights_sha256
    assert torch.equal(tokenizer.encode(images), generator.tokenizer.encode(images))
    assert Tokenizer.from_pretrained(prior_run).run_dir == prior_run / "tokenizer"  # a local folder alike


def test_weights_that_differ_from_their_record_are_refused_in_one_line(prior_run, tmp_path, offline_cache):
    tampered = tmp_path / "tampered"
    shutil.copytree(prior_run, tampered)
    # The raw weights under the averaged weights' name: a valid file of the right shapes, but not the one recorded.
    shutil.copyfile(tampered / MODEL_WEIGHTS, tampered / AVERAGED_WEIGHTS)
    lay_out(offline_cache, {"tester/tampered": tampered})
    with pytest.raises(ValueError, match=r"model_ema.safetensors is not the weights file its run finished with") as e:
        ImageGenerator.from_pretrained("tester/tampered")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not the weights file its run finished with"):
        ImageGenerator.load(tampered)  # a local copy alike


def test_a_name_that_is_neither_a_folder_nor_a_cached_repository_is_one_line(offline_cache, tmp_path):
    with pytest.raises(ValueError, match="tester/absent is not a folder here, and the Hugging Face Hub repository "
                                         "tester/absent is not in the cache while offline") as e:
        ImageGenerator.from_pretrained("tester/absent")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="does not exist"):
        run_folder(tmp_path / "no" / "such" / "run")


def test_the_commands_fetch_a_hub_id_and_read_it_again_offline(prior_run, tmp_path):
    """The user's path: `sample --prior owner/name` online (a stand-in Hub at HF_ENDPOINT), then offline with the
    Hub gone, from the cache the first run filled."""
    server, url = serve({"tester/generator": prior_run})
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "0"}

    def sample(out, **extra):
        command = [sys.executable, "-m", "pipelines.sample", "--prior", "tester/generator", "--n", "2", "--out",
                   tmp_path / out, "--output-root", tmp_path / "nothing"]
        return subprocess.run(list(map(str, command)), cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**env, **extra})

    try:
        online = sample("online")
    finally:
        server.shutdown()
    assert online.returncode == 0, online.stderr[-2000:]
    offline = sample("offline", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr[-2000:]
    assert (tmp_path / "online" / "tokens").is_dir() and \
        (tmp_path / "online" / "tokens" / "samples_maps.npy").read_bytes() == \
        (tmp_path / "offline" / "tokens" / "samples_maps.npy").read_bytes()
    prior_used = read_json(tmp_path / "offline" / "sample.json")["prior_run"]
    assert (tmp_path / "offline" / prior_used).resolve().is_relative_to((tmp_path / "hf-cache").resolve()), prior_used
    missing = sample("missing", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: tester/generator")
    assert len(missing.stderr.strip().splitlines()) == 1, json.dumps(missing.stderr)
