"""Small data made on the spot: tests never need the internet or the full data sets."""

import gzip
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def synthetic_images(n, size=28, channels=1, seed=0):
    """Bright rectangles and discs on black, a stand-in for Fashion-MNIST's silhouettes; labels = shape kind."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.integers(size // 8, size // 3)
        if labels[i] == 0:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r // 2 + 1)
        elif labels[i] == 1:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = abs(yy - cy) <= 1
        images[i][mask] = rng.integers(120, 256, channels)
    return images, labels


def labelled_image_folder(root, n, size=12, channels=1, seed=5):
    """n synthetic PNGs in one sub-folder per class (kind0, kind1, kind2), as torchvision's ImageFolder reads them."""
    from PIL import Image

    images, labels = synthetic_images(n, size=size, channels=channels, seed=seed)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"kind{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0] if channels == 1 else image).save(root / f"kind{label}" / f"{i:03d}.png")
    return root


def npy_bytes(array):
    """The bytes np.save writes for array."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fashion_dir(directory, n_train=256, n_test=64):
    """Files in the layout of Debian's dataset-fashion-mnist package, with synthetic content."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, seed=seed)
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


@pytest.fixture(scope="module")
def one_thread():
    """Tensors in the prior tests are tiny: on a CPU shared with other jobs a second OpenMP thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fashion_dir(tmp_path, monkeypatch):
    directory = make_fashion_dir(tmp_path / "fashion")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(directory))
    return directory


# Flags for a tokenizer that trains in a second or two on the synthetic data.
TINY_TOKENIZER = ["--hidden-channels", "16", "--residual-channels", "8", "--latent-dim", "8",
                  "--codebook-size", "32", "--num-residual-blocks", "1", "--batch-size", "32",
                  "--warmup-steps", "2", "--log-every", "2"]


# Flags for a prior that trains in a second on the tiny tokenizer's maps: one epoch unless a test asks for more
# (a later --epochs wins).
TINY_PRIOR = ["--embed-dim", "8", "--hidden-channels", "8", "--num-layers", "3", "--batch-size", "32",
              "--warmup-steps", "2", "--log-every", "2", "--epochs", "1"]


def run_module(module, *args, env=None, timeout=300):
    """Run `python -m module args` from the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def tokenizer_run(fashion_dir, tmp_path):
    from pipelines import fit_tokenizer

    fit_tokenizer.main([*TINY_TOKENIZER, "--epochs", "2", "--output-root", tmp_path / "runs", "--run-name", "tiny"])
    return tmp_path / "runs" / "tokenizer" / "tiny"


@pytest.fixture
def prior_run(tokenizer_run, tmp_path):
    """A tiny class-conditional prior run (label dropout, so guidance works) on the tiny tokenizer's maps."""
    from pipelines import fit_prior

    fit_prior.main([*TINY_PRIOR, "--tokenizer", tokenizer_run, "--output-root", tmp_path / "runs", "--run-name", "p",
                    "--condition", "class", "--label-dropout", "0.2"])
    return tmp_path / "runs" / "prior" / "p"


def kill_after_first_checkpoint(module, args, run_dir, env=None):
    """Start `python -m module args`, SIGKILL it as soon as its first checkpoint exists; returns its exit status."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    deadline = time.time() + 120
    while not (Path(run_dir) / "training_state.safetensors").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def resume_matches_uninterrupted(module, flags, stage_dir, files=("model.safetensors",)):
    """Kill `python -m module flags` (run "killed" under stage_dir) at its first checkpoint, resume it to the end,
    run the same flags uninterrupted (run "whole"), and assert the files are equal; returns both run dirs.
    The commands run in-process after the kill, so the environment is this process's (its thread count too)."""
    import importlib
    import signal

    killed, whole = Path(stage_dir) / "killed", Path(stage_dir) / "whole"
    # The killed process computes at this process's thread count: on some CPUs (AVX2) oneDNN's convolution weight
    # gradients sum in a thread-dependent order, and the resume and the uninterrupted run happen in this process.
    threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    assert kill_after_first_checkpoint(module, [*flags, "--run-name", "killed"], killed, threads) == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists(), "the run finished before it could be killed"
    main = importlib.import_module(module).main
    main(["--resume", killed])
    main([*flags, "--run-name", "whole"])
    for name in files:
        assert_same_weights(killed / name, whole / name)
    return killed, whole


