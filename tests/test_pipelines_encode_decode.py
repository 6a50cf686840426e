"""pipelines.encode and pipelines.decode: any folder of images to tokens (and flat sequences) and back."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TOKENIZER, labelled_image_folder, run_in_process
from pipelines import decode, encode, fit_tokenizer
from store.index_maps import read_index_maps, read_sources
from store.sequences import SequenceLayout, read_sequences
from tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def folder(tmp_path):
    """25 PNGs of 12x12 in class sub-folders: the tokenizer (28x28) takes them resized."""
    return labelled_image_folder(tmp_path / "pictures", 25)


def read_folder_as_the_tokenizer_takes_it(root, lines, size=28):
    """The images named by a sources file, read and resized here with PIL: what encode's row i must be made of."""
    images = []
    for line in lines:
        with Image.open(root / line) as image:
            images.append(np.asarray(image.convert("L").resize((size, size), Image.BILINEAR)))
    return torch.from_numpy(np.stack(images)).unsqueeze(1)


def png_pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def as_png_bytes(images):
    """float images in [0, 1] as torchvision's save_image rounds them."""
    return images.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()


def test_encode_of_a_folder_is_the_tokenizers_encode_row_for_row(tokenizer_run, folder, tmp_path, capsys):
    out = tmp_path / "tokens"
    status, _, err = run_in_process(encode.main, ["--tokenizer", tokenizer_run, "--images", folder, "--out", out,
                                                  "--batch-size", "7"], capsys)
    assert status == 0, err
    lines = (out / "images_sources.txt").read_text().splitlines()
    assert len(lines) == 25 and lines == sorted(lines, key=lambda line: line.split("/"))
    tokenizer = Tokenizer.load(tokenizer_run)
    maps = read_index_maps(out, "images")  # checks the recorded hashes too
    expected = tokenizer.encode(read_folder_as_the_tokenizer_takes_it(folder, lines))
    assert maps.maps.dtype == np.uint8 and maps.maps.shape == (25, 7, 7)
    assert np.array_equal(maps.maps.astype(np.int64), expected.numpy())
    assert maps.labels.tolist() == [int(line[len("kind")]) for line in lines]  # sub-folders are the classes
    assert maps.meta.class_names == ["kind0", "kind1", "kind2"] and maps.meta.sequences is None
    assert maps.meta.weights_sha256 == tokenizer.weights_sha256
    # What a library user reads back without a command: row i is the image on line i, checked against its hash.
    assert read_sources(out, "images") == lines
    with pytest.raises(ValueError, match="encode them with `sequences`"):
        read_sequences(out, "images")
    (out / "images_sources.txt").write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(ValueError, match="does not match its recorded SHA-256"):
        read_sources(out, "images")

    # decode(encode(x)) is the tokenizer's reconstruction of x, picture for picture.
    pictures = tmp_path / "pictures-out"
    status, _, err = run_in_process(decode.main, ["--tokenizer", tokenizer_run, "--tokens", out, "--out", pictures,
                                                  "--batch-size", "4"], capsys)
    assert status == 0, err
    _, reconstructions, _ = tokenizer.reconstruct(read_folder_as_the_tokenizer_takes_it(folder, lines))
    files = sorted((pictures / "images").iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(25)]
    for i in (0, 6, 24):
        assert np.array_equal(png_pixels(files[i]), as_png_bytes(reconstructions[i, 0]))
    assert png_pixels(pictures / "grid.png").shape[0] > 84, "the mosaic is enlarged"
    assert json.loads((pictures / "decode.json").read_text())["count"] == 25


@pytest.mark.parametrize("offset,begin_end", [(0, False), (1000, True)])
def test_sequences_round_trip_to_the_maps(tokenizer_run, folder, tmp_path, capsys, offset, begin_end):
    out = tmp_path / "tokens"
    flags = ["--sequences", "--vocab-offset", offset] + (["--begin-end-ids"] if begin_end else [])
    status, _, err = run_in_process(encode.main, ["--tokenizer", tokenizer_run, "--images", folder, "--out", out,
                                                  *flags], capsys)
    assert status == 0, err
    maps = read_index_maps(out, "images")
    sequences = np.load(out / "images_sequences.npy", allow_pickle=False)
    described = maps.meta.sequences
    assert sequences.shape == (25, 49 + 2 * begin_end) == (25, described["length"])
    assert sequences.dtype == (np.uint16 if offset else np.uint8)
    layout = SequenceLayout(32, ((7, 7),), offset, begin_end)
    assert described == layout.describe() and described["vocab_size"] == offset + 32 + 2 * begin_end
    read_back, read_layout = read_sequences(out, "images")  # the library reads what encode wrote
    assert read_layout == layout and np.array_equal(read_back, sequences)
    assert np.array_equal(layout.to_maps(sequences)[0], maps.maps.astype(np.int64))
    body = sequences[:, 1:-1] if begin_end else sequences
    assert np.array_equal(body.astype(np.int64) - offset, maps.maps.reshape(25, -1))  # raster order
    if begin_end:
        assert (sequences[:, 0] == offset + 32).all() and (sequences[:, -1] == offset + 33).all()
    entry = maps.meta.splits["images"]
    assert entry["sequences"]["file"] == "images_sequences.npy" and len(entry["sequences"]["sha256"]) == 64


