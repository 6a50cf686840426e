"""Sampling many grids as a user asks for them: in batches, with the settings the measurements chose, and, for a
class-conditional prior told no class, with classes in the mix of the training split.

`python -m pipelines.sample` and `python -m pipelines.evaluate` both draw through this module, so an evaluation
scores exactly what `sample` with no flags gives. The defaults come from the sweep in BENCHMARKS.md ("Sample
quality: the levers").
"""

import math
from dataclasses import dataclass

import torch

from prior.generate import check_args, generate

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


def class_mix(n, class_counts):
    """n class ids in the proportions of class_counts, class by class (largest remainders round up)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or len(counts) == 0 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class counts must be non-negative with a positive sum, got {list(class_counts)}")
    exact = n * counts / counts.sum()
    shares = exact.floor().long()
    # Ties go to the lower class id (a stable sort), so the mix is a function of (n, counts) alone.
    leftover = (exact - shares).argsort(descending=True, stable=True)[: n - int(shares.sum())]
    shares[leftover] += 1
    return torch.repeat_interleave(torch.arange(len(counts)), shares)


def resolve_labels(label, n, run_config):
    """What a user's label means for a prior run: None (no label), or class ids (n,).

    label None: a conditional prior draws classes in the training mix (class_counts in its config.json; equal
    shares for runs that did not record them), an unconditional one samples plainly; NO_LABEL: "no label";
    an int or a class name: that class for all n.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    names = run_config.get("class_names") or []
    if label is None:
        if not names:
            return None
        return class_mix(n, run_config.get("class_counts") or [1] * len(names))
    if label == NO_LABEL:
        return None
    if not names:
        raise ValueError("a label needs a class-conditional prior (trained with class conditioning)")
    if label in names:
        return torch.full((n,), names.index(label))
    try:
        index = int(label)
    except ValueError:
        raise ValueError(f"unknown label {label!r}: the prior knows {', '.join(names)} (or {NO_LABEL!r})") from None
    if not 0 <= index < len(names):
        raise ValueError(f"label {index} outside 0..{len(names) - 1} (the prior's classes)")
    return torch.full((n,), index)


def settings_for(labels, defaults=None, **chosen):
    """The generate() keyword arguments: chosen values (None = not chosen) over the defaults; guidance only
    where there are labels to guide towards (an explicit guidance_scale without labels is left for check_args to
    refuse)."""
    defaults = defaults or SamplingConfig()
    settings = {name: getattr(defaults, name) if chosen.get(name) is None else chosen[name]
                for name in ("temperature", "top_k", "top_p", "guidance_scale")}
    if labels is None and chosen.get("guidance_scale") is None:
        settings["guidance_scale"] = 1.0
    return settings


def sample_tokens(model, n, batch_size, seed, device, open_progress=None, **kwargs):
    """n grids in batches; the generator is seeded once, so the result depends on (seed, n, batch size).

    open_progress(total_positions) -> a bar with update(k) and close(); it is opened only once every argument
    has passed, so a bad argument's error is the only thing printed.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, not {batch_size}")
    labels, prefix = kwargs.pop("labels", None), kwargs.pop("prefix", None)
    # As checked: labels (n,) or None, prefix (n, ...) or None, each sliced with its batch below.
    labels, prefix = check_args(model, n, labels=labels, prefix=prefix, **kwargs)
    generator = torch.Generator(device=device).manual_seed(seed)
    positions = (model.config.grid_height - kwargs.get("keep_rows", 0)) * model.config.grid_width
    bar = open_progress(math.ceil(n / batch_size) * positions) if open_progress is not None else None
    grids = []
    try:
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            grids.append(generate(
                model, size, generator=generator, labels=None if labels is None else labels[start:start + size],
                prefix=None if prefix is None else prefix[start:start + size],
                progress=(lambda done, total: bar.update(1)) if bar is not None else None, **kwargs))
    finally:
        if bar is not None:
            bar.close()
    return torch.cat(grids)
