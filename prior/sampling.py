"""What a user's sampling request means for a prior run: the settings the measurements chose, and, for a
class-conditional prior told no class, classes in the mix of the training split.

`python -m pipelines.sample` and `python -m pipelines.evaluate` both resolve their requests here (through
generation.ImageGenerator), so an evaluation scores exactly what `sample` with no flags gives. The defaults come
from the sweep in BENCHMARKS.md ("Sample quality: the levers").
"""

import numbers
from dataclasses import dataclass

import torch

# What --label takes to sample a conditional prior with "no label" (the unconditional half of guidance).
NO_LABEL = "none"


@dataclass
class SamplingConfig:
    """How logits become tokens. guidance_scale applies only where labels are given (a conditional prior).

    The defaults won the sweep in BENCHMARKS.md on the default prior: guidance 1.5 took the sample Frechet distance
    from 6.6 (scale 1) to 4.2, while a temperature of 0.9 or 0.95, top-k 64 and top-p 0.95 each made it worse.
    """
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.5


def is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_count(n, batch_size=None):
    """One ValueError for a number of grids that is not a positive integer, or such a batch size (None: all n)."""
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch size must be positive, not {batch_size!r}")


class ClassLabels:
    """The class ids asked for n samples as consecutive blocks, class c taking shares[c] of them; labels[a:b] gives
    the ids of samples a..b-1 (int64) without ever holding all n, which a request may make too many to hold."""

    def __init__(self, shares):
        self.shares = torch.as_tensor(shares, dtype=torch.long)
        self.ends = self.shares.cumsum(0)

    def __len__(self):
        return int(self.ends[-1])

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise TypeError("class labels are read in slices: labels[start:stop]")
        start, stop, step = index.indices(len(self))
        return torch.searchsorted(self.ends, torch.arange(start, stop, step), right=True)

    def counts(self):
        """How many samples ask for each class."""
        return self.shares.tolist()


def class_shares(n, class_counts):
    """How many of n samples each class gets, in the proportions of class_counts (largest remainders round up)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or len(counts) == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class counts must be non-negative with a positive sum, got {list(class_counts)}")
    exact = n * counts / counts.sum()
    shares = exact.floor().long()
    # Ties go to the lower class id (a stable sort), so the mix is a function of (n, counts) alone.
    leftover = (exact - shares).argsort(descending=True, stable=True)[: n - int(shares.sum())]
    shares[leftover] += 1
    return shares


def class_mix(n, class_counts):
    """n class ids in the proportions of class_counts, class by class (ClassLabels)."""
    return ClassLabels(class_shares(n, class_counts))


def resolve_labels(label, n, class_names, class_counts=None):
    """What a user's label means for a prior run (its class_names and class_counts, None when unconditional):
    None (no label), or ClassLabels of n.

    label None: a conditional prior draws classes in the training mix (class_counts; equal shares for runs that
    did not record them), an unconditional one samples plainly; NO_LABEL: "no label"; an int or a class name: that
    class for all n.
    """
    check_count(n)
    names = class_names or []
    if label is None:
        if not names:
            return None
        return class_mix(n, class_counts or [1] * len(names))
    if label == NO_LABEL:
        return None
    if not names:
        raise ValueError("a label needs a class-conditional prior (trained with class conditioning)")
    if label in names:
        index = names.index(label)
    else:
        try:
            index = int(label)
        except ValueError:
            raise ValueError(f"unknown label {label!r}: the prior knows {', '.join(names)} (or {NO_LABEL!r})") from None
        if not 0 <= index < len(names):
            raise ValueError(f"label {index} outside 0..{len(names) - 1} (the prior's classes)")
    return ClassLabels([n if c == index else 0 for c in range(len(names))])


def settings_for(labels, defaults=None, **chosen):
    """The settings generate() samples with: chosen values (None = not chosen) over the defaults (SamplingConfig's:
    the one home of the defaults, from the command line down to generate()); guidance only where there are labels
    to guide towards (an explicit guidance_scale without labels is left for generate() to refuse)."""
    defaults = defaults or SamplingConfig()
    settings = {name: getattr(defaults, name) if chosen.get(name) is None else chosen[name]
                for name in ("temperature", "top_k", "top_p", "guidance_scale")}
    if labels is None and chosen.get("guidance_scale") is None:
        settings["guidance_scale"] = 1.0
    return settings
