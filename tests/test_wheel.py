"""The wheel is the product: `pip wheel .` builds one that holds the shipped generator and no bench; installed into a
venv of its own and run from an empty folder, away from the clone, it samples from the shipped generator with no
training, answers --help for every command, and trains a tokenizer on Fashion-MNIST downloaded from a stand-in mirror
(no Debian files named). Offline: the wheel is built without build isolation, and the venv reads the dependencies
(torch...) of the interpreter running the tests through a .pth line, never the clone's own packages; the wheel is
installed by the venv's own pip with --no-deps --no-index."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import fake_mirror
from conftest import REPO, TINY_TOKENIZER
from store.images import DEBIAN_FASHION_MNIST_DIR

COMMANDS = ("fit_tokenizer", "fit_prior", "sample", "evaluate", "encode", "decode", "card", "demo")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the wheel, the venv's python, an empty working folder, the environment to run in)."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the source: setuptools builds in the tree it is given (build/, *.egg-info), and the copy
    # leaves out what a clone's user made (runs under checkpoints/, the venv).
    source = root / "source"
    shutil.copytree(REPO, source, ignore=lambda folder, names: [
        name for name in names if name in (".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache")
        or name.endswith(".egg-info") or (Path(folder) == REPO / "checkpoints" and name != "fashion-mnist")])
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(root / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("vqprior-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=300)  # pip: bundled
    python = root / "venv" / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies of the interpreter running the tests, after the venv's own packages (the .pth files of that
    # folder, the clone's editable install among them, are not read: a plain path line adds the folder alone).
    dependencies = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    (root / "venv-deps.pth").write_text("\n".join(dict.fromkeys(dependencies)) + "\n")
    os.replace(root / "venv-deps.pth", os.path.join(venv_site, "deps.pth"))
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = root / "empty"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "FASHION_MNIST_DIR")}
    return wheel, python, work, env


def run(installed, *args, timeout=600):
    _, python, work, env = installed
    return subprocess.run([str(python), *map(str, args)], cwd=work, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_the_wheel_holds_the_shipped_generator_and_no_bench(installed):
    wheel = installed[0]
    names = zipfile.ZipFile(wheel).namelist()
    shipped = [name for name in names if name.startswith("generation/shipped/fashion-mnist/")]
    assert {"generation/shipped/fashion-mnist/model_ema.safetensors",
            "generation/shipped/fashion-mnist/tokenizer/model.safetensors",
            "generation/shipped/fashion-mnist/tokenizer/maps/meta.json"} <= set(shipped)
    assert not [name for name in names if name.startswith(("bench/", "tests/"))]
    assert any(name.endswith("licenses/LICENSE") or name.endswith("/LICENSE") for name in names)
    assert wheel.stat().st_size < 10 * 2**20
    where = run(installed, "-c", "import generation.pretrained as p, pipelines; print(p.SHIPPED_GENERATOR); "
                                 "print(pipelines.__file__)")
    assert where.returncode == 0, where.stderr
    shipped_dir, package = where.stdout.split()
    assert str(REPO) not in shipped_dir and str(REPO) not in package, "the clone was imported, not the wheel"
    assert run(installed, "-c", "import bench").returncode != 0


def test_the_installed_wheel_samples_from_the_shipped_generator(installed):
    work = installed[2]
    result = run(installed, "-m", "pipelines.sample", "--n", 64, "--out", "samples")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using the shipped Fashion-MNIST generator" in result.stderr
    assert len(list((work / "samples" / "images").glob("*.png"))) == 64 and (work / "samples" / "grid.png").is_file()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(installed, command):
    result = run(installed, "-m", f"pipelines.{command}", "--help")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"usage: python -m pipelines.{command}")


def test_the_installed_wheel_trains_on_fashion_mnist_downloaded_from_a_mirror(installed, tmp_path):
    server, url, requests = fake_mirror.serve(DEBIAN_FASHION_MNIST_DIR)
    try:
        # All 70,000 images, shrunk to 8x8 and in large batches: the whole command in seconds.
        result = run(installed, "-m", "pipelines.fit_tokenizer", *TINY_TOKENIZER, "--epochs", 1, "--run-name", "t",
                     "--image-size", 8, "--batch-size", 1024, "--fashion-mnist-dir", tmp_path / "no-debian-files",
                     "--fashion-mnist-mirror", url)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-3000:]
    work = installed[2]
    assert sorted(p.name for p in (work / "data" / "fashion-mnist").iterdir()) == sorted(requests)
    assert (work / "checkpoints" / "tokenizer" / "t" / "maps" / "train_maps.npy").is_file()
