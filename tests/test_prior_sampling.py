"""prior.sampling: what a sampling call draws when told nothing (the training mix of classes, the chosen settings)."""

import dataclasses
import math

import pytest
import torch

from conftest import generate, seeded, small_prior
from prior.sampling import (NO_LABEL, SamplingConfig, check_first, check_schedule, class_mix, describe_schedule,
                            first_position, resolve_labels, resolve_sampling, schedule_values)

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = ["a", "b", "c"]


def test_the_class_mix_follows_the_counts_class_by_class():
    assert class_mix(10, [1, 1, 2])[:].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]  # 2.5, 2.5, 5: the tie to class 0
    mix = class_mix(64, [6000] * 10)  # Fashion-MNIST: 6 or 7 of each class, the extra ones to the first four
    assert torch.bincount(mix[:]).tolist() == mix.counts() == [7, 7, 7, 7, 6, 6, 6, 6, 6, 6]
    assert torch.equal(mix[:], mix[:].sort().values) and len(mix) == 64
    skewed = class_mix(1000, [900, 0, 100])
    assert torch.bincount(skewed[:], minlength=3).tolist() == skewed.counts() == [900, 0, 100]
    with pytest.raises(ValueError, match="class counts"):
        class_mix(4, [0, 0])


def test_a_huge_mix_is_read_in_slices_without_holding_it():
    n = 10**12  # 8 TB as one int64 tensor
    mix = class_mix(n, [6000] * 10)
    assert len(mix) == n and sum(mix.counts()) == n and mix.counts()[0] == n // 10
    assert mix[0:3].tolist() == [0, 0, 0] and mix[n - 2:n].tolist() == [9, 9]
    border = n // 10  # the first class's block ends here
    assert mix[border - 1:border + 1].tolist() == [0, 1]
    small = class_mix(97, [3, 1, 5])
    assert all(torch.equal(small[a:b], small[:][a:b]) for a, b in ((0, 97), (10, 40), (96, 97), (50, 50)))


def test_labels_resolve_to_the_mix_no_label_or_one_class():
    config = {"class_names": NAMES, "class_counts": [2, 1, 1]}
    assert resolve_labels(None, 4, **config)[:].tolist() == [0, 0, 1, 2]
    assert resolve_labels(None, 3, NAMES)[:].tolist() == [0, 1, 2]  # runs without counts: equal
    assert resolve_labels(None, 4, None) is None  # unconditional
    assert resolve_labels(NO_LABEL, 4, **config) is None
    assert resolve_labels("c", 2, **config)[:].tolist() == [2, 2]
    assert resolve_labels("1", 2, **config)[:].tolist() == [1, 1]
    assert resolve_labels("b", 10**12, **config).counts() == [0, 10**12, 0]
    for label, message in (("d", "unknown label 'd'"), ("7", "label 7 outside 0..2")):
        with pytest.raises(ValueError, match=message):
            resolve_labels(label, 2, **config)
    with pytest.raises(ValueError, match="needs a class-conditional prior"):
        resolve_labels("a", 2, None)
    with pytest.raises(ValueError, match="`n` must be a positive integer"):
        resolve_labels(None, 0, **config)


def test_settings_take_the_defaults_and_guide_only_where_there_are_labels():
    defaults = SamplingConfig(temperature=0.9, guidance_scale=2.0, guidance_schedule="constant", guidance_from=0)
    labels = torch.tensor([0, 1])
    plain = {"temperature": 0.9, "temperature_schedule": "constant", "top_k": None, "top_p": None,
             "guidance_scale": 2.0, "guidance_schedule": "constant", "guidance_from": 0}
    assert resolve_sampling(labels, defaults) == SamplingConfig(**plain)
    assert resolve_sampling(None, defaults).guidance_scale == 1.0
    assert resolve_sampling(None, defaults, guidance_scale=3.0).guidance_scale == 3.0  # generate() refuses it
    chosen = resolve_sampling(labels, defaults, temperature=1.2, top_k=5)
    assert chosen == SamplingConfig(**{**plain, "temperature": 1.2, "top_k": 5})
    with pytest.raises(ValueError, match="unknown sampling setting 'guidance'"):
        resolve_sampling(labels, defaults, guidance=2.0)


