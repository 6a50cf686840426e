"""prior.sampling: what a sampling call draws when told nothing (the training mix of classes, the chosen settings)."""

import pytest
import torch

from conftest import seeded, small_prior
from prior import generate
from prior.sampling import NO_LABEL, SamplingConfig, class_mix, resolve_labels, settings_for

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
    with pytest.raises(ValueError, match="n must be a positive integer"):
        resolve_labels(None, 0, **config)


def test_settings_take_the_defaults_and_guide_only_where_there_are_labels():
    defaults = SamplingConfig(temperature=0.9, top_k=None, top_p=None, guidance_scale=2.0)
    labels = torch.tensor([0, 1])
    assert settings_for(labels, defaults) == {"temperature": 0.9, "top_k": None, "top_p": None, "guidance_scale": 2.0}
    assert settings_for(None, defaults)["guidance_scale"] == 1.0
    assert settings_for(None, defaults, guidance_scale=3.0)["guidance_scale"] == 3.0  # generate() refuses it
    assert settings_for(labels, defaults, temperature=1.2, top_k=5) == {
        "temperature": 1.2, "top_k": 5, "top_p": None, "guidance_scale": 2.0}


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
    there are labels), at the temperature and filters of SamplingConfig."""
    model = small_prior("pixelcnn", num_classes=3)
    labels = torch.tensor([0, 1, 2, 1])
    defaults = SamplingConfig()
    assert torch.equal(generate(model, 4, labels=labels, generator=seeded()),
                       generate(model, 4, labels=labels, generator=seeded(), temperature=defaults.temperature,
                                guidance_scale=defaults.guidance_scale, top_k=defaults.top_k, top_p=defaults.top_p))
    assert defaults.guidance_scale != 1
    assert torch.equal(generate(model, 4, generator=seeded()), generate(model, 4, generator=seeded(),
                                                                         guidance_scale=1.0))
