"""store: what lies on disk. Atomic writes and staged folders (a failure leaves the old file or folder whole),
finding runs, run configs read back into dataclasses, the index-map format, image folders and single images."""

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import labelled_image_folder, npy_bytes, synthetic_images
from store.images import (FASHION_MNIST_FILES, IMAGE_SUFFIXES, DataConfig, _image_files, load_images, read_image,
                          read_image_collection)
from store.pictures import NpzImageWriter, save_pngs
from store.index_maps import (IndexMapWriter, MapDataset, MapsMeta, check_token_range, read_index_maps, read_maps_meta,
                              smallest_uint_dtype, write_index_maps)
from store.runs import (atomic_path, config_from_dict, create_run_dir, file_sha256, new_run_dir, newest_run,
                        staged_folder, write_json)


# ---------------------------------------------------------------------------------------------------------- runs

def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"a": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask()), "the mode an ordinary open() gives"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_ctrl_c_while_weights_are_read_is_an_interrupt_not_a_broken_file(tmp_path, monkeypatch):
    """torch turns a Ctrl-C that lands inside a safetensors read into an error of its own ("could not determine the
    shape of object type ..."), which would read as a damaged weights file: load_tensors holds Ctrl-C back while it
    reads and acts on it after."""
    import signal

    import store.runs

    path = tmp_path / "model.safetensors"
    store.runs.save_tensors(path, {"w": torch.zeros(2)})

    def read_as_torch_does(file):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, in the middle of the read
            time.sleep(0.05)
        except KeyboardInterrupt:
            raise ValueError("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None
        return {"w": torch.zeros(2)}

    monkeypatch.setattr(store.runs, "load_file", read_as_torch_does)
    with pytest.raises(KeyboardInterrupt):
        store.runs.load_tensors(path)
    monkeypatch.undo()
    assert torch.equal(store.runs.load_tensors(path)["w"], torch.zeros(2))  # and the next read is as ever


@pytest.mark.parametrize("writer", ["staged_folder", "atomic_path"])
def test_a_ctrl_c_just_after_the_staging_entry_is_made_leaves_nothing(tmp_path, monkeypatch, writer):
    """A Ctrl-C is raised at the first Python step after a system call returns, which can be the step right after
    the staging entry was made: the writer must know its name by then, and remove it."""
    import store.runs

    made = os.mkdir if writer == "staged_folder" else os.open

    def then_interrupted(path, *args, **kwargs):
        result = made(path, *args, **kwargs)
        if writer == "atomic_path":
            os.close(result)
        raise KeyboardInterrupt

    monkeypatch.setattr(store.runs.os, "mkdir" if writer == "staged_folder" else "open", then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with getattr(store.runs, writer)(tmp_path / "out"):
            pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "samples"
    with pytest.raises(RuntimeError):
        with staged_folder(out) as folder:
            (folder / "grid.png").write_bytes(b"half")
            raise RuntimeError("failed while writing")
    assert list(tmp_path.iterdir()) == []
    with staged_folder(out) as folder:
        (folder / "grid.png").write_bytes(b"whole")
    assert (out / "grid.png").read_bytes() == b"whole"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with pytest.raises(ValueError, match="exists already: pass `overwrite`"):
        with staged_folder(out):
            pass
    with staged_folder(out, overwrite=True) as folder:
        (folder / "other.png").write_bytes(b"new")
    assert sorted(p.name for p in out.iterdir()) == ["other.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]


def test_a_run_directory_is_made_with_its_config_and_the_files_it_carries(tmp_path):
    source = tmp_path / "elsewhere"
    source.mkdir()
    (source / "model.safetensors").write_bytes(b"weights")
    run_dir = tmp_path / "runs" / "prior" / "p"
    create_run_dir(run_dir, {"model": {}}, copies={"tokenizer/model.safetensors": source / "model.safetensors",
                                                   "tokenizer/results.json": source / "missing.json"})
    assert json.loads((run_dir / "config.json").read_text()) == {"model": {}}
    assert (run_dir / "tokenizer" / "model.safetensors").read_bytes() == b"weights"
    assert not (run_dir / "tokenizer" / "results.json").exists()
    with pytest.raises(ValueError, match="exists already: pass `resume`"):
        create_run_dir(run_dir, {"model": {"other": 1}})
    assert json.loads((run_dir / "config.json").read_text()) == {"model": {}}


def test_the_newest_complete_run_is_found_and_new_names_never_collide(tmp_path):
    with pytest.raises(ValueError, match="no finished prior run"):
        newest_run(tmp_path, "prior")
    for name, age in (("old", 100), ("new", 10), ("unfinished", 0)):
        (tmp_path / "prior" / name).mkdir(parents=True)
        if name != "unfinished":
            (tmp_path / "prior" / name / "model.safetensors").write_bytes(b"")
            stamp = time.time() - age
            os.utime(tmp_path / "prior" / name / "model.safetensors", (stamp, stamp))
    assert newest_run(tmp_path, "prior") == tmp_path / "prior" / "new"
    first = new_run_dir(tmp_path, "tokenizer")
    first.mkdir(parents=True)
    second = new_run_dir(tmp_path, "tokenizer")
    assert second != first and second.parent == first.parent and second.name.startswith(first.name)
    with pytest.raises(ValueError, match="exists already"):
        new_run_dir(tmp_path, "prior", "old")


@dataclass
class Inner:
    width: int = 4


@dataclass
class Outer:
    inner: Inner
    optional: Inner | None = None
    names: list = field(default_factory=list)


def test_a_config_is_read_back_into_nested_dataclasses_or_refused_in_one_line(tmp_path):
    saved = dataclasses.asdict(Outer(Inner(8), Inner(2), ["a"]))
    assert config_from_dict(Outer, json.loads(json.dumps(saved)), "x.json", "test") == Outer(Inner(8), Inner(2), ["a"])
    assert config_from_dict(Outer, {"inner": {}, "optional": None}, "x.json", "test") == Outer(Inner(), None, [])
    for values, detail in (({"inner": {"width": 1, "depth": 2}}, "depth"), ({"unknown": 1}, "unknown"),
                           ({}, "inner"), ([1, 2], "list")):
        with pytest.raises(ValueError, match=f"x.json is not a test config .*{detail}") as error:
            config_from_dict(Outer, values, "x.json", "test")
        assert "\n" not in str(error.value)


def test_config_files_written_before_a_field_was_renamed_load_under_the_new_name(tmp_path):
    from prior.run import PriorRun
    from tokenizer import TokenizerRun

    (tmp_path / "config.json").write_text(json.dumps({"model": {"ema_decay": 0.95}, "train": {"ema_decay": 0.5}}))
    run = TokenizerRun.load(tmp_path)
    assert run.model.codebook_ema_decay == 0.95 and run.train.weight_ema_decay == 0.5
    (tmp_path / "config.json").write_text(json.dumps({"model": {"codebook_size": 8}, "train": {"ema_decay": 0.999}}))
    assert PriorRun.load(tmp_path).train.weight_ema_decay == 0.999


# ---------------------------------------------------------------------------------------------------- index maps

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


def test_index_maps_round_trip_memory_mapped_with_their_metadata_and_hashes(tmp_path):
    assert [smallest_uint_dtype(k) for k in (2, 256, 257, 65536, 65537)] == [np.uint8, np.uint8, np.uint16,
                                                                             np.uint16, np.uint32]
    rng = np.random.default_rng(3)
    maps, labels = rng.integers(0, 300, (9, 3, 4)), rng.integers(0, 2, 9)
    meta = MapsMeta(codebook_size=300, grid_height=3, grid_width=4, weights_sha256="abc", class_names=["a", "b"])
    write_index_maps(tmp_path, "test", maps, labels, meta)
    read = read_index_maps(tmp_path, "test")
    assert isinstance(read.maps, np.memmap) and read.maps.dtype == np.uint16
    assert np.array_equal(read.maps, maps) and np.array_equal(read.labels, labels)
    assert dataclasses.replace(read.meta, splits={}) == meta and read.meta.splits["test"]["count"] == 9
    # The one writer, the one reader: the file holds the record's fields, and a second split joins the first.
    assert json.loads((tmp_path / "meta.json").read_text())["class_names"] == ["a", "b"]
    write_index_maps(tmp_path, "valid", maps[:2], labels[:2], meta)
    assert set(read_maps_meta(tmp_path).splits) == {"test", "valid"}
    with pytest.raises(ValueError, match="hold tokens 300..300, outside the codebook's 0..299"):
        check_token_range("index maps", np.full((1, 2), 300), 300)
    with pytest.raises(ValueError, match="hold tokens 5..300, outside the codebook's 0..299"):
        check_token_range("index maps", np.array([5, 300], np.uint16), 300)
    with pytest.raises(ValueError, match="hold tokens -1..3, outside the codebook's 0..299"):
        check_token_range("index maps", torch.tensor([-1, 3]), 300)
    check_token_range("index maps", torch.tensor([[0, 299]]), 300)
    with pytest.raises(ValueError, match="hold tokens 0..4, outside the codebook's 5..9"):
        check_token_range("sequences", np.arange(5), 5, first=5)
    tokens, label = MapDataset(read)[4]
    assert tokens.dtype == torch.int64 and torch.equal(tokens, torch.from_numpy(maps[4])) and label == labels[4]
    with pytest.raises(ValueError, match="has no 'train' split"):
        read_index_maps(tmp_path, "train")
    np.save(tmp_path / "test_maps.npy", maps.astype(np.uint16))  # the same values, rewritten: the hash still holds
    assert np.array_equal(read_index_maps(tmp_path, "test").maps, maps)
    np.save(tmp_path / "test_maps.npy", (maps + 1).astype(np.uint16))
    with pytest.raises(ValueError, match="does not match its recorded SHA-256"):
        read_index_maps(tmp_path, "test")
    (tmp_path / "meta.json").write_text("{not json")  # a damaged meta.json: refused when read, replaced when written
    with pytest.raises(ValueError, match="meta.json is not valid JSON"):
        read_index_maps(tmp_path, "valid")
    write_index_maps(tmp_path, "valid", maps[:2], labels[:2], meta)
    assert set(read_maps_meta(tmp_path).splits) == {"valid"}


# -------------------------------------------------------------------------------------------------------- images

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


def test_a_lazy_folder_decodes_batches_equal_to_the_whole_split_in_memory(tmp_path):
    labelled_image_folder(tmp_path, 40, size=20, channels=3, seed=4)
    config = DataConfig(dataset=f"folder:{tmp_path}", image_size=16)
    whole, lazy = load_images(config, "train"), load_images(config, "train", lazy=True)
    assert lazy.images.shape == tuple(whole.images.shape) == (36, 3, 16, 16) and len(lazy) == 36
    batches = torch.cat([lazy.images[start:start + 5] for start in range(0, len(lazy), 5)])
    assert batches.dtype == torch.uint8 and torch.equal(batches, whole.images)
    assert torch.equal(lazy.images[-1], whole.images[-1]) and torch.equal(lazy.labels, whole.labels)


def test_fashion_mnist_is_read_from_the_configured_folder(fashion_dir, tmp_path):
    test_set = load_images(DataConfig(fashion_mnist_dir=str(fashion_dir)), "test")
    assert test_set.images.shape == (64, 1, 28, 28) and test_set.images.dtype == torch.uint8
    assert len(test_set.class_names) == 10 and test_set.labels.dtype == torch.int64
    assert DataConfig(fashion_mnist_dir=str(fashion_dir)).sources() == [fashion_dir]


def test_one_image_is_read_in_the_tokenizers_channels_and_refused_at_another_size(tmp_path):
    images, _ = synthetic_images(1, size=28, channels=3)
    Image.fromarray(images[0]).save(tmp_path / "rgb.png")
    gray = read_image(tmp_path / "rgb.png", 1, 28)
    assert gray.shape == (1, 1, 28, 28) and gray.dtype == torch.uint8
    assert read_image(tmp_path / "rgb.png", 3, 28).shape == (1, 3, 28, 28)
    with pytest.raises(ValueError, match="is 28x28, the tokenizer takes 32x32"):
        read_image(tmp_path / "rgb.png", 1, 32)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "bad.png", 1, 28)


# ---------------------------------------------------------------------------------------------- pixel formats

GREY_8BIT = (np.arange(28 * 28).reshape(28, 28) * 37 % 256).astype(np.uint8)
# Eight colours, so that a palette holds them exactly.
COLOUR_8BIT = np.stack([GREY_8BIT & 0x80, (GREY_8BIT << 1) & 0x80, (GREY_8BIT << 2) & 0x80], axis=-1) + np.uint8(60)


def png_16bit(path, pixels, colour_type):
    """A PNG of 16-bit samples written by hand (Pillow writes no 16-bit colour PNGs): colour type 0 grey, 2 RGB,
    4 grey + alpha."""
    import struct
    import zlib

    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def wide(pixels):
    """8-bit intensities x as the 16-bit ones of the same picture: x * 257 (0 -> 0, 255 -> 65535)."""
    return pixels.astype(np.uint16) * 257


# (name, the 8-bit picture, how to write it in the format): every format must read as its 8-bit version does.
PIXEL_FORMATS = [
    ("grey 16-bit png", GREY_8BIT, lambda p, x: Image.fromarray(wide(x)).save(p.with_suffix(".png"))),
    ("grey 16-bit tiff", GREY_8BIT, lambda p, x: Image.fromarray(wide(x)).save(p.with_suffix(".tif"))),
    ("grey 32-bit integer tiff", GREY_8BIT,
     lambda p, x: Image.fromarray(wide(x).astype(np.int32)).save(p.with_suffix(".tif"))),
    ("grey 1-bit png", np.where(GREY_8BIT > 127, 255, 0).astype(np.uint8),
     lambda p, x: Image.fromarray(x > 127).save(p.with_suffix(".png"))),
    ("grey and alpha png", GREY_8BIT, lambda p, x: Image.fromarray(x).convert("LA").save(p.with_suffix(".png"))),
    ("grey and alpha 16-bit png", GREY_8BIT,
     lambda p, x: png_16bit(p.with_suffix(".png"), np.stack([wide(x), np.full_like(wide(x), 65535)], -1), 4)),
    ("grey palette png", GREY_8BIT, lambda p, x: Image.fromarray(x).convert("P").save(p.with_suffix(".png"))),
    ("colour palette png", COLOUR_8BIT,
     lambda p, x: Image.fromarray(x).convert("P", palette=Image.Palette.ADAPTIVE).save(p.with_suffix(".png"))),
    ("rgba png", COLOUR_8BIT, lambda p, x: Image.fromarray(x).convert("RGBA").save(p.with_suffix(".png"))),
    ("cmyk tiff", COLOUR_8BIT, lambda p, x: Image.fromarray(x).convert("CMYK").save(p.with_suffix(".tif"))),
    ("rgb 16-bit png", COLOUR_8BIT, lambda p, x: png_16bit(p.with_suffix(".png"), wide(x), 2)),
]


@pytest.mark.parametrize("name,picture,write", PIXEL_FORMATS, ids=[name for name, *_ in PIXEL_FORMATS])
def test_every_pixel_format_reads_as_its_8bit_version(tmp_path, name, picture, write):
    """The readers of training folders (and encode: the same FolderImages) and of --complete (read_image)."""
    for kind, pixels in (("reference", picture), ("format", picture)):
        (tmp_path / kind).mkdir()
        if kind == "reference":
            Image.fromarray(pixels).save(tmp_path / kind / "image.png")  # the 8-bit version, as 8-bit as it gets
        else:
            write(tmp_path / kind / "image", pixels)
    path_of = {kind: next((tmp_path / kind).iterdir()) for kind in ("reference", "format")}
    for channels in (1, 3):
        read = {kind: load_images(DataConfig(dataset=f"folder:{tmp_path / kind}"), "all", channels=channels).images
                for kind in path_of}
        assert read["format"].shape == (1, channels, 28, 28)
        assert torch.equal(read["format"], read["reference"]), (name, channels)
        assert torch.equal(read_image(path_of["format"], channels, 28), read_image(path_of["reference"], channels, 28))
    if picture.ndim == 2 and name != "grey and alpha 16-bit png":  # (which Pillow reads as RGBA)
        assert load_images(DataConfig(dataset=f"folder:{tmp_path / 'format'}"), "all").images.shape[1] == 1


def test_a_16bit_picture_is_scaled_to_8_bits_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode in ("I;16", "I")  # Pillow before 10 opens it as 32-bit "I"
    pixels = load_images(DataConfig(dataset=f"folder:{tmp_path}", image_size=4), "all").images
    assert pixels[0, 0, 0].tolist() == [0, 1, 128, 255]  # Image.convert("L") gives [0, 255, 255, 255]


def test_float_pixels_have_no_range_and_are_refused_in_one_line(tmp_path):
    Image.fromarray(GREY_8BIT.astype(np.float32) / 255).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match="32-bit float pixels, whose range is unknown") as error:
        load_images(DataConfig(dataset=f"folder:{tmp_path}"), "all")
    assert "float.tif" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="cannot read image .*float.tif .*32-bit floats"):
        read_image(tmp_path / "float.tif", 1, 28)