def test_sequences_of_two_levels_hold_the_top_grid_then_the_bottom(fashion_dir, tmp_path):
    fit_tokenizer.main([*TINY_TOKENIZER, "--hierarchy", "2", "--epochs", "1", "--output-root", tmp_path / "runs",
                        "--run-name", "vq2"])
    run = tmp_path / "runs" / "tokenizer" / "vq2"
    encode.main(["--tokenizer", run, "--images", "fashion-mnist", "--split", "test", "--out", tmp_path / "tokens",
                 "--sequences", "--begin-end-ids", "--fashion-mnist-dir", fashion_dir])
    maps = read_index_maps(tmp_path / "tokens", "test")
    assert maps.top.shape == (64, 4, 4) and maps.maps.shape == (64, 7, 7)
    dumped = read_index_maps(run / "maps", "test")  # the same images as the run's own dump
    assert np.array_equal(maps.maps, dumped.maps) and np.array_equal(maps.top, dumped.top)
    sequences = np.load(tmp_path / "tokens" / "test_sequences.npy")
    assert sequences.shape == (64, 1 + 16 + 49 + 1)
    top, bottom = SequenceLayout(32, ((4, 4), (7, 7)), 0, True).to_maps(sequences)
    assert read_sequences(tmp_path / "tokens", "test")[1] == SequenceLayout(32, ((4, 4), (7, 7)), 0, True)
    assert np.array_equal(top, maps.top.astype(np.int64)) and np.array_equal(bottom, maps.maps.astype(np.int64))
    decode.main(["--tokenizer", run, "--tokens", tmp_path / "tokens", "--out", tmp_path / "pictures"])
    expected = Tokenizer.load(run).decode((torch.from_numpy(top[:1]), torch.from_numpy(bottom[:1])))
    assert np.array_equal(png_pixels(tmp_path / "pictures" / "images" / "00000.png"), as_png_bytes(expected[0, 0]))


def test_sequence_layout_refuses_what_is_not_its_sequences():
    layout = SequenceLayout(32, ((2, 2),), 10, True)
    good = np.array([[42, 10, 11, 12, 41, 43]])
    assert layout.to_maps(good)[0].tolist() == [[[0, 1], [2, 31]]]
    for bad, message in [(good[:, :-1], "shape"), (good + np.array([[1, 0, 0, 0, 0, 0]]), "begin with id 42"),
                         (np.array([[42, 9, 11, 12, 41, 43]]), "10..41"), (good.astype(float), "integers")]:
        with pytest.raises(ValueError, match=message):
            layout.to_maps(bad)
    with pytest.raises(ValueError, match="non-negative"):
        SequenceLayout(32, ((2, 2),), -1)


