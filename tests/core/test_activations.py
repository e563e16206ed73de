"""Activation statistics: conv input columns and their norms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fcpts.core.activations import input_columns, input_norms


def test_conv_columns_reproduce_the_conv_and_their_norms():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    x = torch.randn(4, 2, 7, 7)
    cols = input_columns(conv, x)  # (4·4·4, 18)
    y = conv(x)  # (4, 3, 4, 4)
    assert cols.shape == (64, 18)
    expected = y.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(cols @ conv.weight.flatten(1).T, expected, rtol=1e-5, atol=1e-5)
    norms = input_norms(conv, {"c": conv}, [x[:2], x[2:]])["c"]
    torch.testing.assert_close(norms, cols.norm(dim=0))


def test_pointwise_conv_columns_are_unfolds_rows_in_both_memory_formats():
    conv = nn.Conv2d(5, 3, 1)
    x = torch.rand(2, 5, 4, 3)
    expected = F.unfold(x, 1).transpose(1, 2).reshape(-1, 5)
    for layout in (x, x.contiguous(memory_format=torch.channels_last)):
        got = input_columns(conv, layout)
        assert torch.equal(got, expected) and got.is_contiguous()
    strided = nn.Conv2d(5, 3, 1, stride=2)  # not pointwise in this sense: unfold's path
    assert input_columns(strided, x).shape == (2 * 2 * 2, 5)
