"""The one place for flags: every flag that two commands share is declared here, once, with one meaning, and config
dataclasses become flags here; and the one error boundary, where a user's mistake becomes one line on stderr."""

import argparse
import dataclasses
import os
import re
import sys
import time
import typing
from pathlib import Path

import torch
import tqdm.std

from pipelines.flag_help import CHOICES, HELP
from prior.sampling import NO_LABEL, SCHEDULES, SETTINGS, SamplingConfig, check_first, describe_schedule
from store.images import DEBIAN_FASHION_MNIST_DIR, DataConfig
from training import MAX_SEED, TrainConfig

# ------------------------------------------------------------------------------------------------- value types


def positive_int(text):
    """An argparse type: an integer >= 1."""
    return _int_in(text, 1, None, "a positive integer")


def non_negative_int(text):
    return _int_in(text, 0, None, "an integer >= 0")


def position_or_fraction(text):
    """An argparse type: a position (an integer >= 0) or a fraction of the grid in (0, 1), as
    prior.sampling.check_first takes them."""
    for number in (int, float):
        try:
            value = number(text)
            break
        except ValueError:
            value = text
    try:
        check_first("guidance_from", value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a position (an integer >= 0) or a fraction in (0, 1), not {text!r}") from None
    return value


def seed(text):
    """An argparse type: a seed torch's generators take, 0 .. 2**64 - 1."""
    return _int_in(text, 0, MAX_SEED, "an integer from 0 to 2**64 - 1")


def number_or_ramp(text):
    """An argparse type: one number (a constant), or START:END, a setting that changes along the grid."""
    try:
        ends = tuple(float(part) for part in text.split(":"))
    except ValueError:
        ends = ()
    if len(ends) not in (1, 2):
        raise argparse.ArgumentTypeError(f"must be a number or START:END, not {text!r}")
    return ends[0] if len(ends) == 1 else ends


def _int_in(text, low, high, what):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text}")
    return value


# -------------------------------------------------------------------------------------------- config dataclasses


def add_config_flags(parser, config_cls, title, skip=(), only=None, defaults=None):
    """One --kebab-case flag per dataclass field (only those named in `only`, if given), with its help and choices
    (pipelines.flag_help) and the field's default.

    defaults: {field: value} for a command whose defaults differ from the dataclass's (the prior trains longer).
    """
    defaults = defaults or {}
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = HELP[config_cls.__name__][f.name]
        kind = hints[f.name]
        default = defaults.get(f.name, f.default)
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=help_text)
        else:
            choices = CHOICES.get(config_cls.__name__, {}).get(f.name)
            group.add_argument(flag, dest=f.name, type=kind, default=default, choices=choices,
                               help=f"{help_text} (default: {default})")
    return group


def config_values(config_cls, args, skip=()):
    """The values of config_cls's fields among args (add_config_flags' flags), but those in skip."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
            if hasattr(args, f.name) and f.name not in skip}


def config_from_args(config_cls, args, **overrides):
    return config_cls(**{**config_values(config_cls, args), **overrides})


def add_renamed_flag(parser, former, now):
    """Accept the former spelling of a flag only to say, in one line, what it is called now."""
    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{former} is now {now}")

    parser.add_argument(former, action=Renamed, nargs="?", help=argparse.SUPPRESS)


# ------------------------------------------------------------------------------------------ runs and outputs


def add_output_root_flag(parser):
    parser.add_argument("--output-root", default="checkpoints",
                        help="the folder of runs: new runs, samples, reports and reference classifiers go under it "
                             "(OUTPUT_ROOT/<stage>/<name>), and a run not named is the newest found there "
                             "(default: checkpoints)")


def add_run_flags(parser):
    """The flags every training command shares: where runs go, the new run's name, and --resume."""
    run = parser.add_argument_group("run")
    add_output_root_flag(run)
    run.add_argument("--run-name", default=None, help="name of the new run (default: a timestamp)")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue a killed run from its last checkpoint, with the config it was started with "
                          "(other flags are ignored)")
    return run


