"""prior.layers: the masked convolution keeps exactly the taps its mask draws (type A hides the centre, type B
shows it), the mask is a derived buffer applied as weight * mask, and hidden taps get no gradient."""

import pytest
import torch

from conftest import from_offsets, masked_offsets
from prior.layers import MaskedConv2d



def test_mask_a_hides_the_centre_and_b_shows_it():
    expected_a = torch.tensor([[1, 1, 1, 1, 1],
                               [1, 1, 1, 1, 1],
                               [1, 1, 0, 0, 0],
                               [0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0]], dtype=torch.float)
    expected_b = expected_a.clone()
    expected_b[2, 2] = 1
    assert torch.equal(MaskedConv2d(2, 3, 5, "A").mask[0, 0], expected_a)
    assert torch.equal(MaskedConv2d(2, 3, 5, "B").mask[0, 0], expected_b)
    assert torch.equal(MaskedConv2d(2, 3, (1, 5), "A").mask[0, 0], torch.tensor([[1.0, 1, 0, 0, 0]]))
    assert torch.equal(MaskedConv2d(2, 3, (1, 5), "B").mask[0, 0], torch.tensor([[1.0, 1, 1, 0, 0]]))


def test_mask_is_a_derived_buffer_and_the_weight_is_never_masked_in_place():
    conv = MaskedConv2d(2, 3, 3, "A")
    assert "mask" in dict(conv.named_buffers()) and "mask" not in conv.state_dict()
    before = conv.weight.detach().clone()
    conv(torch.randn(1, 2, 4, 4)).sum().backward()
    assert torch.equal(conv.weight, before)
    assert (conv.weight[:, :, 1, 1] != 0).all()  # the hidden centre tap still holds its own value
    assert (conv.weight.grad * (1 - conv.mask) == 0).all()  # hidden taps get no gradient


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_masked_conv_reads_exactly_its_mask(mask_type, kernel_size):
    h, w = 5, 6
    conv = MaskedConv2d(3, 4, kernel_size, mask_type).double()
    x = torch.randn(h * w, 3, h, w, dtype=torch.double, requires_grad=True)
    out = conv(x).flatten(2)[torch.arange(h * w), :, torch.arange(h * w)]  # output position p of copy p
    out.sum().backward()
    dep = x.grad.abs().sum(1).flatten(1) != 0
    assert torch.equal(dep, from_offsets(masked_offsets(kernel_size, mask_type), h, w))
    diagonal = dep.diagonal()
    assert not diagonal.any() if mask_type == "A" else diagonal.all()
