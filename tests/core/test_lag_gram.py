"""Depthwise Gram matrices from lag sums (:mod:`fcpts.core.lag_gram`) against a float64 unfold."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fcpts.core import grouped_input, lag_gram
from fcpts.core.activations import gram
from fcpts.core.lag_gram import LagSums

pytestmark = pytest.mark.skipif(lag_gram.library() is None, reason="no C++ compiler: the lag-sum kernel is not built")

#: (kernel, dilation, stride): square and not, dilated, strided beyond the kernel, 1-d (height 1).
GEOMETRIES = [((3, 3), (1, 1), (1, 1)), ((5, 5), (1, 1), (2, 2)), ((3, 2), (2, 1), (1, 3)), ((1, 4), (1, 2), (1, 2))]


def unfolded(x: torch.Tensor, y: torch.Tensor, kernel, dilation, stride) -> torch.Tensor:
    """(C, K, K) float64: Σ over samples and positions of the unfolded columns' outer products."""
    c = x.shape[1]
    u = F.unfold(x.double(), kernel, dilation, 0, stride)  # (N, C·K, positions)
    v = F.unfold(y.double(), kernel, dilation, 0, stride)
    u, v = u.view(u.shape[0], c, -1, u.shape[2]), v.view(v.shape[0], c, -1, v.shape[2])
    return torch.einsum("nckp,ncjp->ckj", u, v)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("symmetric", [True, False], ids=["XtX", "cross"])
def test_lag_sums_match_the_unfolded_gram_over_batches_and_image_sizes(geometry, symmetric):
    torch.manual_seed(0)
    kernel, dilation, stride = geometry
    sums = LagSums(kernel, dilation, stride, symmetric)
    batches = [(torch.randn(3, 4, 11, 12), torch.randn(3, 4, 11, 12)) for _ in range(2)]
    batches.append((torch.randn(2, 4, 9, 13), torch.randn(2, 4, 9, 13)))  # another size: planes flushed
    expected = torch.zeros(4, kernel[0] * kernel[1], kernel[0] * kernel[1], dtype=torch.float64)
    for x, y in batches:
        y = x if symmetric else y
        sums.add(x, None if symmetric else y)
        expected += unfolded(x, y, kernel, dilation, stride)
    got = sums.gram()
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)
    if symmetric:
        assert torch.equal(got, got.transpose(1, 2))


def test_a_plane_the_kernel_just_fits_has_one_position():
    sums = LagSums((3, 3), (1, 1), (1, 1), symmetric=True)
    sums.add(torch.ones(1, 1, 3, 3))  # one output position: every tap reads a 1
    assert torch.equal(sums.gram(), torch.ones(1, 9, 9))


def test_the_diagonal_alone_is_each_taps_sum_of_squares():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 9)
    diagonal = LagSums((3, 3), (2, 1), (2, 1), symmetric=True, diagonal=True)
    diagonal.add(x)
    full = unfolded(x, x, (3, 3), (2, 1), (2, 1))
    got = diagonal.gram()
    torch.testing.assert_close(torch.diagonal(got, dim1=1, dim2=2).double(), torch.diagonal(full, dim1=1, dim2=2))
    assert torch.count_nonzero(got - torch.diag_embed(torch.diagonal(got, dim1=1, dim2=2))) == 0


def test_planes_too_large_fall_back_to_unfolding(monkeypatch):
    """A depthwise input whose lag planes would pass PLANE_ELEMENTS is unfolded: the same Gram matrix."""
    conv = torch.nn.Conv2d(3, 3, 3, padding=1, groups=3)
    x = torch.randn(2, 3, 6, 6)
    small = grouped_input.GroupedInput(conv, x)
    assert small.lag_sums() and small.plane_elements == 3 * 25 * 8 * 8
    monkeypatch.setattr(grouped_input, "PLANE_ELEMENTS", small.plane_elements - 1)
    assert not grouped_input.GroupedInput(conv, x).lag_sums()
    net = torch.nn.Sequential(torch.nn.Identity(), conv)
    unfolded_g, _, _ = gram(net, "1", [x])
    monkeypatch.setattr(grouped_input, "PLANE_ELEMENTS", small.plane_elements)
    lag_g, _, _ = gram(net, "1", [x])
    torch.testing.assert_close(lag_g, unfolded_g, rtol=1e-5, atol=1e-5)
