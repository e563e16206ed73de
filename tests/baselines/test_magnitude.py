"""Magnitude pruning under fixed allocations: deterministic, and the global cut may leave a layer dense."""

from __future__ import annotations

import pytest
import torch

import fcpts
from tests.helpers import TINY_TOTAL, count_zeros


def test_magnitude_methods_are_deterministic(bn_net, calib_x):
    for method in ("uniform-magnitude", "erk-magnitude", "global-magnitude", "lamp-magnitude"):
        a = fcpts.prune(bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.5))
        b = fcpts.prune(bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.5))
        assert all(
            torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
        )


TARGETS = [0.1, 0.5, 0.77, 0.9, 0.99]


@pytest.mark.parametrize("target", TARGETS)
def test_global_magnitude_method_leaves_a_large_weight_layer_fully_dense(tiny_net, calib_x, target):
    with torch.no_grad():
        tiny_net.conv1.weight.mul_(1000.0)
    result = fcpts.prune(tiny_net, calib_x, fcpts.make_config("global-magnitude", target_sparsity=target))
    zeros = count_zeros(result.model)
    expected = round(target * TINY_TOTAL)
    assert sum(zeros.values()) == expected == result.zeros
    if expected <= TINY_TOTAL - 27:
        assert zeros["conv1"] == 0