def test_a_bad_folder_is_named_in_one_line_and_nothing_is_written(tokenizer_run, folder, tmp_path, capsys):
    (folder / "kind0" / "broken.png").write_bytes(b"not a picture")
    (folder / "kind1" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "tokens"
    status, _, err = run_in_process(encode.main, ["--tokenizer", tokenizer_run, "--images", folder, "--out", out],
                                    capsys)
    assert status == 2 and len(err) == 1
    assert "2 unreadable image file(s)" in err[0] and "broken.png" in err[0] and "empty.jpg" in err[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tokens")]


@pytest.mark.parametrize("flags,message", [
    (["--images", "no/such/folder"], "does not exist"),
    (["--vocab-offset", "5"], "add --sequences"),
    (["--sequences", "--vocab-offset", "-3"], "non-negative"),
    (["--image-size", "32"], "takes (1, 28, 28)"),
    (["--split", "test"], "a folder is encoded whole"),
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer, not 0"),
])
def test_bad_encode_requests_are_one_line_errors(tokenizer_run, folder, tmp_path, capsys, flags, message):
    out = tmp_path / "tokens"
    args = ["--tokenizer", tokenizer_run, "--images", folder, "--out", out, *flags]
    status, _, err = run_in_process(encode.main, args, capsys)
    assert status == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


def bad_token_files(tmp_path, tokenizer_run):
    def save(name, array, **kwargs):
        np.save(tmp_path / name, array, **kwargs)
        return tmp_path / name

    return [
        (save("past.npy", np.full((2, 7, 7), 32, np.int64)), "outside the codebook's 0..31"),
        (save("negative.npy", np.full((2, 7, 7), -1, np.int16)), "outside the codebook's 0..31"),
        (save("shape.npy", np.zeros((2, 8, 8), np.uint8)), "the tokenizer takes (n, 7, 7)"),
        (save("float.npy", np.zeros((2, 7, 7), np.float32)), "not integers"),
        (save("pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a readable .npy"),
        (tmp_path / "missing.npy", "does not exist"),
        (tokenizer_run / "maps", "choose one (--split)"),  # train and test
    ]


def test_bad_token_files_are_one_line_errors_and_write_nothing(tokenizer_run, tmp_path, capsys):
    for path, message in bad_token_files(tmp_path, tokenizer_run):
        out = tmp_path / "pictures"
        status, _, err = run_in_process(decode.main, ["--tokenizer", tokenizer_run, "--tokens", path, "--out", out],
                                        capsys)
        assert status == 2 and len(err) == 1 and message in err[0], (path, err)
        assert not out.exists()


def test_decode_refuses_maps_of_other_weights_and_takes_a_plain_array(tokenizer_run, fashion_dir, tmp_path, capsys):
    fit_tokenizer.main([*TINY_TOKENIZER, "--epochs", "1", "--seed", "1", "--output-root", tmp_path / "runs",
                        "--run-name", "other"])
    other = tmp_path / "runs" / "tokenizer" / "other"
    status, _, err = run_in_process(decode.main, ["--tokenizer", other, "--tokens", tokenizer_run / "maps",
                                                  "--split", "test", "--out", tmp_path / "x"], capsys)
    assert status == 2 and "other tokenizer weights" in err[0]
    plain = np.asarray(read_index_maps(tokenizer_run / "maps", "test").maps[:3]).astype(np.int32)
    np.save(tmp_path / "plain.npy", plain)
    decode.main(["--tokenizer", tokenizer_run, "--tokens", tmp_path / "plain.npy", "--out", tmp_path / "plain"])
    expected = Tokenizer.load(tokenizer_run).decode(torch.from_numpy(plain))
    assert np.array_equal(png_pixels(tmp_path / "plain" / "images" / "00002.png"), as_png_bytes(expected[2, 0]))


def test_encode_and_decode_refuse_an_existing_out_or_one_under_a_file(tokenizer_run, folder, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    (tmp_path / "a-file").write_text("")
    commands = [(encode.main, ["--tokenizer", tokenizer_run, "--images", folder]),
                (decode.main, ["--tokenizer", tokenizer_run, "--tokens", tokenizer_run / "maps", "--split", "test"])]
    for main, args in commands:
        for out, message in ((existing, "exists already: pass --overwrite"),
                             (tmp_path / "a-file" / "out", "is not a directory")):
            status, _, err = run_in_process(main, [*args, "--out", out], capsys)
            assert status == 2 and len(err) == 1 and message in err[0], err
        assert (existing / "keep.txt").read_text() == "mine" and sorted(existing.iterdir()) == [existing / "keep.txt"]


def test_16bit_pictures_encode_to_the_tokens_of_their_8bit_versions(tokenizer_run, folder, tmp_path, capsys):
    wide = tmp_path / "wide"
    for path in sorted(folder.rglob("*.png")):
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L")).astype(np.uint16) * 257  # the same picture in 16 bits
        (wide / path.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(wide / path.parent.name / path.name)
    for source, out in ((folder, tmp_path / "narrow-tokens"), (wide, tmp_path / "wide-tokens")):
        status, _, err = run_in_process(encode.main, ["--tokenizer", tokenizer_run, "--images", source, "--out", out],
                                        capsys)
        assert status == 0, err
    narrow, wide_maps = (read_index_maps(tmp_path / name, "images").maps for name in ("narrow-tokens", "wide-tokens"))
    assert np.array_equal(narrow, wide_maps)
    assert len(np.unique(narrow)) > 1, "a saturated picture would give one token everywhere"