def add_run_choice_flag(parser, stage, use, default=None):
    """--tokenizer or --prior: the run a command reads, a folder or a Hugging Face Hub repository id; default None
    makes the flag required."""
    parser.add_argument(f"--{stage}", metavar="RUN", required=default is None, default=None,
                        help=f"the {stage} run to {use}: a run folder, or a Hugging Face Hub repository id "
                             "(owner/name[@revision]) holding one, fetched into the Hugging Face cache"
                             + (f" (default: {default})" if default else ""))


def add_output_flags(parser, kind=None, required=None):
    """--out and --overwrite; with kind, --out defaults to a new OUTPUT_ROOT/<kind>/<time> (output_folder()); without,
    it is required unless told (required=False: a command that writes a folder only when asked)."""
    parser.add_argument("--out", metavar="DIR", required=kind is None if required is None else required, default=None,
                        help="output folder, written whole or not at all; never one of the command's inputs, nor a "
                             "folder holding one" + (f" (default: a new OUTPUT_ROOT/{kind}/<time>)" if kind else ""))
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it is a folder that exists already (default: refuse)")


def output_folder(args, kind):
    """The --out of add_output_flags(parser, kind): as given, or a new OUTPUT_ROOT/<kind>/<time>."""
    return Path(args.out) if args.out else Path(args.output_root) / kind / time.strftime("%Y%m%d-%H%M%S")


