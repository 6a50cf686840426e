"""Bad input, table-driven, across the commands and the library.

A command given bad input exits with status 2 and one line on stderr that names the problem, without a
traceback, and writes nothing: the tree of its case folder (and of the shared runs) is the same before and after.
A library call given bad input raises one ValueError with a one-line message and writes nothing.

Each command case is one `python -m` subprocess in a case folder of its own; they run a few at a time, so the
file stays around a minute on two cores. The tiny runs they use are trained once for the module.
"""

import concurrent.futures
import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import prior
from prior import Prior, TwoLevelPrior
from prior.sampling import SamplingConfig
from conftest import TINY_PRIOR, TINY_TOKENIZER, make_fashion_dir, run_module
from pipelines import fit_prior, fit_tokenizer
from store.index_maps import read_index_maps, read_plain_tokens
from store.runs import WEIGHTS_HASHES, load_tensors, save_tensors, weights_hashes
from evaluation import EvaluationConfig, evaluate
from generation import ImageGenerator
from tokenizer import Tokenizer
from tokenizer.model import TokenizerConfig, VQVAE

MARKER = "pickle-was-executed"  # what a pickle's __reduce__ would create, in its case folder


@dataclasses.dataclass
class World:
    """The shared inputs: synthetic Fashion-MNIST, a tokenizer run, a class-conditional prior trained on its maps,
    and a second tokenizer run (other weights, its own maps)."""
    root: Path
    fashion: Path
    tokenizer: Path
    prior: Path
    other_tokenizer: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    fashion = make_fashion_dir(root / "fashion")
    runs = root / "runs"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASHION_MNIST_DIR", str(fashion))
        fit_tokenizer.main([*TINY_TOKENIZER, "--epochs", "1", "--output-root", runs, "--run-name", "tok"])
        tokenizer = runs / "tokenizer" / "tok"
        fit_prior.main([*TINY_PRIOR, "--tokenizer", tokenizer, "--output-root", runs, "--run-name", "prior",
                        "--condition", "class", "--label-dropout", "0.2"])
        # Another tokenizer of the same shape: fresh weights of another seed, and the maps they make.
        other = runs / "tokenizer" / "other"
        shutil.copytree(tokenizer, other)
        shutil.rmtree(other / "maps")
        torch.manual_seed(1)
        config = TokenizerConfig(**json.loads((tokenizer / "config.json").read_text())["model"])
        save_tensors(other / "model.safetensors", VQVAE(config).state_dict())
        edit_json(other / "results.json", lambda r: r.update({WEIGHTS_HASHES: weights_hashes(other)}))
        fit_tokenizer.main(["--dump-only", other])
    yield World(root, fashion, tokenizer, runs / "prior" / "prior", other)


# Helpers that build a case's inputs inside its folder -----------------------------------------------------------

class PickleBomb:
    """Unpickling this creates the marker file: a loader that runs pickles would leave it behind."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def write_pickle(path, folder):
    Path(path).write_bytes(pickle.dumps({"weight": PickleBomb(folder / MARKER)}))


def truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def edit_json(path, change):
    config = json.loads(Path(path).read_text())
    change(config)
    Path(path).write_text(json.dumps(config))


def copy_tokenizer(w, d):
    return Path(shutil.copytree(w.tokenizer, d / "tok"))


def copy_pair(w, d):
    """Copies of the tokenizer and of the prior, the prior's config pointing at the copied tokenizer."""
    tokenizer = copy_tokenizer(w, d)
    prior_dir = Path(shutil.copytree(w.prior, d / "prior"))
    edit_json(prior_dir / "config.json", lambda c: c["tokenizer"].update(run=str(tokenizer.resolve())))
    return tokenizer, prior_dir


