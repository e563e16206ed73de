"""Scores and counts: the uniform allocation's counts read no calibration data."""

from __future__ import annotations

from torch import nn

from fcpts.core.calibration import Calibration
from fcpts.core.scoring import allocation_counts


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
