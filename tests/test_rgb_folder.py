"""Three-channel images end to end: a folder of 32x32 RGB pictures through all three commands (8x8 grids)."""

import json

import numpy as np
import torch
from PIL import Image

from conftest import TINY_TOKENIZER, synthetic_images
from pipelines import fit_prior, fit_tokenizer, sample
from store.index_maps import read_index_maps
from tokenizer import Tokenizer


def test_a_folder_of_rgb_images_goes_through_all_three_commands(tmp_path):
    images, labels = synthetic_images(120, size=32, channels=3, seed=3)
    folder = tmp_path / "pictures"
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / f"kind{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"kind{label}" / f"{i:03d}.png")
    runs = tmp_path / "runs"
    fit_tokenizer.main([*TINY_TOKENIZER, "--dataset", f"folder:{folder}", "--image-size", "32", "--epochs", "2",
                        "--output-root", runs, "--run-name", "rgb"])
    run = runs / "tokenizer" / "rgb"
    tokenizer = Tokenizer.load(run)
    assert (tokenizer.config.image_channels, tokenizer.config.image_size, tokenizer.config.grid_size) == (3, 32, 8)
    maps = read_index_maps(run / "maps", "train")
    assert maps.maps.shape == (108, 8, 8)  # every tenth file is the test split
    # The dumped maps are the library's tokens for the same pictures, in the folder's sorted order.
    paths = sorted(folder.rglob("*.png"))
    train_paths = [p for i, p in enumerate(paths) if i % 10 != 9]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in train_paths[:4]]).permute(0, 3, 1, 2)
    assert torch.equal(tokenizer.encode(pixels), torch.from_numpy(maps.maps[:4].astype(np.int64)))
    assert list(maps.labels[:4]) == [["kind0", "kind1", "kind2"].index(p.parent.name) for p in train_paths[:4]]

    fit_prior.main(["--embed-dim", "8", "--hidden-channels", "8", "--num-layers", "3", "--batch-size", "32",
                    "--epochs", "1", "--tokenizer", run, "--output-root", runs, "--run-name", "rgb-prior",
                    "--condition", "class"])
    out = tmp_path / "samples"
    sample.main(["--prior", runs / "prior" / "rgb-prior", "--n", 3, "--label", "kind2", "--out", out])
    written = sorted((out / "images").iterdir())
    assert len(written) == 3
    with Image.open(written[0]) as picture:
        assert (picture.mode, picture.size) == ("RGB", (32, 32))
    assert json.loads((out / "sample.json").read_text())["n"] == 3


def test_a_lazy_folder_decodes_batches_equal_to_the_whole_split_in_memory(tmp_path):
    from store.images import DataConfig, load_images

    images, labels = synthetic_images(40, size=20, channels=3, seed=4)
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / f"kind{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / f"kind{label}" / f"{i:03d}.png")
    config = DataConfig(dataset=f"folder:{tmp_path}", image_size=16)
    whole, lazy = load_images(config, "train"), load_images(config, "train", lazy=True)
    assert lazy.images.shape == tuple(whole.images.shape) == (36, 3, 16, 16) and len(lazy) == 36
    batches = torch.cat([lazy.images[start:start + 5] for start in range(0, len(lazy), 5)])
    assert batches.dtype == torch.uint8 and torch.equal(batches, whole.images)
    assert torch.equal(lazy.images[-1], whole.images[-1]) and torch.equal(lazy.labels, whole.labels)
