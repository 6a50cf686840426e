"""Memory bounded in the data size: a folder is listed without a Path per file and decoded batch by batch, the dump
writes each batch's maps straight into its .npy files (the same bytes np.save writes), and the prior reads the maps
through the memory map."""

import dataclasses
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_images
from pipelines import fit_prior, fit_tokenizer
from store.images import IMAGE_SUFFIXES, DataConfig, FolderImages, _image_files, load_images
from store.index_maps import IndexMapWriter, MapDataset, read_index_maps, write_index_maps
from store.runs import file_sha256, save_tensors, write_json
from tokenizer import Tokenizer
from tokenizer.model import TokenizerConfig, VQVAE


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def image_folder(root, n, size=12, seed=5):
    images, labels = synthetic_images(n, size=size, seed=seed)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"kind{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(root / f"kind{label}" / f"{i:03d}.png")
    return root


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


def test_the_folder_walk_lists_files_in_sorted_path_order(tmp_path):
    root = tmp_path / "tree"
    names = ["a.png", "a/b.png", "a-b/x.png", "a b/y.png", "a/c/d.PNG", ".hidden.png", ".png", "ä.png", "a.b/q.jpg",
             "a0.png", "a/0.png", "notes.txt", "zz/1.png", "zz/10.png", "zz/2.png"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    os.symlink(root / "a", root / "linked-folder")  # not followed, as rglob does not
    os.symlink(root / "a.png", root / "linked-file.png")
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    assert list(_image_files(root)) == [p.relative_to(root).as_posix() for p in expected]


def test_a_streamed_dump_writes_exactly_the_maps_of_the_whole_split_encoded_in_memory(tmp_path):
    folder = image_folder(tmp_path / "images", 53)
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
    folder = image_folder(tmp_path / "images", 30)
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
        fit_tokenizer.dump(run, config, 4, fit_tokenizer.make_accelerator(fit_tokenizer.TrainConfig()),
                           splits={"train": train, "test": test})  # the train split is encoded whole first
    assert {p.name: p.read_bytes() for p in (run / "maps").iterdir()} == before


@pytest.mark.parametrize("shape,codebook_size,dtype", [((10, 7, 7), 32, np.uint8), ((6, 4, 4, 3), 1000, np.uint16),
                                                       ((0, 7, 7), 512, np.uint16), ((3, 2, 2), 70000, np.uint32)])
def test_index_map_files_written_in_batches_are_the_bytes_np_save_writes(tmp_path, shape, codebook_size, dtype):
    maps = np.random.default_rng(0).integers(0, codebook_size, shape)
    labels = np.arange(shape[0]) % 3
    with IndexMapWriter(tmp_path, "train", len(maps), shape[1:], codebook_size) as writer:
        for start in range(0, max(1, len(maps)), 4):
            writer.write(maps[start:start + 4], labels[start:start + 4])
    assert (tmp_path / "train_maps.npy").read_bytes() == npy_bytes(maps.astype(dtype))
    assert (tmp_path / "train_labels.npy").read_bytes() == npy_bytes(labels.astype(np.int64))
    assert writer.entry()["maps"]["sha256"] == file_sha256(tmp_path / "train_maps.npy")
    # A writer left with fewer maps than it promised renames nothing into place.
    with pytest.raises(ValueError, match="promised"):
        with IndexMapWriter(tmp_path, "train", len(maps) + 1, shape[1:], codebook_size) as writer:
            writer.write(maps, labels)
    assert (tmp_path / "train_maps.npy").read_bytes() == npy_bytes(maps.astype(dtype))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_labels.npy", "train_maps.npy"]


def test_the_prior_trains_from_the_memory_mapped_maps(tmp_path, monkeypatch, one_thread):
    rng = np.random.default_rng(1)
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "model.safetensors").write_bytes(b"weights")
    sha = file_sha256(tokenizer_dir / "model.safetensors")
    for split, n in (("train", 64), ("test", 16)):
        write_index_maps(tokenizer_dir / "maps", split, rng.integers(0, 8, (n, 3, 3)), rng.integers(0, 2, n), {
            "codebook_size": 8, "grid_height": 3, "grid_width": 3, "weights_sha256": sha, "class_names": ["a", "b"]})
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