def assert_same_weights(path_a, path_b):
    from safetensors.torch import load_file

    a, b = load_file(path_a), load_file(path_b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def logits_and_embedding(model, tokens, labels=None):
    """(the prior's logits, its token embedding output) with the embedding's gradient kept for inspection."""
    captured = []

    def keep_embedding(module, inputs, out):
        out.retain_grad()
        captured.append(out)

    hook = model.embed.register_forward_hook(keep_embedding)
    try:
        logits = model(tokens, labels)
    finally:
        hook.remove()
    return logits, captured[0]


def run_in_process(main, args, capsys):
    """Run a command's main(args) in-process the way `python -m` does (errors through pipelines.cli.run);
    returns (exit status, stdout lines, stderr lines)."""
    from pipelines import cli

    capsys.readouterr()
    try:
        cli.run(lambda: main(args), sys.modules[main.__module__].build_parser)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out.strip().splitlines(), captured.err.strip().splitlines()


# Small priors for the sampling tests ------------------------------------------------------------------------

def small_prior(arch="gated", h=7, w=7, num_classes=0, seed=0, **overrides):
    """A small untrained prior whose logits vary enough that a wrong cache would change the samples."""
    from prior import Prior, PriorConfig

    torch.manual_seed(seed)
    config = dict(arch=arch, codebook_size=16, grid_height=h, grid_width=w, embed_dim=8, hidden_channels=16,
                  num_layers=3, first_kernel_size=5, kernel_size=3, num_classes=num_classes)
    model = wake_attention(Prior(PriorConfig(**{**config, **overrides})))
    with torch.no_grad():
        model.head[-1].weight.mul_(4)
    return model


def wake_attention(model, seed=5):
    """A pixelsnail prior whose attention blocks do something: they start as the identity (a zero output
    projection), under which a test of them could not fail."""
    if getattr(model, "attentions", None) is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for attention in model.attentions:
                for weights in (attention.out.weight, attention.out.bias):
                    weights.copy_(torch.randn(weights.shape, generator=generator) * 0.5)
    return model


def seeded(seed=1):
    return torch.Generator().manual_seed(seed)


def generate(model, n, **kwargs):
    """prior.generate with the sampling settings named one by one (guidance_scale=2.0, ...), resolved into the
    SamplingConfig it takes as ImageGenerator.request resolves a user's (prior.sampling.resolve_sampling)."""
    from prior import generate as prior_generate
    from prior.sampling import SETTINGS, resolve_sampling

    chosen = {name: kwargs.pop(name) for name in SETTINGS if name in kwargs}
    return prior_generate(model, n, sampling=resolve_sampling(kwargs.get("labels"), **chosen), **kwargs)


def conditioned_prior(arch, num_classes=0, h=7, w=7, top=(4, 4), seed=0):
    """A small untrained prior conditioned on a token map (a two-level run's bottom prior), and maybe on classes."""
    from prior import Prior, PriorConfig

    torch.manual_seed(seed)
    return wake_attention(Prior(PriorConfig(arch=arch, codebook_size=16, grid_height=h, grid_width=w, embed_dim=8,
                                            hidden_channels=16, num_layers=3, first_kernel_size=5, kernel_size=3,
                                            num_classes=num_classes, condition_codebook_size=8,
                                            condition_height=top[0], condition_width=top[1])))


# A reference classifier that trains in under a second on the 256 synthetic images, to ~84% test accuracy.
TINY_CLASSIFIER_FLAGS = ["--width", "8", "--feature-dim", "16", "--classifier-epochs", "12",
                         "--classifier-batch-size", "32", "--classifier-learning-rate", "5e-3"]


# Mask geometry: which inputs an output reads -------------------------------------------------------------

def from_offsets(offsets, h, w):
    """dep[p, q] for a model whose output at (i, j) reads exactly the inputs (i + dy, j + dx), (dy, dx) in offsets."""
    dep = torch.zeros(h * w, h * w, dtype=torch.bool)
    for i, j in itertools.product(range(h), range(w)):
        for dy, dx in offsets:
            if 0 <= i + dy < h and 0 <= j + dx < w:
                dep[i * w + j, (i + dy) * w + j + dx] = True
    return dep


def masked_offsets(kernel_size, mask_type):
    """The taps a kxk mask keeps, as offsets from the centre: rows above in full, the centre row to the left."""
    p = kernel_size // 2
    above = {(dy, dx) for dy in range(-p, 0) for dx in range(-p, p + 1)}
    return above | {(0, dx) for dx in range(-p, 1 if mask_type == "B" else 0)}


def minkowski_sum(a, b):
    return {(ay + by, ax + bx) for ay, ax in a for by, bx in b}