def test_an_npz_written_in_batches_is_what_numpy_savez_writes_and_reads_back_as_the_pngs(tmp_path):
    images = torch.rand(7, 1, 6, 6)
    images[0, 0, 0, 0] = 0.5 / 255  # a pixel exactly between two levels rounds as a PNG rounds it
    with NpzImageWriter(tmp_path / "a.npz", 7, 6, 6) as writer:
        for start in range(0, 7, 3):
            writer.write(images[start:start + 3])
    expected = images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
    np.savez(tmp_path / "b.npz", expected.numpy())
    with np.load(tmp_path / "a.npz") as ours, np.load(tmp_path / "b.npz") as numpy_own:
        assert np.array_equal(ours["arr_0"], numpy_own["arr_0"]) and ours["arr_0"].dtype == np.uint8
    (tmp_path / "pngs").mkdir()
    save_pngs(tmp_path / "pngs", images)
    from_folder = read_image_collection(tmp_path / "pngs", 1, 6)
    assert from_folder.shape == (7, 1, 6, 6)
    assert torch.equal(from_folder, read_image_collection(tmp_path / "a.npz", 1, 6))
    assert torch.equal(read_image_collection(tmp_path / "a.npz", 3, 6), from_folder.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match="images were never written"):
        with NpzImageWriter(tmp_path / "c.npz", 7, 6, 6) as writer:
            writer.write(images[:3])


