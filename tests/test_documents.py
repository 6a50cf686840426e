"""What the documents name exists: every `python -m` module, every flag (and a flag given to a command is one of that
command's), and every file or folder of the repository that README.md, BENCHMARKS.md, DESIGN.md and docs/*.md name.
A renamed flag or a moved file that the documents still name fails here."""

import importlib
import importlib.util
import re

import pytest

from conftest import REPO

DOCUMENTS = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "DESIGN.md", *sorted((REPO / "docs").glob("*.md"))]
COMMANDS = ["fit_tokenizer", "fit_prior", "sample", "evaluate", "encode", "decode", "card", "demo"]
# Flags of other programs the documents show (pip, torchrun, accelerate, pytest, hf).
OTHER_PROGRAMS_FLAGS = {"--nproc_per_node", "--nproc-per-node", "--only-binary", "--mixed_precision", "--num_processes",
                        "--no-deps", "--upgrade", "--index-url", "--extra-index-url", "--help", "--version",
                        "--pre", "--repo-type", "--token", "--durations", "--maxfail", "--num-processes",
                        "--exclude", "--logdir"}
# A flag: not part of a word or of an arrow drawn in text (images --encoder--> z).
FLAG = r"(?<![\w<-])(--[a-z][a-z0-9_-]*[a-z0-9])(?![\w>-])"
TOP_LEVEL = {p.name for p in REPO.iterdir() if not p.name.startswith(".")} | {".ci"}


def text_of(page):
    # Commands continued over lines with a backslash read as one line.
    return re.sub(r"\\\n\s*", " ", page.read_text())


def command_flags():
    """{command: its flags} of the pipelines, from their own parsers."""
    flags = {}
    for name in COMMANDS:
        parser = importlib.import_module(f"pipelines.{name}").build_parser()
        flags[name] = {flag for action in parser._actions for flag in action.option_strings}
    return flags


def declared_flags():
    """Every flag the repository declares: the pipelines' parsers, and the literals of the benchmarks' parsers."""
    flags = set().union(*command_flags().values())
    for source in (REPO / "bench").glob("*.py"):
        flags |= set(re.findall(r"""["'](--[a-z][a-z0-9-]*)["']""", source.read_text()))
    return flags


@pytest.mark.parametrize("page", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_module_a_document_runs_exists(page):
    modules = set(re.findall(r"python3? -m ([A-Za-z_][\w.]*\w)", text_of(page)))
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"{page.name} runs modules that do not exist: {missing}"


@pytest.mark.parametrize("page", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_flag_a_document_names_exists_and_belongs_to_its_command(page):
    text, flags_of = text_of(page), command_flags()
    known = declared_flags() | OTHER_PROGRAMS_FLAGS
    named = set(re.findall(FLAG, text))
    unknown = sorted(named - known)
    assert not unknown, f"{page.name} names flags nothing declares: {unknown}"
    wrong = []
    for command, rest in re.findall(r"python -m pipelines\.(\w+)([^\n`|;&#]*)", text):
        given = set(re.findall(FLAG, rest))
        wrong += [f"pipelines.{command} {flag}" for flag in sorted(given - flags_of.get(command, set()))]
    assert not wrong, f"{page.name} gives commands flags they do not have: {wrong}"


@pytest.mark.parametrize("page", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_repository_file_a_document_names_exists(page):
    paths = set()
    for quoted in re.findall(r"`([^`\s]+)`|\]\(([^)\s]+)\)", page.read_text()):
        named = next(q for q in quoted if q).split("#")[0]
        path, first = named.rstrip("/"), named.split("/")[0]
        # Files (a name with a suffix) and folders (a trailing /) of this repository; checkpoints/ holds the runs
        # commands make, except the shipped generator. (A run's own files, prior/ours, are not the repository's.)
        if not (named.endswith("/") or re.search(r"\.[a-z]+$", path)):
            continue
        if first in TOP_LEVEL and first != "checkpoints" or path.startswith("checkpoints/fashion-mnist"):
            if not re.search(r"[<>*{}]|RUN|NAME|\.\.\.", path):
                paths.add(path)
    base = page.parent
    missing = sorted(p for p in paths if not (REPO / p).exists() and not (base / p).exists())
    assert not missing, f"{page.name} names files that do not exist: {missing}"


def test_the_shipped_generators_figures_in_the_documents_are_its_cards():
    """The figures of the shipped generator have one source, its model card: the documents quote them rounded."""
    card = (REPO / "checkpoints" / "fashion-mnist" / "README.md").read_text()

    def row(label):
        cells = re.search(rf"^\| {re.escape(label)} \| ([^|]+) \| ([^|]+) \|$", card, flags=re.M).groups()
        return [cell.strip() for cell in cells]

    sample_fd = [f"{float(v):.2f}" for v in row("Frechet distance, samples vs test")]
    reconstruction_fd = f"{float(row('Frechet distance, reconstructions vs test')[0]):.2f}"
    floor = row("Frechet distance, train vs test")[0]
    accuracy = row("classifier accuracy on samples")
    sharing = (REPO / "docs" / "sharing.md").read_text().replace("\n", " ")
    quoted = re.search(r"distance of ([\d.]+) / ([\d.]+) to the test split .*?against ([\d.]+) for its "
                       r"reconstructions and ([\d.]+) for the training split itself; ([\d.]+%) / ([\d.]+%) of them",
                       sharing)
    assert quoted, "docs/sharing.md no longer quotes the shipped generator's figures where this test reads them"
    assert list(quoted.groups()) == [*sample_fd, reconstruction_fd, floor, *accuracy]
    benchmarks = (REPO / "BENCHMARKS.md").read_text()
    shipped = re.search(r"^\| sample Frechet distance \(constant 1\.5 on this machine: [^|]*\| \*\*([\d.]+)\*\* \| "
                        r"\*\*([\d.]+)\*\* \|$", benchmarks, flags=re.M)
    assert shipped and list(shipped.groups()) == row("Frechet distance, samples vs test"), "BENCHMARKS.md differs"
    assert f"{sample_fd[0]} / {sample_fd[1]} on the shipped generator" in benchmarks.replace("\n", " ")


def test_every_benchmark_table_says_its_run():
    """Each table of BENCHMARKS.md is dated: a `Run:` line before it gives its command, commit, date, machine and
    seconds."""
    lines = (REPO / "BENCHMARKS.md").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and not lines[i - 1].startswith("|")]
    assert len(starts) > 20
    for start in starts:
        run = lines[start - 2]
        assert run.startswith("Run: ") and lines[start - 1] == "", (start + 1, lines[start])
        assert re.search(r"commits? [0-9a-f]{7}", run) and re.search(r"\b2026-\d\d-\d\d\b", run), run
        assert "cores" in run and re.search(r"\d s\b|seconds", run), run
