"""Work shared across processes: batch k on process k mod P, every file written by the main process in the original
order. Two CPU processes (torchrun, gloo) must write the same bytes as one."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_CLASSIFIER_FLAGS, TINY_PRIOR, labelled_image_folder
from pipelines import decode, encode, evaluate, fit_prior, sample
from training import batches_in_order

pytestmark = pytest.mark.usefixtures("one_thread")


def two_processes(module, *args, env=None):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", module,
                             *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def files_of(folder, skip=()):
    """{relative path: bytes} of every file under folder, but those named in skip."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


def test_one_process_takes_every_batch_in_order_and_raises_its_errors():
    seen = list(batches_in_order(None, 10, 4, lambda start, stop: (start, stop)))
    assert seen == [(0, (0, 4)), (4, (4, 8)), (8, (8, 10))]
    assert list(batches_in_order(None, 0, 4, lambda start, stop: 1 / 0)) == []

    def fails(start, stop):
        raise ValueError(f"bad batch at {start}")

    with pytest.raises(ValueError, match="bad batch at 0"):
        list(batches_in_order(None, 10, 4, fails))
    with pytest.raises(ValueError, match="positive"):
        list(batches_in_order(None, 10, 0, fails))


def test_two_processes_write_the_same_bytes_as_one(tokenizer_run, fashion_dir, tmp_path):
    env = {"FASHION_MNIST_DIR": str(fashion_dir)}
    folder = labelled_image_folder(tmp_path / "pictures", 23)
    # encode: a folder of 23 images in batches of 4 (six batches, the last short) with sequences.
    flags = ["--tokenizer", tokenizer_run, "--images", folder, "--batch-size", 4, "--sequences", "--begin-end-ids"]
    encode.main([*flags, "--out", tmp_path / "encode-one"])
    two_processes("pipelines.encode", *flags, "--out", tmp_path / "encode-two")
    assert files_of(tmp_path / "encode-one") == files_of(tmp_path / "encode-two")

    # decode: those maps back to pictures.
    flags = ["--tokenizer", tokenizer_run, "--tokens", tmp_path / "encode-one", "--batch-size", 5]
    decode.main([*flags, "--out", tmp_path / "decode-one"])
    two_processes("pipelines.decode", *flags, "--out", tmp_path / "decode-two")
    assert files_of(tmp_path / "decode-one") == files_of(tmp_path / "decode-two")

    # The dump of a tokenizer run: the maps, and meta.json but for the timings.
    maps = tokenizer_run / "maps"
    one = {**files_of(maps, skip=("meta.json",)), "meta": json.loads((maps / "meta.json").read_text())}
    two_processes("pipelines.fit_tokenizer", "--dump-only", tokenizer_run, env=env)
    two = {**files_of(maps, skip=("meta.json",)), "meta": json.loads((maps / "meta.json").read_text())}
    for meta in (one["meta"], two["meta"]):
        for split in meta["splits"].values():
            split.pop("dump_images_per_s")
    assert one == two

    # sample: 7 grids in batches of 3 from a class-conditional prior, with guidance.
    fit_prior.main([*TINY_PRIOR, "--tokenizer", tokenizer_run, "--output-root", tmp_path / "runs", "--run-name", "p",
                    "--condition", "class", "--label-dropout", "0.2"])
    flags = ["--prior", tmp_path / "runs" / "prior" / "p", "--num-samples", 7, "--batch-size", 3,
             "--guidance-scale", 2]
    sample.main([*flags, "--out", tmp_path / "sample-one"])
    two_processes("pipelines.sample", *flags, "--out", tmp_path / "sample-two")
    assert files_of(tmp_path / "sample-one", skip=("sample.json",)) == \
        files_of(tmp_path / "sample-two", skip=("sample.json",))
    tokens = np.load(tmp_path / "sample-two" / "tokens" / "samples_maps.npy")
    assert len(np.unique(tokens.reshape(7, -1), axis=0)) == 7, "every batch drew grids of its own"

    # evaluate: 50 samples in batches of 16; the same report and pictures, but for the timings. The classifier is
    # trained once, by the main process, before the other reads it.
    flags = ["--prior", tmp_path / "runs" / "prior" / "p", "--n-samples", 50, "--batch-size", 16,
             *TINY_CLASSIFIER_FLAGS]
    evaluate.main([*flags, "--output-root", tmp_path / "one", "--out", tmp_path / "report-one"])
    two_processes("pipelines.evaluate", *flags, "--output-root", tmp_path / "two", "--out", tmp_path / "report-two")
    reports = [json.loads((tmp_path / f"report-{n}" / "report.json").read_text()) for n in ("one", "two")]
    for report in reports:
        del report["created"], report["seconds"], report["settings"]["threads"], report["settings"]["device"]
        report["classifier"] = {k: report["classifier"][k] for k in ("weights_sha256", "trained_now", "test_accuracy")}
    assert reports[0] == reports[1] and reports[0]["counts"]["samples"] == 50
    assert files_of(tmp_path / "report-one", skip=("report.json", "report.html")) == \
        files_of(tmp_path / "report-two", skip=("report.json", "report.html"))


def test_an_error_in_one_process_stops_both_with_one_line(tokenizer_run, tmp_path):
    """One grid in batches of one: only process 0 has a batch, and its bad argument must reach process 1 too,
    which would otherwise wait for it forever."""
    fit_prior.main([*TINY_PRIOR, "--tokenizer", tokenizer_run, "--output-root", tmp_path / "runs", "--run-name", "p"])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                             "pipelines.sample", "--prior", tmp_path / "runs" / "prior" / "p", "--num-samples", "1",
                             "--top-k", "1000", "--out", tmp_path / "out"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("--top-k must be an integer in 1..32" in line for line in errors), result.stderr
    # (torchrun prints a traceback of its own for failed workers; none may come from our code)
    assert not re.search(rf'File "{re.escape(str(REPO))}/(?!\.venv)', result.stderr), result.stderr
    assert not (tmp_path / "out").exists()