def test_colour_arrays_turn_grey_as_pillow_turns_them(tmp_path):
    colour = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "colour.npz", colour)
    grey = read_image_collection(tmp_path / "colour.npz", 1, 5)
    pillow = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in colour])
    assert np.array_equal(grey[:, 0].numpy(), pillow)
    np.savez(tmp_path / "plain.npz", colour[..., 0])  # (n, H, W): one grey channel
    assert torch.equal(read_image_collection(tmp_path / "plain.npz", 1, 5)[:, 0], torch.from_numpy(colour[..., 0]))


@pytest.mark.parametrize("case, message", [
    ("floats", "arr_0 of .* is float32 .*: expected uint8"),
    ("size", "are 6x5, the reference is 5x5"),
    ("named", "has no array arr_0 .it has pictures"),
    ("text", "neither a folder of images nor an .npz file"),
    ("missing", "do not exist"),
    ("broken", "cannot read"),
    ("empty", "no images"),
])
def test_bad_image_collections_are_one_line(tmp_path, case, message):
    path = tmp_path / {"text": "x.txt", "empty": "empty"}.get(case, "x.npz")
    if case == "floats":
        np.savez(path, np.zeros((2, 5, 5, 3), dtype=np.float32))
    elif case == "size":
        np.savez(path, np.zeros((2, 5, 6, 3), dtype=np.uint8))
    elif case == "named":
        np.savez(path, pictures=np.zeros((2, 5, 5, 3), dtype=np.uint8))
    elif case in ("text", "broken"):
        path.write_text("not images")
    elif case == "empty":
        path.mkdir()
    with pytest.raises(ValueError, match=message):
        read_image_collection(path, 1, 5)


