"""What a user's sampling request means for a prior run: the settings the measurements chose, how a setting that
changes along the grid (a schedule) takes its value at each position, and, for a class-conditional prior told no
class, classes in the mix of the training split.

`python -m pipelines.sample` and `python -m pipelines.evaluate` both resolve their requests here (through
generation.ImageGenerator), so an evaluation scores exactly what `sample` with no flags gives. The defaults come
from the sweeps in BENCHMARKS.md ("Sample quality: the levers", "Guidance along the grid").
"""

import math
import numbers
from dataclasses import asdict, dataclass, fields

import torch

# What a label may be to sample a conditional prior with "no label" (the unconditional half of guidance).
NO_LABEL = "none"
# How a setting given as (start, end) goes from its start at the first position to its end at the last.
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class SamplingConfig:
    """How logits become tokens, position by position in raster order.

    guidance_scale applies only where labels are given (a conditional prior): one number s for every position, or
    (start, end) over the positions along guidance_schedule ("linear", or "cosine": a half-cosine, flat at both
    ends). Positions before guidance_from are not guided (scale 1): a position k (an integer), or a fraction f of
    the grid in (0, 1), the first round(f * positions) positions, which means the same on a grid of any size.
    Positions count from the grid's first one, also when a completion keeps rows, so a position is guided alike in
    a completion and in a whole draw; a two-level prior's top and bottom grids each run the schedule over their own
    positions. Peers raise guidance along the steps (VAR's sampler; Wang et al. 2024 find rising schedules beat
    every constant; Kynkaanniemi et al. 2024 guide only part of the way): the early positions lay out the picture,
    and guiding them costs diversity.
    temperature takes one number or (start, end) along temperature_schedule the same way.

    The defaults won the sweeps in BENCHMARKS.md. Guidance ("Guidance along the grid"): none on the first 40% of
    the grid, 3 after it, took the shipped generator's sample Frechet distance from 3.85 / 3.99 (constant 1.5,
    seeds 0 / 1) to 2.65 / 2.44, and 34% and 41% off on a second, independently trained yardstick; the rising
    ramps came close behind. Temperature ("Sample quality: the levers"): 0.9 or 0.95, a falling ramp, top-k 64 and
    top-p 0.95 each made the samples worse than 1.
    """
    temperature: float | tuple[float, float] = 1.0
    temperature_schedule: str = "constant"
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float | tuple[float, float] = 3.0
    guidance_schedule: str = "constant"
    guidance_from: int | float = 0.4

    def record(self):
        """The settings as sample.json and report.json record them (describe_settings reads them back)."""
        return asdict(self)

    def check(self, codebook_size):
        """One ValueError for the first setting that a prior of codebook_size tokens cannot sample with."""
        check_schedule("temperature", self.temperature, "temperature_schedule", self.temperature_schedule, low=0,
                       low_open=True)
        if self.top_k is not None and (not is_int(self.top_k) or not 1 <= self.top_k <= codebook_size):
            raise ValueError(f"`top_k` must be an integer in 1..{codebook_size} (the codebook size) or None, got "
                             f"{self.top_k!r}")
        if self.top_p is not None and (not is_real(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"`top_p` must be in (0, 1] or None, got {self.top_p!r}")
        check_schedule("guidance_scale", self.guidance_scale, "guidance_schedule", self.guidance_schedule)
        check_first("guidance_from", self.guidance_from)


# The names of the sampling settings: SamplingConfig's fields.
SETTINGS = tuple(f.name for f in fields(SamplingConfig))


def is_ramp(value):
    """Whether a setting is given as (start, end) rather than one number."""
    return isinstance(value, (tuple, list))


def first_position(first, positions):
    """The first position of a schedule on a grid of `positions`: `first` itself (a position), or for a fraction
    in (0, 1), that fraction of the grid's positions, rounded."""
    return first if is_int(first) else round(first * positions)


def check_first(name, first):
    """One ValueError for a first position that is neither an integer >= 0 nor a fraction in (0, 1)."""
    if not (is_int(first) and first >= 0 or is_real(first) and not is_int(first) and 0 < first < 1):
        raise ValueError(f"`{name}` must be a position (an integer >= 0) or a fraction of the grid in (0, 1), got "
                         f"{first!r}")


def schedule_values(value, schedule, positions, first=0, neutral=1.0):
    """The setting at each of `positions` raster positions, float64 (positions,): one number everywhere, or
    (start, end) along the schedule from position `first` (start; or a fraction of the grid, first_position) to
    the last (end); positions before `first` take `neutral` (for guidance, 1: none). Checked by check_schedule and
    check_first."""
    first = first_position(first, positions)
    values = torch.full((positions,), float(neutral), dtype=torch.float64)
    if first >= positions:
        return values
    start, end = (value, value) if not is_ramp(value) else value
    steps = positions - first
    progress = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)  # 0 at `first`, 1 at the last
    if schedule == "cosine":
        progress = (1 - torch.cos(math.pi * progress)) / 2
    values[first:] = start + (end - start) * progress
    return values


