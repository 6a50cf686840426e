"""tokenizer.encoding: the dump. Memory stays bounded in the data size: a folder is decoded batch by batch and each
batch's maps go straight into their .npy files (the same bytes np.save writes); a dump that fails leaves the old maps
whole."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import labelled_image_folder, npy_bytes, synthetic_images
from pipelines import fit_tokenizer
from store.images import DataConfig, FolderImages, load_images
from store.runs import file_sha256, save_tensors, write_json
from tokenizer import Tokenizer
from tokenizer.encoding import dump
from tokenizer.model import TokenizerConfig, VQVAE
from training import TrainConfig, make_accelerator


def untrained_tokenizer_run(run_dir, dataset, dump_batch_size):
    """A tokenizer run without training (the dump needs only weights and a config): random weights, and codes
    drawn from the encoder's outputs on such images, so that the tokens vary."""
    config = TokenizerConfig(image_size=12, hidden_channels=8, residual_channels=4, num_residual_blocks=1,
                             latent_dim=4, codebook_size=300)  # 300 codes: maps of uint16
    torch.manual_seed(0)
    model = VQVAE(config)
    images, _ = synthetic_images(64, size=12, seed=6)
    with torch.no_grad():
        z = model.encoder(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, config.latent_dim)
    state = model.state_dict()
    state["quantizer.codebook"] = vectors[torch.randperm(len(vectors))[:config.codebook_size]]
    run_dir.mkdir(parents=True)
    save_tensors(run_dir / "model.safetensors", state)
    write_json(run_dir / "config.json", {"model": dataclasses.asdict(config), "train": {},
                                         "data": {"dataset": dataset, "image_size": 12},
                                         "dump_batch_size": dump_batch_size})
    return run_dir


def test_a_streamed_dump_writes_exactly_the_maps_of_the_whole_split_encoded_in_memory(tmp_path):
    folder = labelled_image_folder(tmp_path / "images", 53)
    run = untrained_tokenizer_run(tmp_path / "run", f"folder:{folder}", dump_batch_size=7)  # 7 divides neither split
    fit_tokenizer.main(["--dump-only", run])

    tokenizer = Tokenizer.load(run)
    meta = json.loads((run / "maps" / "meta.json").read_text())
    for split, count in (("train", 48), ("test", 5)):
        whole = load_images(DataConfig(dataset=f"folder:{folder}", image_size=12), split)  # decoded, in memory
        tokens = torch.cat([tokenizer.encode(whole.images[i:i + 7]) for i in range(0, len(whole), 7)]).numpy()
        assert tokens.shape == (count, 3, 3) and len(np.unique(tokens)) > 1
        maps_file, labels_file = run / "maps" / f"{split}_maps.npy", run / "maps" / f"{split}_labels.npy"
        assert maps_file.read_bytes() == npy_bytes(tokens.astype(np.uint16))
        assert labels_file.read_bytes() == npy_bytes(whole.labels.numpy())
        entry = meta["splits"][split]
        assert entry["count"] == count and sum(entry["usage_histogram"]) == count * 9
        assert entry["maps"]["sha256"] == file_sha256(maps_file)
        assert entry["labels"]["sha256"] == file_sha256(labels_file)
    assert meta["class_names"] == ["kind0", "kind1", "kind2"] and meta["weights_sha256"] == tokenizer.weights_sha256
    assert not list(run.rglob("*.tmp"))


class UnreadableAfterChecks(FolderImages):
    """A folder split whose images pass the up-front check, then cannot be decoded (e.g. changed meanwhile)."""

    def __getitem__(self, index):
        raise ValueError("unreadable image file (made up for the test)")


def test_a_dump_that_fails_midway_leaves_the_old_maps_whole(tmp_path):
    folder = labelled_image_folder(tmp_path / "images", 30)
    config = DataConfig(dataset=f"folder:{folder}", image_size=12)
    run = untrained_tokenizer_run(tmp_path / "run", config.dataset, dump_batch_size=4)
    fit_tokenizer.main(["--dump-only", run])
    before = {p.name: p.read_bytes() for p in (run / "maps").iterdir()}
    train, test = load_images(config, "train", lazy=True), load_images(config, "test", lazy=True)
    test.__class__ = UnreadableAfterChecks
    # Other weights: the train maps and meta.json would change if they were written.
    state = Tokenizer.load(run).model.state_dict()
    save_tensors(run / "model.safetensors", {k: v * 1.5 if v.is_floating_point() else v for k, v in state.items()})
    with pytest.raises(ValueError, match="made up for the test"):
        dump(run, config, 4, make_accelerator(TrainConfig()),
             splits={"train": train, "test": test})  # the train split is encoded whole first
    assert {p.name: p.read_bytes() for p in (run / "maps").iterdir()} == before
