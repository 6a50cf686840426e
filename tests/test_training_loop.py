"""training: the learning-rate schedule, the epoch permutation and the weight average, as pure functions."""

import math

import pytest
import torch

import training.config
from training import EpochPermutation, TrainConfig, WeightAverage, learning_rate_at


def test_learning_rate_warms_up_linearly_then_follows_the_cosine_to_its_floor():
    config = TrainConfig(learning_rate=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [learning_rate_at(s, 104, config) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert learning_rate_at(4, 104, config) == pytest.approx(1.0)
    assert learning_rate_at(54, 104, config) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi / 2) = 0
    assert learning_rate_at(104, 104, config) == pytest.approx(0.1)
    assert learning_rate_at(500, 104, config) == pytest.approx(0.1)  # past the end it stays at the floor


def test_the_epoch_permutation_depends_on_seed_and_epoch_only():
    def order(seed, epoch):
        sampler = EpochPermutation(50, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order(0, 0)) == list(range(50))
    assert order(0, 3) == order(0, 3)
    assert order(0, 3) != order(0, 4) and order(0, 3) != order(1, 3)


def test_the_weight_average_warms_up_its_decay_and_copies_integer_buffers():
    model = torch.nn.BatchNorm1d(1)  # a weight, a bias, float running statistics and an integer counter
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(10.0)
        model.num_batches_tracked.fill_(7)
    average.update(model)  # first decay: min(0.5, 1 / 10) = 0.1 -> 0.1 * 0 + 0.9 * 10
    assert average.state["weight"].item() == pytest.approx(9.0)
    assert average.state["num_batches_tracked"].item() == 7
    for _ in range(20):
        average.update(model)
    with torch.no_grad():
        model.weight.fill_(20.0)
    average.update(model)  # the decay has reached 0.5 by now: 0.5 * 10 + 0.5 * 20
    assert average.state["weight"].item() == pytest.approx(15.0, abs=1e-3)
    assert model.weight.item() == 20.0  # the model itself is untouched
    averaged = average.model_like(model)
    assert averaged.weight.item() == pytest.approx(15.0, abs=1e-3) and averaged is not model


@pytest.mark.parametrize("bad", [-0.1, 1.0, math.nan])
def test_a_decay_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ValueError, match="`weight_ema_decay` must lie in"):
        TrainConfig(weight_ema_decay=bad)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_hardware_computes_in_it(monkeypatch, native):
    monkeypatch.setattr(training.config, "computes_in_bf16", lambda: native)
    config = TrainConfig(mixed_precision="auto")
    assert config.mixed_precision == ("bf16" if native else "no")  # the resolved choice is what config.json keeps
    assert TrainConfig(mixed_precision="no").mixed_precision == "no"


def test_runs_of_different_precision_follow_each_other_in_one_process():
    # accelerate refuses a second mixed-precision setting in a process unless its state is cleared first.
    assert training.config.make_accelerator(TrainConfig(mixed_precision="no")).mixed_precision == "no"
    assert training.config.make_accelerator(TrainConfig(mixed_precision="bf16")).mixed_precision == "bf16"
    assert training.config.make_accelerator(TrainConfig(mixed_precision="no")).mixed_precision == "no"
