"""Data spec resolution and Split."""

from __future__ import annotations

import pytest
import torch

import fcpts
from fcpts.data.specs import Split, load_data


def test_unknown_data_spec():
    for spec in ("mnist", "npz:", "imagefolder:", "cifar10:foo"):
        with pytest.raises(fcpts.FcptsError, match="unknown data spec"):
            load_data(spec)


def test_split_subset_is_seeded_and_without_replacement():
    split = Split(torch.arange(10).float().view(10, 1), torch.arange(10))
    a, b = split.subset(4, seed=1), split.subset(4, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.y.unique().numel() == 4
    assert torch.equal(a.x.view(-1).long(), a.y)  # x and y stay paired
    assert split.subset(None, 0) is split and split.subset(50, 0) is split
