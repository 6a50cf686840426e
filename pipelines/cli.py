"""The one place that turns config dataclasses into flags and a user's mistake into one line on stderr."""

import argparse
import dataclasses
import sys
import typing

from prior.sampling import NO_LABEL, SamplingConfig


def add_config_flags(parser, config_cls, title, skip=(), defaults=None):
    """One --kebab-case flag per dataclass field, with the field's metadata help and its default.

    defaults: {field: value} for a command whose defaults differ from the dataclass's (the prior trains longer).
    """
    defaults = defaults or {}
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = hints[f.name]
        default = defaults.get(f.name, f.default)
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=help_text)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(flag, dest=f.name, type=kind, default=default, choices=choices,
                               help=f"{help_text} (default: {default})")
    return group


def add_renamed_flag(parser, former, now):
    """Accept the former spelling of a flag only to say, in one line, what it is called now."""
    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{former} is now {now}")

    parser.add_argument(former, action=Renamed, nargs="?", help=argparse.SUPPRESS)


def add_run_flags(parser, stage, resume_note="other flags are ignored"):
    """The flags every training command shares: where runs go, the new run's name, and --resume."""
    run = parser.add_argument_group("run")
    run.add_argument("--output-root", default="checkpoints",
                     help=f"runs go to OUTPUT_ROOT/{stage}/RUN_NAME (default: checkpoints)")
    run.add_argument("--run-name", default=None, help="name of the new run (default: a timestamp)")
    run.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help=f"continue a killed run from its last checkpoint, with the config it was started with "
                          f"({resume_note})")
    return run


def add_sampling_flags(parser):
    """The flags of how tokens are drawn, shared with pipelines.evaluate; their defaults are SamplingConfig's."""
    defaults = SamplingConfig()
    p = parser.add_argument
    p("--temperature", type=float, default=None,
      help=f"divide the logits by this; < 1 is more conservative (default: {defaults.temperature})")
    p("--top-k", type=int, default=None,
      help=f"sample only among the k likeliest tokens (default: {defaults.top_k or 'all'})")
    p("--top-p", type=float, default=None,
      help=f"nucleus sampling: the likeliest tokens holding this mass (default: {defaults.top_p or 'off'})")
    p("--label", default=None,
      help=f"class to sample, by index or by name, for a class-conditional prior; {NO_LABEL!r} samples it with "
           "no label (default: classes in the mix of the training split, e.g. a class-balanced mosaic)")
    p("--guidance-scale", type=float, default=None,
      help="classifier-free guidance s: uncond + s * (cond - uncond), for a class-conditional prior trained "
           f"with label dropout (default: {defaults.guidance_scale} where there are labels, else 1)")


def config_from_args(config_cls, args, **overrides):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    values.update(overrides)
    return config_cls(**values)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors follow the same rule as ours: one line on stderr, exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def run(main):
    """Call main(); a ValueError or OSError from bad input becomes one line on stderr and exit status 2."""
    try:
        main()
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        sys.stderr.write(f"error: {message}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