def test_a_schedule_follows_what_was_chosen_of_it():
    ramp = SamplingConfig(guidance_scale=(1.0, 2.5), guidance_schedule="cosine", guidance_from=3)
    labels = torch.tensor([0, 1])
    assert resolve_sampling(labels, ramp).guidance_schedule == "cosine"
    # A pair alone takes the default's ramp; one number alone is constant, whatever the default's shape.
    assert resolve_sampling(labels, ramp, guidance_scale=(1.0, 3.0)).guidance_schedule == "cosine"
    assert resolve_sampling(labels, ramp, guidance_scale=2.0).guidance_schedule == "constant"
    constant = SamplingConfig(guidance_scale=2.0, guidance_schedule="constant")
    assert resolve_sampling(labels, constant, guidance_scale=(1.0, 3.0)).guidance_schedule == "linear"
    assert resolve_sampling(labels, ramp, guidance_schedule="linear").guidance_schedule == "linear"
    assert resolve_sampling(labels, ramp, temperature=(1.0, 0.8)).temperature_schedule == "linear"
    # The default's interval belongs to the default's scale: a scale chosen alone guides from the first position.
    interval = SamplingConfig(guidance_scale=3.0, guidance_from=0.4)
    assert resolve_sampling(labels, interval).guidance_from == 0.4
    assert resolve_sampling(labels, interval, guidance_scale=1.5).guidance_from == 0
    assert resolve_sampling(labels, interval, guidance_scale=1.5, guidance_from=5).guidance_from == 5
    assert resolve_sampling(labels, interval, guidance_from=0.2) == dataclasses.replace(
        resolve_sampling(labels, interval), guidance_from=0.2)
    # No labels: nothing to guide towards, so no guidance at all, wherever it would start.
    unguided = resolve_sampling(None, ramp)
    assert (unguided.guidance_scale, unguided.guidance_schedule, unguided.guidance_from) == (
        1.0, "constant", 0)


def test_schedules_go_from_start_at_the_first_position_to_end_at_the_last():
    linear = schedule_values((1.0, 3.0), "linear", 5)
    assert torch.allclose(linear, torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64))
    cosine = schedule_values((1.0, 3.0), "cosine", 5)
    half = [1 + (1 - math.cos(math.pi * u)) for u in (0, 0.25, 0.5, 0.75, 1)]
    assert torch.allclose(cosine, torch.tensor(half, dtype=torch.float64))
    assert cosine[1] < linear[1] and cosine[3] > linear[3]  # flat at both ends, steep in the middle
    assert torch.equal(schedule_values(1.5, "constant", 4), torch.full((4,), 1.5, dtype=torch.float64))
    assert torch.equal(schedule_values(1.5, "cosine", 4), torch.full((4,), 1.5, dtype=torch.float64))
    # An interval: the neutral value before `first`, then the ramp over the positions left.
    interval = schedule_values((2.0, 4.0), "linear", 6, first=2)
    assert torch.allclose(interval, torch.tensor([1, 1, 2, 2 + 2 / 3, 2 + 4 / 3, 4], dtype=torch.float64))
    assert torch.equal(schedule_values(2.0, "constant", 3, first=7), torch.ones(3, dtype=torch.float64))
    assert torch.equal(schedule_values((2.0, 4.0), "linear", 1), torch.tensor([2.0], dtype=torch.float64))
    # A fraction of the grid: the same share of any grid, rounded to a position (0.4 of 49 is 20, of 16 is 6).
    assert first_position(0.4, 49) == 20 and first_position(0.4, 64) == 26 and first_position(0.4, 16) == 6
    assert first_position(7, 49) == 7
    assert torch.equal(schedule_values(3.0, "constant", 49, first=0.4), schedule_values(3.0, "constant", 49, first=20))
    assert schedule_values(3.0, "constant", 16, first=0.4).tolist() == [1.0] * 6 + [3.0] * 10


@pytest.mark.parametrize("first", [-1, 1.5, 1.0, 0.0, math.nan, "3", True])
def test_a_first_position_is_a_position_or_a_fraction_of_the_grid(first):
    with pytest.raises(ValueError, match="`guidance_from` must be a position \\(an integer >= 0\\) or a fraction"):
        check_first("guidance_from", first)


