"""pipelines.cli: the one place for flags and the one error boundary. Value types refuse in one line, a renamed
flag names its new spelling, a shared flag is declared once with one meaning, and memory that runs out is one line,
while a bug still ends in its traceback."""

import pytest
import torch

from pipelines import card, cli, decode, encode, evaluate, fit_prior, fit_tokenizer, sample

COMMANDS = {"fit_tokenizer": fit_tokenizer, "fit_prior": fit_prior, "sample": sample, "evaluate": evaluate,
            "encode": encode, "decode": decode, "card": card}


def parse_error(parser, args, capsys):
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("flag,value,message", [
    ("--n", "0", "must be a positive integer, not 0"), ("--n", "two", "must be a positive integer, not 'two'"),
    ("--batch-size", "-3", "must be a positive integer, not -3"),
    ("--seed", str(2**64), "must be an integer from 0 to 2**64 - 1"), ("--seed", "-1", "from 0 to 2**64 - 1"),
    ("--keep-rows", "-1", "must be an integer >= 0, not -1"),
])
def test_value_types_refuse_in_one_line(flag, value, message, capsys):
    assert message in parse_error(sample.build_parser(), [flag, value], capsys)
    assert sample.build_parser().parse_args(["--seed", str(2**64 - 1)]).seed == 2**64 - 1


@pytest.mark.parametrize("command,former,now", [("fit_tokenizer", "--ema-decay", "--codebook-ema-decay"),
                                                ("fit_prior", "--ema-decay", "--weight-ema-decay"),
                                                ("card", "--export", "--out"), ("evaluate", "--images", "--samples")])
def test_a_renamed_flag_names_its_new_spelling(command, former, now, capsys):
    parser = COMMANDS[command].build_parser()
    assert parse_error(parser, [former, "0.9"], capsys).endswith(f"error: {former} is now {now}")
    assert former not in parser.format_help()


# Flags two or more commands share, each declared once in cli.py: every command describes them in the same words
# (a command may only default them otherwise). Flags of "what this command works on" (--tokenizer, --prior,
# --batch-size, --split) are declared once too, with the command's subject in their help.
DECLARED_ONCE = {"--out", "--overwrite", "--output-root", "--run-name", "--resume", "--mosaic", "--fashion-mnist-dir",
                 "--data-dir", "--image-size", "--mixed-precision", "--n", "--num-samples", "--n-samples", "--seed",
                 "--temperature", "--top-k", "--top-p", "--label", "--guidance-scale"}


def test_a_flag_shared_by_commands_has_one_meaning_in_all():
    import re

    helps = {}
    for name, module in COMMANDS.items():
        for action in module.build_parser()._actions:
            for flag in action.option_strings:
                helps.setdefault(flag, {})[name] = re.sub(r" \(default: [^)]*\)$", "", action.help)
    shared = {flag for flag, texts in helps.items() if len(texts) > 1}
    assert DECLARED_ONCE <= shared
    differing = {flag: texts for flag, texts in helps.items() if flag in DECLARED_ONCE and len(set(texts.values())) > 1}
    # The fits' --seed seeds training, sample's and evaluate's the draw: the commands' own randomness each.
    assert set(differing) <= {"--seed"} and len(set(helps["--seed"][c] for c in ("sample", "evaluate"))) == 1
    assert "auto" in [a for a in sample.build_parser()._actions if "--mixed-precision" in a.option_strings][0].choices


