"""Layer-after-layer scoring: the input norms of one layer on the model as it is, and the uniform counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fcpts.core.activations import input_norms
from fcpts.core.calibration import Calibration
from fcpts.core.replay import Replay
from fcpts.core.scoring import allocation_counts, current_norms
from fcpts.errors import FcptsError
from tests.core.test_padding_tokens import TokenNet, batches


def test_current_norms_equal_one_pass_norms_on_an_unpruned_model():
    # Same sums in the same order: bit for bit, padding tokens left out alike.
    torch.manual_seed(0)
    net = TokenNet()
    padded, _ = batches()
    layers = {"fc1": net.fc1, "fc2": net.fc2}
    once = input_norms(net, layers, padded + padded)
    replay = Replay(net, lambda: padded + padded)
    for name in layers:
        assert torch.equal(current_norms(net, name, replay), once[name])


def test_current_norms_of_a_grouped_conv_in_a_chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=2, padding=1))
    x = [torch.randn(2, 4, 5, 5), torch.randn(3, 4, 5, 5)]
    once = input_norms(net, {"2": net[2]}, x)["2"]
    replayed = current_norms(net, "2", Replay(net, lambda: x))
    assert replayed.shape == (2, 18)  # 2 groups of 2 input channels × 3×3
    assert torch.equal(replayed, once)


def test_current_norms_of_a_layer_never_called():
    net = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    net.forward = lambda x: net["used"](x)  # type: ignore[method-assign]
    with pytest.raises(FcptsError, match="'unused' was never called"):
        current_norms(net, "unused", Replay(net, lambda: [torch.ones(1, 2)]))


class Config:
    allocation, importance, target_sparsity = "uniform", "wanda", 0.5


def test_uniform_counts_read_no_calibration():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))

    def no_data():
        raise AssertionError("the uniform allocation read the calibration data")
        yield

    calibration = Calibration.__new__(Calibration)
    calibration.epoch = no_data  # type: ignore[method-assign]
    layers = {"0": net[0], "1": net[1]}
    # 12 weights, 6 zeros: 9 · 0.5 = 4.5 and 3 · 0.5 = 1.5, rounded to the exact total as layer_counts rounds.
    assert allocation_counts(net, layers, calibration, Config()) == [5, 1]