# ------------------------------------------------------------------------------- Fashion-MNIST away from Debian

@pytest.fixture
def mirror(tmp_path):
    """A stand-in mirror serving the Fashion-MNIST files of Debian's package (which .ci/run installs): its files pass
    the checksums a download is held to. (server URL, request counts, cut-off control)."""
    import fake_mirror
    from store.images import DEBIAN_FASHION_MNIST_DIR

    servers = []

    def start(cut=()):
        server, url, requests = fake_mirror.serve(DEBIAN_FASHION_MNIST_DIR, cut)
        servers.append(server)
        return url, requests

    yield start
    for server in servers:
        server.shutdown()


def away_from_debian(tmp_path, url):
    """A machine without Debian's package: --fashion-mnist-dir holds nothing, downloads go to tmp_path/data."""
    return DataConfig(fashion_mnist_dir=str(tmp_path / "no-package"), data_dir=str(tmp_path / "data"),
                      fashion_mnist_mirror=url)


def test_fashion_mnist_is_downloaded_once_checked_and_read_like_debians(tmp_path, mirror):
    url, requests = mirror()
    config = away_from_debian(tmp_path, url)
    test_set = load_images(config, "test")
    debian = load_images(DataConfig(), "test")
    assert torch.equal(test_set.images, debian.images) and torch.equal(test_set.labels, debian.labels)
    folder = tmp_path / "data" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        n for names in FASHION_MNIST_FILES.values() for n in names), "no staging folder left"
    assert config.sources() == [folder]
    assert len(load_images(config, "train")) == 60000
    assert all(count == 1 for count in requests.values()) and len(requests) == 4  # once, then read from disk


