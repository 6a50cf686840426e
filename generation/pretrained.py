"""The generator shipped in the repository, choosing the run a command reads, and exporting a run for sharing.

The shipped generator (checkpoints/fashion-mnist/, made by `python -m bench.pretrained`) is a prior run folder cut
to what sampling, encode, decode and evaluate read: the configs, the weights in use, results, metrics and the
maps' meta.json, with its model card (README.md). A command given no run takes the user's newest, and the shipped
generator only when there is none.
"""

import dataclasses
import shutil
import sys
from pathlib import Path

from generation.card import model_card
from prior import PriorRun
from store.hub import run_folder
from store.index_maps import read_maps_meta, record_index_maps
from store.runs import (CONFIG_FILE, MAPS_FOLDER, META_FILE, RESULTS_FILE, SHARED_FILES, TOKENIZER_COPY,
                        WEIGHTS_HASHES, newest_run, read_json, staged_folder, tokenizer_run_of, weights_file,
                        weights_hashes, write_json)


def _shipped_generator():
    """The shipped generator's folder: checkpoints/fashion-mnist in a clone, the package data generation/shipped/
    fashion-mnist in an installed wheel (pyproject.toml maps the one onto the other)."""
    here = Path(__file__).resolve().parent
    in_clone, in_wheel = here.parent / "checkpoints" / "fashion-mnist", here / "shipped" / "fashion-mnist"
    return in_wheel if not (in_clone / CONFIG_FILE).is_file() and (in_wheel / CONFIG_FILE).is_file() \
        else in_clone


SHIPPED_GENERATOR = _shipped_generator()
CARD, CARD_PICTURE = "README.md", "samples.png"  # a run's model card, and the samples it shows


def _newest_or_shipped(output_root, stage, shipped, what):
    """The newest finished run under output_root/stage, else the shipped one (said on stderr), else the error."""
    shipped = Path(shipped)
    try:
        return newest_run(output_root, stage)
    except ValueError:
        if not (shipped / CONFIG_FILE).is_file():
            raise
    sys.stderr.write(f"no {stage} run of your own under {Path(output_root) / stage}: using the shipped "
                     f"Fashion-MNIST {what} {shipped} (see its README.md)\n")
    return shipped


def choose_prior(name, output_root, shipped=None):
    """The prior run folder a command reads: the one named (a folder, or a Hub id fetched into the cache), else
    the newest under output_root/prior, else the shipped generator (shipped: another folder in its place)."""
    if name:
        return run_folder(name)
    return _newest_or_shipped(output_root, "prior", shipped or SHIPPED_GENERATOR, "generator")


def choose_tokenizer(name, output_root, shipped=None):
    """The tokenizer run folder a command reads: the one named (a tokenizer run, or a prior run carrying one; a
    folder or a Hub id), else the newest under output_root/tokenizer, else the shipped generator's."""
    if not name:
        return _newest_or_shipped(output_root, "tokenizer", Path(shipped or SHIPPED_GENERATOR) / TOKENIZER_COPY,
                                  "tokenizer")
    return tokenizer_run_of(run_folder(name))


def _export_run(source, target, weights=None):
    """Copy into target the files of run folder source that SHARED_FILES names and its weights file in use (or the
    one named), with results.json recording that file's SHA-256."""
    weights = weights_file(source, weights)
    for name in (*SHARED_FILES, weights):
        if (source / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
    results = read_json(target / RESULTS_FILE) if (target / RESULTS_FILE).is_file() else {}
    write_json(target / RESULTS_FILE, {**results, WEIGHTS_HASHES: weights_hashes(target)})


def _name_carried_tokenizer(folder):
    """An exported generator names its tokenizer by the copy it carries (config.json's tokenizer.run, relative to
    the folder; the maps' meta.json by name), so nothing in it names a folder of the machine it was made on; the
    weights' SHA-256 beside each name says which tokenizer it is."""
    config = read_json(folder / CONFIG_FILE)
    config["tokenizer"]["run"] = TOKENIZER_COPY
    write_json(folder / CONFIG_FILE, config)
    maps_dir = folder / TOKENIZER_COPY / MAPS_FOLDER
    if (maps_dir / META_FILE).is_file():
        record_index_maps(maps_dir, {}, dataclasses.replace(read_maps_meta(maps_dir), tokenizer_run=TOKENIZER_COPY))


def export_generator(prior_dir, out, overwrite=False, weights=None, card=False):
    """A prior run as a generator to ship or upload: out/ gets the prior's files (SHARED_FILES and the weights it
    samples with, or the weights file named) and out/tokenizer/ its tokenizer's, and nothing else (no training
    state, no maps). card: also its model card, README.md, the run's own with its samples picture when it has one,
    else one written from the run's files (generation.card). Written whole or not at all; returns out."""
    prior_dir = Path(prior_dir)
    PriorRun.load(prior_dir)  # a one-line error for a folder that is not a prior run
    carried = prior_dir / TOKENIZER_COPY
    if not (carried / CONFIG_FILE).is_file():
        raise ValueError(f"{prior_dir} carries no copy of its tokenizer ({carried}): only a prior run trained by "
                         "this version of fit_prior can be exported")
    with staged_folder(out, overwrite) as folder:
        _export_run(prior_dir, folder, weights)
        _export_run(carried, folder / TOKENIZER_COPY)
        _name_carried_tokenizer(folder)
        if card and (prior_dir / CARD).is_file():
            for name in (CARD, CARD_PICTURE):
                if (prior_dir / name).is_file():
                    shutil.copyfile(prior_dir / name, folder / name)
        elif card:
            (folder / CARD).write_text(model_card(folder, name=str(out)))
    return Path(out)
