"""The documentation's Python blocks (the README's and docs/*.md's) run as written: each is executed, page by page, in a
folder laid out as a clone is (the shipped generator at checkpoints/fashion-mnist), after the commands the library
page's last block names have written their files (with the synthetic data and tiny flags), so that the
documentation cannot drift from the code."""

import re

import pytest

from conftest import REPO, TINY_TOKENIZER, labelled_image_folder, run_module

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [(page.relative_to(REPO), block) for page in DOCUMENTS
          for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A working folder with the shipped generator where a clone has it, and what the last block reads: a tokenizer
    run named t with its maps, and encode's output of an image folder with --sequences; the working directory
    while the blocks run."""
    import os

    from conftest import make_fashion_dir

    work = tmp_path_factory.mktemp("readme")
    (work / "checkpoints").mkdir()
    (work / "checkpoints" / "fashion-mnist").symlink_to(REPO / "checkpoints" / "fashion-mnist")
    env = {"FASHION_MNIST_DIR": str(make_fashion_dir(work / "synthetic-fashion-mnist"))}
    made = run_module("pipelines.fit_tokenizer", *TINY_TOKENIZER, "--epochs", "1", "--run-name", "t",
                      "--output-root", work / "checkpoints", env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    labelled_image_folder(work / "my_images", 6)
    encoded = run_module("pipelines.encode", "--tokenizer", work / "checkpoints" / "fashion-mnist", "--images",
                         work / "my_images", "--out", work / "tokens", "--sequences", env=env)
    assert encoded.returncode == 0, encoded.stderr[-3000:]
    # A reference classifier made beforehand, small and quick (the evaluation block trains the default one
    # otherwise: a minute of the suite for a figure nobody reads here).
    from evaluation.classifier import ClassifierConfig
    from evaluation.reference import ClassifierTrainConfig, load_or_train_classifier
    from store.images import DataConfig

    load_or_train_classifier(DataConfig(), work / "checkpoints", model_config=ClassifierConfig(width=4, feature_dim=8),
                             train_config=ClassifierTrainConfig(classifier_epochs=1, classifier_batch_size=256),
                             progress=False)
    before = os.getcwd()
    os.chdir(work)
    yield work
    os.chdir(before)


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_each_python_block_of_the_documentation_runs_as_written(clone, number):
    page, block = BLOCKS[number]
    exec(compile(block, f"{page}, Python block {number}", "exec"), {"__name__": "readme"})


def test_the_documentation_shows_the_library():
    assert len(BLOCKS) >= 6 and any("ImageGenerator" in block for _, block in BLOCKS)