def test_a_download_cut_off_half_way_leaves_nothing_a_second_run_trips_on(tmp_path, mirror):
    url, requests = mirror(cut=["t10k-images-idx3-ubyte.gz"])
    config = away_from_debian(tmp_path, url)
    with pytest.raises(ValueError) as info:
        load_images(config, "test")
    message = str(info.value)
    assert "\n" not in message and "could not be downloaded" in message and "apt-get install" in message
    folder = tmp_path / "data" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    # The server is whole now: the next run takes the files it lacks and reads the right images.
    assert torch.equal(load_images(config, "test").images, load_images(DataConfig(), "test").images)
    assert requests["t10k-images-idx3-ubyte.gz"] == 2 and requests["train-images-idx3-ubyte.gz"] == 1


def test_a_killed_downloads_part_file_is_removed_once_its_process_is_gone(tmp_path, mirror):
    import subprocess
    import sys

    from store.runs import owner_tag

    url, _ = mirror()
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    living = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = owner_tag().rsplit("-", 1)[0]
        dead_part = folder / f".train-images-idx3-ubyte.gz.{host}-{gone.stdout.strip()}-part.tmp"
        live_part = folder / f".train-images-idx3-ubyte.gz.{host}-{living.pid}-part.tmp"
        for part in (dead_part, live_part):
            part.write_bytes(b"half")
        load_images(away_from_debian(tmp_path, url), "test")
        assert not dead_part.exists() and live_part.exists()
    finally:
        living.kill()
        living.wait()


def test_no_files_and_no_network_is_one_line_naming_both_ways_out(tmp_path, mirror):
    url, _ = mirror()
    config = away_from_debian(tmp_path, url + "nowhere/")  # every file answers 404
    with pytest.raises(ValueError) as info:
        load_images(config, "train")
    message = str(info.value)
    assert "\n" not in message and "404" in message and "dataset-fashion-mnist" in message
    assert "`fashion_mnist_dir`" in message and not (tmp_path / "data" / "fashion-mnist").exists()


def test_a_mirror_serving_other_files_is_refused(tmp_path):
    import fake_mirror
    from conftest import make_fashion_dir

    server, url, _ = fake_mirror.serve(make_fashion_dir(tmp_path / "synthetic"))
    try:
        with pytest.raises(ValueError, match="not Fashion-MNIST's \\(checksums differ\\)"):
            load_images(away_from_debian(tmp_path, url), "test")
    finally:
        server.shutdown()
    assert not (tmp_path / "data" / "fashion-mnist").exists()