@pytest.mark.parametrize("error,status", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 80000000000 bytes"), 2),
    (MemoryError(), 2), (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), 2),
    (ValueError("a bad\nvalue"), 2),
])
def test_the_error_boundary_turns_user_errors_and_exhausted_memory_into_one_line(error, status, capsys):
    def main():
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli.run(main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == status and len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.parametrize("error,status,message", [(KeyboardInterrupt(), 130, "interrupted"),
                                                  (ValueError("a bad value"), 2, "error: a bad value")])
def test_the_last_word_starts_a_line_of_its_own_while_a_progress_bar_is_drawn(error, status, message, capsys):
    """A bar that the traceback still holds (a Ctrl-C landing while the bar is made, say) stays drawn, without a
    newline, until the traceback is freed; the message must not follow it on the bar's line."""
    from tqdm.auto import tqdm

    def main():
        bar = tqdm(total=8, desc="encode train", leave=False)
        bar.update(1)  # drawn; this frame, which the traceback holds, holds the bar
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli.run(main)
    assert exit_.value.code == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_a_library_error_reads_in_library_words_and_a_command_error_in_flags(tmp_path, capsys):
    """The libraries name an argument as the code does (`image_size`); the commands say the flag that sets it
    (--image-size), through cli.in_flags alone, and a name that is no flag of the command stays a name."""
    from tokenizer.model import TokenizerConfig

    with pytest.raises(ValueError) as library:
        TokenizerConfig(image_size=30, downsample=4)
    assert "`image_size` 32" in str(library.value) and "another `downsample`" in str(library.value)
    assert "--" not in str(library.value)
    with pytest.raises(SystemExit):
        cli.run(lambda: fit_tokenizer.main(["--image-size", "30", "--output-root", str(tmp_path)]),
                fit_tokenizer.build_parser)
    line = capsys.readouterr().err.strip()
    assert "pass --image-size 32" in line and "another --downsample" in line and "`" not in line
    assert not list(tmp_path.iterdir())  # refused before any run folder
    parser = sample.build_parser()
    assert cli.in_flags("`top_k` must be 1..16, `n_samples` too; `prefix` is no flag", parser) == \
        "--top-k must be 1..16, --n too; prefix is no flag"
    assert cli.in_flags("`top_k` must be 1..16", None) == "top_k must be 1..16"


def test_every_config_flag_has_one_line_help_and_the_libraries_name_no_flag():
    """Flag help lives with the flags (pipelines.flag_help), for every field of every config a command offers;
    the libraries' files show a flag only inside a whole command line (a model card's `python -m ...`)."""
    import dataclasses
    import re
    from pathlib import Path

    from evaluation.classifier import ClassifierConfig
    from evaluation.reference import ClassifierTrainConfig
    from pipelines.flag_help import CHOICES, HELP
    from prior import PriorConfig
    from store.images import DataConfig
    from tokenizer.losses import TokenizerLossConfig
    from tokenizer.model import TokenizerConfig
    from training import TrainConfig

    configs = [DataConfig, TrainConfig, TokenizerConfig, TokenizerLossConfig, PriorConfig, ClassifierConfig,
               ClassifierTrainConfig]
    assert set(HELP) == {config.__name__ for config in configs} and set(CHOICES) <= set(HELP)
    for config in configs:
        texts = HELP[config.__name__]
        assert set(texts) == {f.name for f in dataclasses.fields(config)}, config.__name__
        assert all(text and "\n" not in text for text in texts.values()), config.__name__
        assert set(CHOICES.get(config.__name__, {})) <= set(texts)
    assert "gated" in HELP["PriorConfig"]["arch"] and "pixelcnn" in HELP["PriorConfig"]["arch"]
    root = Path(__file__).resolve().parent.parent
    named = [f"{path.relative_to(root)}:{number}" for package in ("store", "training", "tokenizer", "prior",
                                                                    "generation", "evaluation")
             for path in sorted((root / package).glob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"(?<![\w-])--[a-z]", line) and "python -m pipelines." not in line]
    assert not named


def test_a_bug_is_not_hidden():
    def main():
        raise RuntimeError("shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        cli.run(main)


@pytest.mark.parametrize("outcome", ["returns", "fails"])
def test_the_process_group_is_ended_on_the_way_out(outcome, tmp_path):
    # Left to the interpreter's exit, gloo's threads sometimes abort the process (SIGABRT after every file was
    # written): the boundary ends the group itself, after a user error too.
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        def main():
            if outcome == "fails":
                raise ValueError("bad input")

        if outcome == "fails":
            with pytest.raises(SystemExit):
                cli.run(main)
        else:
            cli.run(main)
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


ENDS_TOGETHER = """
import sys, time
from pathlib import Path
import torch
from pipelines import cli

rank, folder = int(sys.argv[1]), Path(sys.argv[2])
torch.distributed.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)

def main():
    if rank == 0:  # the main process writes its files for a while after the others are done
        time.sleep(1.5)
        (folder / "main-done").write_text(str(time.time()))

cli.run(main)
(folder / f"rank{rank}-ended").write_text(str(time.time()))
"""


def test_the_processes_of_a_group_end_together_after_work_that_went_well(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    ranks = [subprocess.Popen([sys.executable, "-c", ENDS_TOGETHER, str(rank), str(tmp_path)], cwd=REPO)
             for rank in (0, 1)]
    assert [process.wait(timeout=120) for process in ranks] == [0, 0]
    # No process tears the group down while another still works: the idle one ends after the main one's work.
    assert float((tmp_path / "rank1-ended").read_text()) >= float((tmp_path / "main-done").read_text())
