"""Sampling: the cached sampler writes exactly the naive sampler's grids with far less work; seeds, filters,
guidance, completion and progress do what generate() promises; every bad argument is one ValueError."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import prior
from conftest import conditioned_prior, generate, seeded, small_prior
from prior.generate import pick_tokens
from prior.model import ARCHS


pytestmark = pytest.mark.usefixtures("one_thread")


def both(model, n, **kwargs):
    naive = generate(model, n, sampler="naive", generator=seeded(), **kwargs)
    cached = generate(model, n, sampler="cached", generator=seeded(), **kwargs)
    return naive, cached


OPTIONS = {
    "plain": {},
    "temperature+top_k": dict(temperature=0.7, top_k=5),
    "top_p": dict(temperature=1.3, top_p=0.8),
    "completion": dict(keep_rows=2),
}


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("h, w", [(7, 7), (5, 9)])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_naive(arch, h, w, option):
    model = small_prior(arch, h, w)
    kwargs = dict(OPTIONS[option])
    if "keep_rows" in kwargs:
        kwargs["prefix"] = torch.randint(16, (6, h, w), generator=seeded(7))
    naive, cached = both(model, 6, **kwargs)
    assert torch.equal(naive, cached)
    assert len(naive.unique()) > 4  # the grids are not degenerate


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_naive_with_guidance_and_completion(arch):
    model = small_prior(arch, 6, 5, num_classes=3)
    prefix = torch.randint(16, (6, 5), generator=seeded(7))
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    for kwargs in (dict(labels=labels), dict(labels=labels, guidance_scale=3.0),
                   dict(labels=2, guidance_scale=0.5, prefix=prefix, keep_rows=3, top_k=8), dict()):
        naive, cached = both(model, 6, **kwargs)
        assert torch.equal(naive, cached), kwargs


SCHEDULES = {
    "linear": dict(guidance_scale=(1.0, 3.0), guidance_schedule="linear"),
    "cosine": dict(guidance_scale=(0.5, 2.5), guidance_schedule="cosine"),
    "interval": dict(guidance_scale=2.0, guidance_from=11),
    "interval+ramp": dict(guidance_scale=(1.5, 3.0), guidance_schedule="cosine", guidance_from=4),
    "temperature ramp": dict(guidance_scale=2.0, temperature=(1.3, 0.7), temperature_schedule="cosine"),
    "completion": dict(guidance_scale=(1.0, 3.0), guidance_schedule="linear", keep_rows=2),
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_naive_for_every_schedule(arch, schedule):
    model = small_prior(arch, 6, 5, num_classes=3)
    kwargs = dict(SCHEDULES[schedule], labels=torch.tensor([0, 1, 2, 2, 1, 0]))
    if "keep_rows" in kwargs:
        kwargs["prefix"] = torch.randint(16, (6, 5), generator=seeded(7))
    naive, cached = both(model, 6, **kwargs)
    assert torch.equal(naive, cached)
    assert not torch.equal(cached, generate(model, 6, labels=kwargs["labels"], guidance_scale=2.0,
                                            prefix=kwargs.get("prefix"), keep_rows=kwargs.get("keep_rows", 0),
                                            generator=seeded())), "the schedule changed nothing"


@pytest.mark.parametrize("arch", ARCHS)
def test_each_position_takes_its_own_scale(arch):
    model = small_prior(arch, 6, 5, num_classes=3)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2])

    def draw(**kwargs):
        return generate(model, 8, labels=labels, generator=seeded(), **kwargs).flatten(1)

    unguided, guided = draw(guidance_scale=1.0), draw(guidance_scale=3.0)
    # Unguided before position 13 (exactly: the conditional logits as they are), guided from there on.
    interval = draw(guidance_scale=3.0, guidance_from=13)
    assert torch.equal(interval[:, :13], unguided[:, :13])
    assert not torch.equal(interval[:, 13:], unguided[:, 13:])
    assert torch.equal(draw(guidance_scale=3.0, guidance_from=30), unguided)  # past the last position: none
    assert torch.equal(draw(guidance_scale=3.0, guidance_from=13 / 30), interval)  # a fraction of the 6x5 grid
    # A flat ramp is the constant; a ramp is neither of its ends' constants.
    assert torch.equal(draw(guidance_scale=(3.0, 3.0), guidance_schedule="cosine"), guided)
    ramp = draw(guidance_scale=(1.0, 3.0), guidance_schedule="linear")
    assert not torch.equal(ramp, guided) and not torch.equal(ramp, unguided)
    assert not torch.equal(ramp, draw(guidance_scale=(1.0, 3.0), guidance_schedule="cosine"))
    assert not torch.equal(draw(temperature=(1.0, 0.5), temperature_schedule="linear"), draw())


@pytest.mark.parametrize("arch", ARCHS)
def test_a_completion_counts_positions_from_the_grids_start(arch):
    """Schedules run over the grid's positions whoever wrote the first rows: completing a draw's own first rows
    with the same random numbers gives the draw back (counted from the first position sampled, the completion's
    positions would take other scales)."""
    model = small_prior(arch, 6, 5, num_classes=3)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    for schedule in (dict(guidance_scale=(1.0, 3.0), guidance_schedule="linear"),
                     dict(guidance_scale=3.0, guidance_from=12, temperature=(1.2, 0.8), temperature_schedule="linear")):
        whole = generate(model, 6, labels=labels, generator=seeded(), **schedule)
        for keep_rows in (1, 3):
            completed = generate(model, 6, labels=labels, prefix=whole, keep_rows=keep_rows, generator=seeded(),
                                 **schedule)
            assert torch.equal(completed, whole), (schedule, keep_rows)


def test_a_two_level_prior_runs_the_schedule_over_each_grids_own_positions():
    from prior import TwoLevelPrior

    top = small_prior("pixelcnn", 3, 3, num_classes=3, codebook_size=8)
    bottom = conditioned_prior("pixelcnn", num_classes=3, h=6, w=6, top=(3, 3))
    model = TwoLevelPrior(top.config, bottom.config)
    model.top.load_state_dict(top.state_dict())
    model.bottom.load_state_dict(bottom.state_dict())
    labels = torch.tensor([0, 1, 2, 1])
    schedule = dict(guidance_scale=(1.0, 3.0), guidance_schedule="cosine", guidance_from=2)
    both_levels = generate(model, 4, labels=labels, generator=seeded(), **schedule)
    generator = seeded()  # the top grids first, then the bottom grids, from one generator
    top_grids = generate(model.top, 4, labels=labels, generator=generator, **schedule)
    bottom_grids = generate(model.bottom, 4, labels=labels, condition=top_grids, generator=generator, **schedule)
    assert torch.equal(both_levels[0], top_grids) and torch.equal(both_levels[1], bottom_grids)
    naive = generate(model, 4, labels=labels, generator=seeded(), sampler="naive", **schedule)
    assert torch.equal(naive[0], top_grids) and torch.equal(naive[1], bottom_grids)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_naive_on_a_large_grid_with_default_kernels(arch):
    model = small_prior(arch, 16, 16, first_kernel_size=7, num_layers=4)
    naive, cached = both(model, 2)
    assert torch.equal(naive, cached)


def test_same_seed_same_grids_other_seed_other_grids():
    model = small_prior()
    first = generate(model, 8, generator=seeded(3))
    assert torch.equal(first, generate(model, 8, generator=seeded(3)))
    assert not torch.equal(first, generate(model, 8, generator=seeded(4)))


def test_guidance_and_labels_change_the_grids():
    model = small_prior(num_classes=3)
    plain = generate(model, 8, labels=1, guidance_scale=1.0, generator=seeded())
    assert not torch.equal(plain, generate(model, 8, labels=1, guidance_scale=4.0, generator=seeded()))
    assert not torch.equal(plain, generate(model, 8, labels=2, guidance_scale=1.0, generator=seeded()))
    assert not torch.equal(plain, generate(model, 8, generator=seeded()))  # "no label"


def test_guidance_scale_zero_samples_the_no_label_model():
    # logits = uncond + 0 * (cond - uncond): the labels must not matter at all.
    model = small_prior(num_classes=3)
    unconditional = generate(model, 8, generator=seeded())
    assert torch.equal(unconditional, generate(model, 8, labels=2, guidance_scale=0.0, generator=seeded()))
    assert torch.equal(unconditional, generate(model, 8, labels=0, guidance_scale=0.0, generator=seeded()))


def test_greedy_filters_ignore_the_seed():
    model = small_prior()
    greedy = generate(model, 4, top_k=1, generator=seeded(1))
    assert torch.equal(greedy, generate(model, 4, top_k=1, generator=seeded(2)))
    assert torch.equal(greedy, generate(model, 4, top_p=1e-9, generator=seeded(3)))
    assert torch.equal(greedy, generate(model, 4, temperature=1e-6, generator=seeded(4)))


def test_pick_follows_the_filtered_distribution():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]])).expand(1000, 4)
    uniform = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000  # evenly spread: exact frequencies

    def frequencies(**kwargs):
        kwargs = {"temperature": 1.0, "top_k": None, "top_p": None, **kwargs}
        return torch.bincount(pick_tokens(logits, uniform, **kwargs), minlength=4).double() / 1000

    assert torch.allclose(frequencies(), torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64), atol=2e-3)
    assert torch.allclose(frequencies(top_k=2), torch.tensor([0, 4 / 7, 0, 3 / 7], dtype=torch.float64), atol=2e-3)
    # Nucleus 0.6: 0.4 alone falls short, 0.4 + 0.3 reaches it.
    assert torch.allclose(frequencies(top_p=0.6), torch.tensor([0, 4 / 7, 0, 3 / 7], dtype=torch.float64), atol=2e-3)
    sharp = frequencies(temperature=0.5)  # p ** 2, renormalised
    assert torch.allclose(sharp, torch.tensor([1, 16, 4, 9], dtype=torch.float64) / 30, atol=2e-3)
    assert torch.equal(pick_tokens(logits[:2], torch.zeros(2, dtype=torch.float64), 1.0, 2, None), torch.tensor([1, 1]))


@pytest.mark.parametrize("arch", ARCHS)
def test_completion_keeps_the_given_rows(arch):
    model = small_prior(arch)
    prefix = torch.randint(16, (5, 7, 7), generator=seeded(9))
    out = generate(model, 5, prefix=prefix, keep_rows=3, generator=seeded())
    assert torch.equal(out[:, :3], prefix[:, :3])
    assert not torch.equal(out[:, 3:], prefix[:, 3:])
    # The kept rows condition the rest: other prefixes, other completions from the same random numbers.
    other = generate(model, 5, prefix=(prefix + 1) % 16, keep_rows=3, generator=seeded())
    assert not torch.equal(out[:, 3:], other[:, 3:])
    # A (h, w) prefix is shared by every sample; keeping every row returns it untouched.
    shared = generate(model, 3, prefix=prefix[0], keep_rows=7, generator=seeded())
    assert torch.equal(shared, prefix[0].expand(3, 7, 7))


def test_progress_counts_the_sampled_positions():
    calls = []
    generate(small_prior(h=4, w=3), 2, prefix=torch.zeros(4, 3, dtype=torch.long), keep_rows=1,
             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(k, 9) for k in range(1, 10)]


def test_restores_training_mode_and_uses_the_model_device():
    model = small_prior().train()
    out = generate(model, 2)
    assert model.training
    assert out.dtype == torch.long and out.shape == (2, 7, 7) and out.device == model.embed.weight.device
    assert out.min() >= 0 and out.max() < 16


def test_batches_each_get_their_own_labels_and_prefix_and_one_progress_count():
    model = small_prior(num_classes=3, h=4, w=4)
    labels = torch.tensor([0, 0, 2, 2, 1])
    prefix = torch.randint(0, 16, (5, 4, 4), generator=seeded(5))
    calls = []
    mixed = generate(model, 5, labels=labels, prefix=prefix, keep_rows=1, batch_size=2, generator=seeded(7),
                     progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(mixed[:, :1], prefix[:, :1]), "a batch kept another batch's rows"
    # Batch by batch with the same generator: grids 2 and 3 are the second batch, asked for class 2.
    generator = seeded(7)
    expected = [generate(model, rows.stop - rows.start, labels=labels[rows], prefix=prefix[rows], keep_rows=1,
                         generator=generator) for rows in (slice(0, 2), slice(2, 4), slice(4, 5))]
    assert torch.equal(mixed, torch.cat(expected))
    assert calls == [(done, 36) for done in range(1, 37)]  # 3 batches x 12 sampled positions, counted once
    assert not hasattr(prior, "sample")  # one generation entry point, under one name


def test_cached_does_about_one_pass_of_work():
    # Multiply-adds counted by torch, not time: the naive sampler runs the model once per position, the cached
    # one runs each layer once per position on a window, which is less than one full pass.
    model = small_prior("gated", 16, 16)
    tokens = torch.zeros(2, 16, 16, dtype=torch.long)
    counts = {}
    for name, run in [("pass", lambda: model(tokens)),
                      ("naive", lambda: generate(model, 2, sampler="naive")),
                      ("cached", lambda: generate(model, 2, sampler="cached"))]:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        counts[name] = counter.get_total_flops()
    assert counts["naive"] == 256 * counts["pass"]
    assert counts["cached"] <= counts["pass"]
    assert counts["naive"] >= 200 * counts["cached"]


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_work_stays_below_one_pass_with_guidance(arch):
    model = small_prior(arch, 9, 9, num_classes=2)
    tokens = torch.zeros(4, 9, 9, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as one_pass:
        model(tokens)
    with FlopCounterMode(display=False) as cached:
        generate(model, 2, labels=1, guidance_scale=2.0)  # guidance runs a batch of 2 * 2
    assert cached.get_total_flops() <= one_pass.get_total_flops()


BAD = [
    (dict(n=0), "`n` must be a positive integer"),
    (dict(n=2.0), "`n` must be a positive integer"),
    (dict(temperature=0), "`temperature` must be a finite number > 0"),
    (dict(temperature=-1.0), "`temperature` must be a finite number > 0"),
    (dict(temperature=float("nan")), "`temperature` must be a finite number > 0"),
    (dict(top_k=0), r"`top_k` must be an integer in 1\.\.16"),
    (dict(top_k=17), r"`top_k` must be an integer in 1\.\.16"),
    (dict(top_p=0.0), r"`top_p` must be in \(0, 1\]"),
    (dict(top_p=1.5), r"`top_p` must be in \(0, 1\]"),
    (dict(labels=1), "labels given to an unconditional prior"),
    (dict(guidance_scale=2.0), "`guidance_scale` must be 1 for an unconditional prior"),
    (dict(conditional=True, labels=3), r"labels must be class ids in 0\.\.2"),
    (dict(conditional=True, labels=-1), r"labels must be class ids in 0\.\.2"),
    (dict(conditional=True, labels=torch.tensor([0, 1])), r"labels must be an int or have shape \(3,\)"),
    (dict(conditional=True, labels=torch.tensor([0.0, 1.0, 1.0])), "labels must be integer class ids"),
    (dict(conditional=True, guidance_scale=2.0), "needs labels"),
    (dict(conditional=True, labels=1, guidance_scale=float("inf")), "`guidance_scale` must be a finite number"),
    (dict(guidance_scale=(1.0, 2.0), guidance_schedule="linear"),
     "`guidance_scale` must be 1 for an unconditional prior, got linear 1 -> 2"),
    (dict(conditional=True, guidance_scale=2.0, guidance_from=5), "`guidance_scale` 2 from position 5 needs labels"),
    (dict(conditional=True, labels=1, guidance_scale=(1.0, 2.0), guidance_schedule="constant"),
     "changes along the grid"),
    (dict(conditional=True, labels=1, guidance_scale=2.0, guidance_from=-1), "`guidance_from` must be a position"),
    (dict(conditional=True, labels=1, guidance_scale=2.0, guidance_from=1.5), "`guidance_from` must be a position"),
    (dict(conditional=True, labels=1, guidance_scale=(1.0, 2.0), guidance_schedule="steep"),
     "`guidance_schedule` must be one of"),
    (dict(temperature=(1.0, -0.5), temperature_schedule="linear"), "`temperature` must be a finite number > 0"),
    (dict(keep_rows=8, prefix=torch.zeros(7, 7, dtype=torch.long)), r"`keep_rows` must be an integer in 0\.\.7"),
    (dict(keep_rows=-1, prefix=torch.zeros(7, 7, dtype=torch.long)), r"`keep_rows` must be an integer in 0\.\.7"),
    (dict(keep_rows=2), "needs a prefix"),
    (dict(keep_rows=2, prefix=torch.zeros(7, 6, dtype=torch.long)), r"prefix must have shape \(3, 7, 7\)"),
    (dict(keep_rows=2, prefix=torch.zeros(2, 7, 7, dtype=torch.long)), r"prefix must have shape \(3, 7, 7\)"),
    (dict(keep_rows=2, prefix=torch.full((7, 7), 16)), r"the prefix's kept rows hold tokens 16\.\.16, outside"),
    (dict(keep_rows=2, prefix=torch.full((7, 7), -1)), r"kept rows hold tokens -1\.\.-1, outside the codebook's 0"),
    (dict(keep_rows=2, prefix=torch.zeros(7, 7)), "prefix must hold integer tokens"),
    (dict(sampler="fast"), "`sampler` must be one of naive, cached"),
    (dict(progress="tqdm"), "progress must be a callable"),
    (dict(generator=0), "generator must be a torch.Generator"),
]


@pytest.mark.parametrize("kwargs, message", BAD, ids=[m.replace('`', '') for _, m in BAD])
def test_bad_arguments_raise_one_line_value_errors(kwargs, message):
    kwargs = dict(kwargs)
    model = small_prior(num_classes=3 if kwargs.pop("conditional", False) else 0)
    n = kwargs.pop("n", 3)
    with pytest.raises(ValueError, match=message) as info:
        generate(model, n, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_equals_naive_for_a_prior_conditioned_on_a_token_map(arch):
    model = conditioned_prior(arch, num_classes=3, h=5, w=6, top=(3, 3))
    top = torch.randint(0, 8, (4, 3, 3), generator=seeded(3))
    prefix = torch.randint(0, 16, (4, 5, 6), generator=seeded(4))
    for options in ({}, {"labels": torch.tensor([0, 1, 2, 1]), "guidance_scale": 2.0},
                    {"prefix": prefix, "keep_rows": 2}):
        naive = generate(model, 4, condition=top, sampler="naive", generator=seeded(), **options)
        cached = generate(model, 4, condition=top, sampler="cached", generator=seeded(), **options)
        assert torch.equal(naive, cached), options
    grids = generate(model, 4, condition=top, generator=seeded())
    assert not torch.allclose(model(grids, None, top), model(grids, None, (top + 1) % 8)), "the condition is ignored"
    with pytest.raises(ValueError, match=r"the condition maps hold tokens 8\.\.8, outside the codebook's 0\.\.7"):
        generate(model, 2, condition=torch.full((3, 3), 8))
    with pytest.raises(ValueError, match=r"condition must have shape \(2, 3, 3\)"):
        generate(model, 2, condition=torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pass condition"):
        generate(model, 2)