def check_schedule(name, value, schedule_name, schedule, low=-math.inf, low_open=False):
    """One ValueError for a setting `name` that is not a finite number (above low) or a pair (start, end) of them,
    or a pair with the constant schedule (named schedule_name). One number is flat along any schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"`{schedule_name}` must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    ends = tuple(value) if is_ramp(value) else (value,)
    above = f" > {low:g}" if low_open else "" if low == -math.inf else f" >= {low:g}"
    if len(ends) not in (1, 2) or not all(
            is_real(x) and math.isfinite(x) and (x > low if low_open else x >= low) for x in ends):
        raise ValueError(f"`{name}` must be a finite number{above} or a pair (start, end) of them, got {value!r}")
    if schedule == "constant" and len(ends) == 2:
        raise ValueError(f"`{name}` {ends[0]:g}:{ends[1]:g} changes along the grid: give `{schedule_name}` linear or "
                         "cosine, or one number for a constant")


def describe_schedule(value, schedule, first=0):
    """A setting in words: "1.5", "cosine 1 -> 2.5", with "from position k" or "after the first 40% of the grid"
    for an interval."""
    text = f"{schedule} {value[0]:g} -> {value[1]:g}" if is_ramp(value) else f"{value:g}"
    if not first:
        return text
    return text + (f" from position {first}" if is_int(first) else f" after the first {first:.0%} of the grid")


def describe_settings(settings):
    """A run's sampling settings (a dict of SETTINGS, as sample.json and report.json record them) in words:
    "guidance cosine 1 -> 2.5, temperature 1"; the schedules missing from older records are constant."""
    guidance = describe_schedule(settings.get("guidance_scale", 1.0), settings.get("guidance_schedule", "constant"),
                                 settings.get("guidance_from") or 0)
    temperature = describe_schedule(settings.get("temperature", 1.0), settings.get("temperature_schedule", "constant"))
    filters = [f"{name.replace('_', '-')} {settings[name]:g}" for name in ("top_k", "top_p") if settings.get(name)]
    return ", ".join([f"guidance {guidance}", f"temperature {temperature}", *filters])


def is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_count(n, batch_size=None):
    """One ValueError for a number of grids that is not a positive integer, or such a batch size (None: all n)."""
    if not is_int(n) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"`batch_size` must be positive, not {batch_size!r}")


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


class SampleLabels(ClassLabels):
    """One class id per sample, given (a list of n ids or names, or a tensor): read in slices as ClassLabels are."""

    def __init__(self, ids, num_classes):
        self.ids, self.num_classes = ids, num_classes

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            raise TypeError("class labels are read in slices: labels[start:stop]")
        return self.ids[index]

    def counts(self):
        return torch.bincount(self.ids, minlength=self.num_classes).tolist()


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
    class for all n; a list, tuple or 1-d tensor of n ids or names: one class per sample (SampleLabels).
    """
    check_count(n)
    names = class_names or []
    if isinstance(label, (list, tuple)) or (torch.is_tensor(label) and label.dim() == 1):
        if not names:
            raise ValueError("labels need a class-conditional prior (trained with class conditioning)")
        if len(label) != n:
            raise ValueError(f"labels must be one per sample: {n} ids or names, got {len(label)}")
        return SampleLabels(torch.tensor([_class_id(item, names) for item in label], dtype=torch.long), len(names))
    if label is None:
        if not names:
            return None
        return class_mix(n, class_counts or [1] * len(names))
    if isinstance(label, str) and label == NO_LABEL:
        return None
    if not names:
        raise ValueError("a label needs a class-conditional prior (trained with class conditioning)")
    index = _class_id(label, names)
    return ClassLabels([n if c == index else 0 for c in range(len(names))])


def _class_id(label, names):
    """The class id of a label given by name or by id (an int, an integer tensor, or its text); one ValueError."""
    if isinstance(label, str) and label in names:
        return names.index(label)
    if torch.is_tensor(label) and label.dim() == 0 and not label.dtype.is_floating_point and label.dtype != torch.bool:
        label = int(label)
    if isinstance(label, bool) or torch.is_tensor(label) or (isinstance(label, float) and not label.is_integer()):
        raise ValueError(f"a label is a class id or name, got {label!r}")
    try:
        index = int(label)
    except (TypeError, ValueError):
        raise ValueError(f"unknown label {label!r}: the prior knows {', '.join(names)} (or {NO_LABEL!r})") from None
    if not 0 <= index < len(names):
        raise ValueError(f"label {index} outside 0..{len(names) - 1} (the prior's classes)")
    return index


def resolve_sampling(labels, defaults=None, **chosen):
    """The SamplingConfig a request samples with, resolved once (by the command, or ImageGenerator.request) and
    handed whole to generate(): the chosen settings (None = not chosen) over the defaults (SamplingConfig's, the one
    home of the defaults); guidance only where there are labels to guide towards (an explicit guidance_scale without
    labels is left for generate() to refuse).

    A guidance_scale chosen without guidance_from guides from the first position (the default's interval belongs to
    the default's scale: a chosen scale of 1.5 is 1.5 everywhere). A pair (start, end) chosen without its schedule
    takes the default ramp (linear where the default is constant); one number is constant whatever the schedule
    says. Unknown names: one ValueError.
    """
    unknown = sorted(set(chosen) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown sampling setting {unknown[0]!r}: the settings are {', '.join(SETTINGS)}")
    defaults = defaults or SamplingConfig()
    settings = {name: getattr(defaults, name) if chosen.get(name) is None else chosen[name] for name in SETTINGS}
    if labels is None and chosen.get("guidance_scale") is None:
        settings.update(guidance_scale=1.0, guidance_from=0)
    elif chosen.get("guidance_scale") is not None and chosen.get("guidance_from") is None:
        settings.update(guidance_from=0)
    for name, schedule in (("temperature", "temperature_schedule"), ("guidance_scale", "guidance_schedule")):
        if not is_ramp(settings[name]) and settings[schedule] in SCHEDULES:
            settings[schedule] = "constant"
        elif chosen.get(name) is not None and chosen.get(schedule) is None:
            settings[schedule] = getattr(defaults, schedule) if getattr(defaults, schedule) != "constant" else "linear"
    return SamplingConfig(**settings)