def image_folder(d, n=12, mode="L", size=28, corrupt=None):
    """A flat folder of n small images; file number `corrupt` (if given) is not an image at all."""
    folder = d / "images"
    folder.mkdir()
    for i in range(n):
        pixels = np.full((size, size) + ((3,) if mode == "RGB" else ()), 20 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    if corrupt is not None:
        (folder / f"{corrupt:02d}.png").write_bytes(b"not a png at all")
    return folder


def tokenizer_on_folder(w, d, **folder_options):
    """A copy of the tokenizer run whose config says it was trained on a folder of images."""
    tokenizer = copy_tokenizer(w, d)
    folder = image_folder(d, **folder_options)
    edit_json(tokenizer / "config.json", lambda c: c["data"].update(dataset=f"folder:{folder}"))
    return tokenizer


def a_file(d):
    """A regular file where a folder would have to be: nothing can be written under it, even by root."""
    (d / "occupied").write_text("a file, not a folder\n")
    return d / "occupied"


def sample_images(prior_dir, n, **settings):
    return ImageGenerator.load(prior_dir).sample(n, **settings)


def replace_tokenizer(tokenizer, other):
    """The tokenizer run retrained: another run's weights, its record of them and the maps those weights made."""
    for name in ("model.safetensors", "results.json"):
        shutil.copy(other / name, tokenizer / name)
    shutil.rmtree(tokenizer / "maps")
    shutil.copytree(other / "maps", tokenizer / "maps")
    edit_json(tokenizer / "maps" / "meta.json", lambda m: m.update(tokenizer_run=str(tokenizer.resolve())))


def gray_image(d, size):
    Image.fromarray(np.full((size, size), 128, dtype=np.uint8)).save(d / "image.png")
    return d / "image.png"


# The command cases -----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    id: str
    module: str
    expect: str  # a substring of the one line on stderr
    setup: object  # (world, case folder) -> arguments, or (arguments, extra environment)


TOK, PRIOR, SAMPLE, EVAL = "pipelines.fit_tokenizer", "pipelines.fit_prior", "pipelines.sample", "pipelines.evaluate"
ENCODE, DECODE = "pipelines.encode", "pipelines.decode"
READS = "which is read: choose another --out"  # an --out over an input, with or without --overwrite


def tok_args(d, *extra):
    return [*TINY_TOKENIZER, "--epochs", "1", "--output-root", d / "out", *extra]


def prior_args(w, d, *extra, tokenizer=None):
    return [*TINY_PRIOR, "--tokenizer", tokenizer or w.tokenizer, "--output-root", d / "out", *extra]


def sample_args(w, d, *extra, prior_dir=None):
    return ["--prior", prior_dir or w.prior, "--n", "2", "--out", d / "samples", "--output-root", d / "out", *extra]


def eval_args(w, d, *extra):
    return ["--output-root", d / "out", "--out", d / "report", "--n-samples", "4", *extra]


def encode_args(w, d, *extra, images=None, out=None):
    return ["--tokenizer", w.tokenizer, "--images", images or image_folder(d), "--out", out or d / "tokens", *extra]


def decode_args(w, d, tokens, *extra, out=None):
    return ["--tokenizer", w.tokenizer, "--tokens", tokens, "--out", out or d / "pictures", *extra]


def token_file(d, name="tokens.npy", **arrays):
    """A file of token maps in the case folder: a .npy of one array, or with several arrays a .npz."""
    path = d / name
    with open(path, "wb") as f:
        if name.endswith(".npz"):
            np.savez(f, **arrays)
        else:
            np.save(f, np.zeros((2, 7, 7), dtype=np.uint8))
    return path


def _decode_out_is_its_maps(w, d):
    maps = Path(shutil.copytree(w.tokenizer / "maps", d / "maps"))
    return decode_args(w, d, maps, "--split", "test", "--overwrite", out=maps)


def _existing_run(w, d):
    (d / "out" / "tokenizer" / "taken").mkdir(parents=True)
    return tok_args(d, "--run-name", "taken")


def _truncated_tokenizer(w, d):
    tokenizer = copy_tokenizer(w, d)
    truncate(tokenizer / "model.safetensors")
    return ["--dump-only", tokenizer]


def _pickled_training_state(w, d):
    tokenizer = copy_tokenizer(w, d)
    write_pickle(tokenizer / "training_state.safetensors", d)
    return ["--resume", tokenizer]


def _maps_of_another_tokenizer(w, d):
    tokenizer = copy_tokenizer(w, d)
    shutil.rmtree(tokenizer / "maps")
    shutil.copytree(w.other_tokenizer / "maps", tokenizer / "maps")
    return prior_args(w, d, tokenizer=tokenizer)


def _resume_after_tokenizer_retrained(w, d):
    tokenizer, prior_dir = copy_pair(w, d)
    replace_tokenizer(tokenizer, w.other_tokenizer)
    return ["--resume", prior_dir]


def _tokenizer_changed_under_prior(w, d):
    tokenizer, prior_dir = copy_pair(w, d)
    replace_tokenizer(tokenizer, w.other_tokenizer)
    # The copy the prior run carries, which is what it samples with.
    for name in ("model.safetensors", "results.json"):
        shutil.copy(w.other_tokenizer / name, prior_dir / "tokenizer" / name)
    return sample_args(w, d, prior_dir=prior_dir)


def _pickled_prior(w, d):
    prior_dir = Path(shutil.copytree(w.prior, d / "prior"))
    for weights in prior_dir.glob("model*.safetensors"):  # the raw weights and their average, which sampling reads
        write_pickle(weights, d)
    return sample_args(w, d, prior_dir=prior_dir)


COMMAND_CASES = [
    # fit_tokenizer
    Case("tokenizer-missing-dataset", TOK, "Fashion-MNIST is not in",  # nor to be had from a mirror
         lambda w, d: (tok_args(d, "--fashion-mnist-mirror", "http://127.0.0.1:9/", "--data-dir", str(d / "data")),
                       {"FASHION_MNIST_DIR": str(d / "nowhere")})),
    Case("tokenizer-unknown-dataset", TOK, "unknown dataset 'imagenet'",
         lambda w, d: tok_args(d, "--dataset", "imagenet")),
    Case("tokenizer-corrupt-image", TOK, "07.png",
         lambda w, d: tok_args(d, "--dataset", f"folder:{image_folder(d, corrupt=7)}")),
    Case("tokenizer-bad-quantizer", TOK, "invalid choice: 'pq'", lambda w, d: tok_args(d, "--quantizer", "pq")),
    Case("tokenizer-fsq-level-below-two", TOK, "--fsq-levels must be",
         lambda w, d: tok_args(d, "--quantizer", "fsq", "--fsq-levels", "8,1,5")),
    Case("tokenizer-residual-depth-one", TOK, "needs --depth >= 2",
         lambda w, d: tok_args(d, "--quantizer", "residual", "--depth", "1")),
    Case("tokenizer-residual-code-dim", TOK, "no code_dim",
         lambda w, d: tok_args(d, "--quantizer", "residual", "--depth", "2", "--code-dim", "4")),
    Case("tokenizer-binary-not-power-of-two", TOK, "power-of-two codebook size, not 30",
         lambda w, d: tok_args(d, "--quantizer", "binary", "--codebook-size", "30")),
    Case("tokenizer-former-ema-decay-flag", TOK, "--ema-decay is now --codebook-ema-decay",
         lambda w, d: tok_args(d, "--ema-decay", "0.9")),
    Case("tokenizer-negative-epochs", TOK, "--epochs must be positive", lambda w, d: tok_args(d, "--epochs", "-1")),
    Case("tokenizer-size-not-divisible-by-factor", TOK, "not divisible by the downsampling factor 8",
         lambda w, d: tok_args(d, "--downsample", "8")),
    Case("tokenizer-bad-factor", TOK, "invalid choice: 2", lambda w, d: tok_args(d, "--downsample", "2")),
    Case("tokenizer-negative-adversarial-weight", TOK, "--adversarial-weight must be >= 0",
         lambda w, d: tok_args(d, "--adversarial-weight", "-1")),
    Case("tokenizer-discriminator-start-past-the-end", TOK, "is past the end of training",
         lambda w, d: tok_args(d, "--adversarial-weight", "0.5", "--discriminator-start", "8")),
    Case("tokenizer-batch-size-zero", TOK, "--batch-size must be positive",
         lambda w, d: tok_args(d, "--batch-size", "0")),
    Case("tokenizer-batch-larger-than-data", TOK, "fewer than one batch",
         lambda w, d: tok_args(d, "--batch-size", "100000")),
    Case("tokenizer-existing-run", TOK, "exists already", _existing_run),
    Case("tokenizer-resume-missing-run", TOK, "nowhere", lambda w, d: ["--resume", d / "nowhere"]),
    Case("tokenizer-output-root-under-a-file", TOK, "not a directory",
         lambda w, d: [*tok_args(d), "--output-root", a_file(d) / "sub"]),
    Case("tokenizer-truncated-weights", TOK, "not a readable safetensors file", _truncated_tokenizer),
    Case("tokenizer-pickled-training-state", TOK, "not a readable safetensors file", _pickled_training_state),
    Case("tokenizer-rgb-folder-into-gray-tokenizer", TOK, "takes (1, 28, 28)",
         lambda w, d: ["--dump-only", tokenizer_on_folder(w, d, mode="RGB")]),
    Case("tokenizer-dump-corrupt-test-image", TOK, "09.png",
         lambda w, d: ["--dump-only", tokenizer_on_folder(w, d, corrupt=9)]),
    # fit_prior
    Case("prior-maps-of-another-tokenizer", PRIOR, "made by other weights", _maps_of_another_tokenizer),
    Case("prior-resume-after-tokenizer-retrained", PRIOR, "was trained on maps of other tokenizer weights",
         _resume_after_tokenizer_retrained),
    Case("prior-missing-tokenizer", PRIOR, "has no model.safetensors",
         lambda w, d: prior_args(w, d, tokenizer=d / "nowhere")),
    Case("prior-no-tokenizer-run", PRIOR, "no finished tokenizer run",
         lambda w, d: [*TINY_PRIOR, "--output-root", d / "out"]),
    Case("prior-former-ema-decay-flag", PRIOR, "--ema-decay is now --weight-ema-decay",
         lambda w, d: prior_args(w, d, "--ema-decay", "0.999")),
    Case("prior-label-dropout-out-of-range", PRIOR, "--label-dropout must lie in [0, 1)",
         lambda w, d: prior_args(w, d, "--condition", "class", "--label-dropout", "1.5")),
    Case("prior-batch-larger-than-maps", PRIOR, "fewer than one batch",
         lambda w, d: prior_args(w, d, "--batch-size", "100000")),
    Case("prior-output-root-under-a-file", PRIOR, "not a directory",
         lambda w, d: [*prior_args(w, d), "--output-root", a_file(d) / "sub"]),
    # sample
    Case("sample-n-zero", SAMPLE, "--n/--num-samples/--n-samples: must be a positive integer, not 0",
         lambda w, d: sample_args(w, d, "--n", "0")),
    Case("sample-negative-temperature", SAMPLE, "temperature must be a finite number > 0",
         lambda w, d: sample_args(w, d, "--temperature", "-0.5")),
    Case("sample-top-k-above-codebook", SAMPLE, "--top-k must be an integer in 1..32",
         lambda w, d: sample_args(w, d, "--top-k", "33")),
    Case("sample-out-under-a-file", SAMPLE, "not a directory",
         lambda w, d: [*sample_args(w, d), "--out", a_file(d) / "sub"]),
    Case("sample-complete-wrong-size", SAMPLE, "the tokenizer takes 28x28",
         lambda w, d: sample_args(w, d, "--complete", gray_image(d, size=32))),
    Case("sample-tokenizer-changed", SAMPLE, "changed since the prior", _tokenizer_changed_under_prior),
    Case("sample-pickled-prior", SAMPLE, "not a readable safetensors file", _pickled_prior),
    Case("sample-prior-is-a-file", SAMPLE, "is a file, not a run directory",
         lambda w, d: sample_args(w, d, prior_dir=gray_image(d, 28))),
    # evaluate (only what it refuses before any work)
    Case("evaluate-negative-samples", EVAL, "--n-samples: must be a positive integer, not -5",
         lambda w, d: eval_args(w, d, "--prior", w.prior, "--n-samples", "-5")),
    Case("evaluate-out-under-a-file", EVAL, "not a directory",
         lambda w, d: eval_args(w, d, "--prior", w.prior, "--out", a_file(d) / "sub")),
    Case("evaluate-more-samples-than-memory", EVAL, "would take about",
         lambda w, d: eval_args(w, d, "--prior", w.prior, "--n-samples", str(10**10))),
    Case("evaluate-seed-past-64-bits", EVAL, "--seed: must be an integer from 0 to 2**64 - 1",
         lambda w, d: eval_args(w, d, "--prior", w.prior, "--seed", str(2**64))),
    Case("tokenizer-seed-past-64-bits", TOK, "--seed must be an integer from 0 to 2**64 - 1",
         lambda w, d: tok_args(d, "--seed", str(2**64))),
    # encode and decode
    Case("encode-images-is-a-file", ENCODE, "is a file, not a folder of images",
         lambda w, d: encode_args(w, d, images=gray_image(d, 28))),
    Case("decode-npz", DECODE, "is a .npz archive, and a .npy array of integer tokens (n, 7, 7) is expected",
         lambda w, d: decode_args(w, d, token_file(d, "tokens.npz", maps=np.zeros((2, 7, 7), np.uint8)))),
    Case("decode-picture-as-tokens", DECODE, "is not a .npy file: a .npy array of integer tokens (n, 7, 7)",
         lambda w, d: decode_args(w, d, gray_image(d, 28))),
    # no command deletes or overwrites what it reads: --out equal to, inside or holding an input
    Case("encode-out-is-its-images", ENCODE, READS,
         lambda w, d: encode_args(w, d, "--overwrite", images=image_folder(d), out=d / "images")),
    Case("encode-out-inside-its-images", ENCODE, READS,
         lambda w, d: encode_args(w, d, images=image_folder(d), out=d / "images" / "tokens")),
    Case("encode-out-holds-its-images", ENCODE, READS, lambda w, d: encode_args(w, d, "--overwrite", out=d)),
    Case("encode-out-is-the-tokenizer", ENCODE, READS,
         lambda w, d: encode_args(w, d, "--overwrite", out=w.tokenizer)),
    Case("decode-out-is-its-maps", DECODE, READS, _decode_out_is_its_maps),
    Case("decode-out-holds-its-token-file", DECODE, READS,
         lambda w, d: decode_args(w, d, token_file(d), "--overwrite", out=d)),
    Case("sample-out-is-the-prior-run", SAMPLE, READS,
         lambda w, d: sample_args(w, d, "--out", w.prior, "--overwrite")),
    Case("sample-out-inside-the-prior-run", SAMPLE, READS,
         lambda w, d: sample_args(w, d, "--out", w.prior / "samples")),
    Case("sample-out-holds-the-image-to-complete", SAMPLE, READS,
         lambda w, d: sample_args(w, d, "--complete", gray_image(d, 28), "--out", d, "--overwrite")),
    Case("evaluate-out-holds-the-runs", EVAL, READS,
         lambda w, d: eval_args(w, d, "--prior", w.prior, "--out", w.root / "runs", "--overwrite")),
    Case("evaluate-out-is-the-data-set", EVAL, READS,
         lambda w, d: eval_args(w, d, "--prior", w.prior, "--out", w.fashion, "--overwrite")),
]


def tree(root):
    """Every path under root with its kind, size and modification time (a file's: a folder's changes when a lock
    beside an output comes and goes), a snapshot to compare."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                                       None if p.is_dir() else p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def changes(before, after):
    """The paths that appeared, disappeared or changed between two snapshots."""
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


@dataclasses.dataclass
class Outcome:
    returncode: int
    stderr: str
    before: dict
    after: dict


@pytest.fixture(scope="module")
def command_outcomes(world, request):
    """Run the selected command cases, a few subprocesses at a time; {case id: Outcome}, plus the shared runs'
    snapshots under the key 'shared'."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.module.__name__ == __name__ and item.originalname == "test_command_refuses_bad_input"}
    cases = [case for case in COMMAND_CASES if case.id in selected]
    jobs = {}
    for case in cases:
        folder = world.root / "cases" / case.id
        folder.mkdir(parents=True)
        spec = case.setup(world, folder)
        args, env = spec if isinstance(spec, tuple) else (spec, {})
        jobs[case.id] = (folder, args, {"FASHION_MNIST_DIR": str(world.fashion), **env})
    shared_before = tree(world.root / "runs")
    befores = {id_: tree(folder) for id_, (folder, _, _) in jobs.items()}

    def launch(id_):
        _, args, env = jobs[id_]
        return run_module(cases_by_id[id_].module, *args, env=env)

    cases_by_id = {case.id: case for case in cases}
    with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        results = dict(zip(jobs, pool.map(launch, jobs)))
    outcomes = {id_: Outcome(results[id_].returncode, results[id_].stderr, befores[id_], tree(jobs[id_][0]))
                for id_ in jobs}
    outcomes["shared"] = (shared_before, tree(world.root / "runs"))
    return outcomes


@pytest.mark.parametrize("case", COMMAND_CASES, ids=lambda case: case.id)
def test_command_refuses_bad_input(case, command_outcomes):
    outcome = command_outcomes[case.id]
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.returncode == 2, outcome.stderr
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome.stderr
    assert case.expect in lines[0]
    assert MARKER not in outcome.after, "a pickle was executed"
    assert changes(outcome.before, outcome.after) == [], "the command wrote these"
    assert changes(*command_outcomes["shared"]) == [], "a command changed these in the shared runs"


# The library cases -----------------------------------------------------------------------------------------------

def copy_of(run, pickled=None, truncated=None, latent_dim=None):
    """setup(world, folder) -> a copy of the named shared run, its file `pickled` replaced by a pickle, its file
    `truncated` cut short, or its config's latent_dim changed."""
    def setup(w, d):
        copy = Path(shutil.copytree(getattr(w, run), d / "run"))
        if pickled:
            write_pickle(copy / pickled, d)
        if truncated:
            truncate(copy / truncated)
        if latent_dim:
            edit_json(copy / "config.json", lambda c: c["model"].update(latent_dim=latent_dim))
        return copy
    return setup


def _retrained_pair(w, d):
    """A prior run whose carried tokenizer copy holds other weights than those of its maps."""
    tokenizer, prior_dir = copy_pair(w, d)
    for name in ("model.safetensors", "results.json"):
        shutil.copy(w.other_tokenizer / name, prior_dir / "tokenizer" / name)
    return prior_dir


def _retrained_pair_of_an_older_run(w, d):
    """A prior run of before runs carried their tokenizer: the tokenizer run at its recorded path was retrained."""
    tokenizer, prior_dir = copy_pair(w, d)
    shutil.rmtree(prior_dir / "tokenizer")
    replace_tokenizer(tokenizer, w.other_tokenizer)
    return prior_dir


def _loaded_tokenizer(w, d):
    return Tokenizer.load(w.tokenizer)


def _shared_prior(w, d):
    return w.prior


def _nowhere(w, d):
    return d / "nowhere"


LIBRARY_CASES = [
    # (id, setup(world, case folder) -> x, call(x), a regular expression the one-line message matches)
    ("tokenizer-load-missing-run", _nowhere, Tokenizer.load, "does not exist"),
    ("tokenizer-load-a-file", lambda w, d: gray_image(d, 28), Tokenizer.load, "is a file, not a run directory"),
    ("tokenizer-load-truncated", copy_of("tokenizer", truncated="model.safetensors"), Tokenizer.load,
     "not a readable safetensors"),
    ("tokenizer-load-pickle", copy_of("tokenizer", pickled="model.safetensors"), Tokenizer.load,
     "not a readable safetensors"),
    ("tokenizer-load-prior-run", _shared_prior, Tokenizer.load, "is not a tokenizer config"),
    ("tokenizer-load-weights-of-another-shape", copy_of("tokenizer", latent_dim=16), Tokenizer.load, "do not fit"),
    ("encode-rgb-into-gray", _loaded_tokenizer, lambda t: t.encode(torch.rand(2, 3, 28, 28)),
     r"shape \(batch, 1, 28, 28\)"),
    ("encode-wrong-size", _loaded_tokenizer, lambda t: t.encode(torch.rand(2, 1, 32, 32)), "shape"),
    ("encode-int-images", _loaded_tokenizer, lambda t: t.encode(torch.ones(2, 1, 28, 28, dtype=torch.int32)),
     "float in"),
    ("decode-token-past-codebook", _loaded_tokenizer, lambda t: t.decode(torch.full((1, 7, 7), 32)), r"0\.\.31"),
    ("decode-negative-token", _loaded_tokenizer, lambda t: t.decode(torch.full((1, 7, 7), -1)), r"0\.\.31"),
    ("decode-float-tokens", _loaded_tokenizer, lambda t: t.decode(torch.zeros(1, 7, 7)), "integer"),
    ("decode-wrong-grid", _loaded_tokenizer, lambda t: t.decode(torch.zeros(1, 8, 8, dtype=torch.long)), "shape"),
    ("prior-load-pickle", copy_of("prior", pickled="model_ema.safetensors"), Prior.load, "not a readable safetensors"),
    ("prior-load-truncated", copy_of("prior", truncated="model_ema.safetensors"), Prior.load,
     "not a readable safetensors"),
    ("prior-load-tokenizer-run", lambda w, d: w.tokenizer, Prior.load, "is not a prior config"),
    ("two-level-prior-load-of-a-one-level-run", _shared_prior, TwoLevelPrior.load,
     "models one level of codes: load it with Prior.load"),
    ("load-tensors-pickle", copy_of("prior", pickled="training_state.safetensors"),
     lambda run: load_tensors(run / "training_state.safetensors"), "not a readable safetensors"),
    ("read-maps-without-meta", lambda w, d: d, lambda folder: read_index_maps(folder, "train"), "meta.json missing"),
    ("sample-n-zero", _shared_prior, lambda p: sample_images(p, 0), "`n` must be a positive integer"),
    ("sample-negative-temperature", _shared_prior, lambda p: sample_images(p, 2, temperature=-1.0),
     "`temperature` must be a finite number > 0"),
    ("sample-top-k-above-codebook", _shared_prior, lambda p: sample_images(p, 2, top_k=33),
     r"`top_k` must be an integer in 1\.\.32"),
    ("sample-unknown-label", _shared_prior, lambda p: sample_images(p, 2, label="Spaceship"), "unknown label"),
    ("sample-batch-size-zero", _shared_prior, lambda p: sample_images(p, 2, batch_size=0),
     "`batch_size` must be positive"),
    ("sample-tokenizer-changed", _retrained_pair, lambda p: sample_images(p, 2), "changed since the prior"),
    ("sample-older-run-tokenizer-changed", _retrained_pair_of_an_older_run, lambda p: sample_images(p, 2),
     "changed since the prior"),
    ("prior-sample-top-k-zero", _shared_prior,
     lambda p: prior.generate(Prior.load(p), 2, sampling=SamplingConfig(top_k=0)), "top_k"),
    ("sample-more-than-memory", _shared_prior, lambda p: sample_images(p, 10**10), "would take about"),
    ("sample-seed-past-64-bits", _shared_prior, lambda p: sample_images(p, 2, seed=2**64),
     r"`seed` must be an integer from 0 to 2\*\*64 - 1"),
    ("evaluate-more-samples-than-memory", _shared_prior,
     lambda p: evaluate(p, config=EvaluationConfig(n_samples=10**10), progress=False), "would take about"),
    ("read-plain-tokens-of-a-npz", lambda w, d: token_file(d, "t.npz", a=np.zeros(3), b=np.ones(3)),
     lambda path: read_plain_tokens(path, (7, 7), 32), r"is a \.npz archive"),
]


@pytest.mark.parametrize("setup,call,message", [case[1:] for case in LIBRARY_CASES],
                         ids=[case[0] for case in LIBRARY_CASES])
def test_library_refuses_bad_input(world, tmp_path, setup, call, message):
    argument = setup(world, tmp_path)
    before, shared = tree(tmp_path), tree(world.root / "runs")
    with pytest.raises(ValueError, match=message) as info:
        call(argument)
    assert "\n" not in str(info.value)
    assert not (tmp_path / MARKER).exists(), "a pickle was executed"
    assert changes(before, tree(tmp_path)) == [], "the call wrote these"
    assert changes(shared, tree(world.root / "runs")) == [], "the call changed these in the runs it read"