def add_data_flags(parser, skip=()):
    """The data set's flags (DataConfig); FASHION_MNIST_DIR in the environment moves --fashion-mnist-dir's default
    (the tests point it at small synthetic files)."""
    defaults = {"fashion_mnist_dir": os.environ.get("FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR)}
    return add_config_flags(parser, DataConfig, "data", skip=skip, defaults=defaults)


# ---------------------------------------------------------------------------------------- work and sampling


def add_batch_size_flag(parser, items, default):
    parser.add_argument("--batch-size", type=positive_int, default=default,
                        help=f"{items} at once (default: {default})")


def add_mosaic_flag(parser, default=64):
    parser.add_argument("--mosaic", type=positive_int, default=default,
                        help=f"images shown in grid.png, the first ones, enlarged (default: {default})")


def add_mixed_precision_flag(parser, default):
    add_config_flags(parser, TrainConfig, "precision", only=("mixed_precision",),
                     defaults={"mixed_precision": default})


def add_sample_count_flag(parser, default):
    # torchrun's own parser takes --n for an abbreviation of one of its flags: --num-samples there.
    parser.add_argument("--n", "--num-samples", "--n-samples", dest="n_samples", type=positive_int, default=default,
                        help=f"number of samples; under torchrun write --num-samples (default: {default})")


def add_sampling_flags(parser):
    """The flags of what is drawn and how, shared by sample and evaluate (the demo's page has the same choices);
    their defaults are SamplingConfig's, and sampling_settings(args) hands them on."""
    defaults = SamplingConfig()
    p = parser.add_argument
    p("--seed", type=seed, default=0,
      help="sampling seed: the same seed, --n and --batch-size on the same device give the same samples (default: 0)")
    temperature = describe_schedule(defaults.temperature, defaults.temperature_schedule)
    p("--temperature", type=number_or_ramp, default=None,
      help="divide the logits by this; < 1 is more conservative; START:END changes it along the grid "
           f"(--temperature-schedule) (default: {temperature})")
    p("--temperature-schedule", choices=SCHEDULES, default=None,
      help="how a --temperature START:END goes from START at the first position to END at the last (default: "
           f"{defaults.temperature_schedule}, or linear for START:END)")
    p("--top-k", type=int, default=None,
      help=f"sample only among the k likeliest tokens (default: {defaults.top_k or 'all'})")
    p("--top-p", type=float, default=None,
      help=f"nucleus sampling: the likeliest tokens holding this mass (default: {defaults.top_p or 'off'})")
    p("--label", default=None,
      help=f"class to sample, by index or by name, for a class-conditional prior; {NO_LABEL!r} samples it with "
           "no label (default: classes in the mix of the training split, e.g. a class-balanced mosaic)")
    add_guidance_flags(parser)


def add_guidance_flags(parser):
    """--guidance-scale, --guidance-schedule and --guidance-from (part of add_sampling_flags; alone for a sampler of
    another model that takes only these)."""
    defaults = SamplingConfig()
    p = parser.add_argument
    guidance = describe_schedule(defaults.guidance_scale, defaults.guidance_schedule, defaults.guidance_from).replace(
        "%", "%%")  # argparse formats help with %
    p("--guidance-scale", type=number_or_ramp, default=None,
      help="classifier-free guidance s: uncond + s * (cond - uncond), for a class-conditional prior trained with "
           "label dropout; one number for every position, or START:END rising (or falling) along the grid in "
           "raster order, as --guidance-schedule says; given without --guidance-from, it guides from the first "
           f"position (default: {guidance} where there are labels, else 1)")
    p("--guidance-schedule", choices=SCHEDULES, default=None,
      help="how a --guidance-scale START:END goes from START at the first position to END at the last: linear, or "
           "cosine (a half-cosine: flat at both ends) (default: "
           f"{defaults.guidance_schedule if defaults.guidance_schedule != 'constant' else 'linear'} for START:END, "
           "constant for one number)")
    p("--guidance-from", type=position_or_fraction, default=None,
      help="the first guided position (raster order, 0 = the top-left token; a completion counts from the grid's "
           "start too), or a fraction of the grid in (0, 1) (0.4: the first 40%% of the positions, on a grid of any "
           "size): positions before it are drawn unguided, and the schedule runs from it to the last (default: "
           f"{defaults.guidance_from} with the default --guidance-scale, else 0)")


def sampling_settings(args):
    """The sampling settings of add_sampling_flags' (or add_guidance_flags') flags, None where not given
    (SamplingConfig's defaults)."""
    return {name: getattr(args, name) for name in SETTINGS if hasattr(args, name)}


# --------------------------------------------------------------------------------------------- errors


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors follow the same rule as ours: one line on stderr, exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def run(main, build_parser=None):
    """Call main(); a ValueError or OSError from bad input, or memory that ran out, becomes one line on stderr and
    exit status 2, in the command's words (in_flags: the parser build_parser() makes, only then, names the command's
    flags). Under torchrun the process group is ended on the way out, whatever happened: after work that went well,
    once every process has finished its own (end_processes)."""
    try:
        main()
        end_processes(finished=True)
    except (ValueError, OSError) as error:
        fail(in_flags(one_line(error) or type(error).__name__, build_parser and build_parser()))
    except (MemoryError, RuntimeError) as error:
        if not ran_out_of_memory(error):
            raise
        fail(f"out of memory ({one_line(error)[:200] or type(error).__name__}): lower --batch-size or the count")
    except KeyboardInterrupt:
        close_progress_bars()
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    finally:
        end_processes(finished=False)


def end_processes(finished):
    """End this process's part in a torchrun/accelerate process group, if it has one. finished: the command's work
    went well in this process, so every other one reaches this point too: they wait here for each other, and no
    process closes its connections while another still works (the main one writes the files last, for seconds),
    which gloo's event thread in the process still working may meet as "connection closed by peer" and abort on
    (SIGABRT, more likely the busier the CPU). Then the group is destroyed while the interpreter is whole: left to
    the interpreter's exit, gloo's worker threads can be torn down while joinable (std::terminate, SIGABRT)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if finished and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def ran_out_of_memory(error):
    """An allocation that failed anyway (the estimates made before any work are estimates): MemoryError, torch's
    OutOfMemoryError, or the RuntimeError of torch's CPU allocator."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or any(
        phrase in str(error) for phrase in ("can't allocate memory", "out of memory"))


def in_flags(message, parser):
    """A library's error in a command's words: the libraries name an argument or config field in backticks
    (`image_size`), and each becomes the flag of parser that sets it (--image-size), or the bare name where the
    command has no such flag. The one place where the libraries' words meet the flags."""
    flags = {action.dest: action.option_strings[0] for action in (parser._actions if parser else ())
             if action.option_strings}
    return re.sub(r"`(\w+)`", lambda name: flags.get(name[1], name[1]), message)


def one_line(error):
    return " ".join(str(error).split())


def fail(message):
    close_progress_bars()
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def close_progress_bars():
    """Close the progress bars still drawn, so that the line that follows starts a line of its own: a loop left by
    an error or a Ctrl-C leaves its bar open (drawn without a newline) until its frame is freed, after the message."""
    for bar in list(tqdm.std.tqdm._instances):  # every live bar of every tqdm kind; tqdm.write reads the same set
        bar.close()