@pytest.mark.parametrize("args, message", [
    (("guidance_scale", (1.0, 2.5), "guidance_schedule", "constant"), "changes along the grid: give `guidance_sch"),
    (("guidance_scale", 2.0, "guidance_schedule", "exponential"), "`guidance_schedule` must be one of constant"),
    (("guidance_scale", (1.0, 2.0, 3.0), "guidance_schedule", "linear"), "a pair \\(start, end\\)"),
    (("guidance_scale", (1.0, math.inf), "guidance_schedule", "linear"), "`guidance_scale` must be a finite number"),
    (("guidance_scale", "2", "guidance_schedule", "constant"), "`guidance_scale` must be a finite number"),
    (("temperature", (1.0, 0.0), "temperature_schedule", "linear", 0, True), "`temperature` must be a finite number"),
])
def test_bad_schedules_are_one_line_errors(args, message):
    with pytest.raises(ValueError, match=message) as info:
        check_schedule(*args)
    assert "\n" not in str(info.value)


def test_schedules_in_words():
    assert describe_schedule(1.5, "constant") == "1.5"
    assert describe_schedule((1.0, 2.5), "cosine") == "cosine 1 -> 2.5"
    assert describe_schedule(2.0, "constant", 10) == "2 from position 10"
    assert describe_schedule(3.0, "constant", 0.4) == "3 after the first 40% of the grid"


@pytest.mark.parametrize("arch", ["gated", "pixelcnn"])
def test_guidance_at_scale_one_is_plain_conditional_sampling(arch):
    # A scale a hair above 1 takes the guided path (a doubled batch with "no label" rows) and must give the grids
    # of the plain conditional sampler: uncond + 1 * (cond - uncond) = cond.
    model = small_prior(arch, num_classes=3)
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    plain = generate(model, 6, labels=labels, guidance_scale=1.0, generator=seeded())
    assert torch.equal(plain, generate(model, 6, labels=labels, guidance_scale=1 + 1e-12, generator=seeded()))
    assert not torch.equal(plain, generate(model, 6, labels=labels, guidance_scale=1.5, generator=seeded()))


def test_generate_told_nothing_samples_with_the_one_set_of_defaults():
    """SamplingConfig is the one home of the defaults: generate() left alone guides as sample does (only where
    there are labels), at the temperature, filters and guidance schedule of SamplingConfig."""
    model = small_prior("pixelcnn", num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    defaults = SamplingConfig()
    told = {name: getattr(defaults, name) for name in ("temperature", "temperature_schedule", "top_k", "top_p",
                                                        "guidance_scale", "guidance_schedule", "guidance_from")}
    assert torch.equal(generate(model, 4, labels=labels, generator=seeded()),
                       generate(model, 4, labels=labels, generator=seeded(), **told))
    assert defaults.guidance_scale != 1
    assert not torch.equal(generate(model, 4, labels=labels, generator=seeded()),
                           generate(model, 4, labels=labels, generator=seeded(), guidance_scale=1.0))
    assert torch.equal(generate(model, 4, generator=seeded()), generate(model, 4, generator=seeded(),
                                                                         guidance_scale=1.0))


def test_generate_takes_one_sampling_config_used_as_it_is():
    """The settings travel as one SamplingConfig, resolved once above generate() (command -> config -> generate):
    generate() uses it as it is, a two-level prior hands it to both levels, and settings named one by one are
    not generate()'s arguments."""
    import prior

    model = small_prior("gated", num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    chosen = SamplingConfig(temperature=0.8, guidance_scale=2.0, guidance_from=0)
    # As given: its guidance_from 0 stays (a resolve of a chosen scale gives the same).
    assert torch.equal(prior.generate(model, 4, labels=labels, sampling=chosen, generator=seeded()),
                       generate(model, 4, labels=labels, temperature=0.8, guidance_scale=2.0, generator=seeded()))
    later = dataclasses.replace(chosen, guidance_from=0.5)
    assert not torch.equal(prior.generate(model, 4, labels=labels, sampling=chosen, generator=seeded()),
                           prior.generate(model, 4, labels=labels, sampling=later, generator=seeded()))
    with pytest.raises(TypeError):
        prior.generate(model, 4, labels=labels, guidance_scale=2.0)
    with pytest.raises(ValueError, match="sampling must be a SamplingConfig"):
        prior.generate(model, 4, labels=labels, sampling={"guidance_scale": 2.0})
