"""Allocation rules: uniform, ERK, global, LAMP, OWL; exact totals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fcpts.core.allocation import achieved, allocate, erk, global_magnitude, owl
from fcpts.core.masks import layer_counts, target_zeros
from tests.helpers import TINY_LAYERS, TINY_TOTAL

# --- OWL ------------------------------------------------------------------------------------------


def test_owl_sparsities_add_up_to_the_target_exactly():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(n, generator=g) for n in (50, 333, 1000, 77)]
    scores[1][:20] = 100.0  # the layer with the most outliers
    target = 0.7
    sparsities = owl(scores, target)
    assert achieved(sparsities, scores) == pytest.approx(target, abs=1e-12)
    assert min(range(4), key=lambda i: sparsities[i]) == 1
    assert max(sparsities) - min(sparsities) == pytest.approx(2 * 0.08)
    counts = layer_counts(sparsities, [s.numel() for s in scores], round(target * 1460))
    assert sum(counts) == round(target * 1460)


TARGETS = [0.1, 0.5, 0.77, 0.9, 0.99]


def tiny_weights(net: nn.Module) -> list[torch.Tensor]:
    return [getattr(net, name).weight.detach() for name in TINY_LAYERS]


# --- allocation rules ------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rule", ["uniform", "erk", "global", "lamp"])
def test_allocation_sums_to_the_target(tiny_net, rule, target):
    weights = tiny_weights(tiny_net)
    sparsities = allocate(rule, weights, target)
    assert len(sparsities) == 4
    assert all(0.0 <= s <= 1.0 for s in sparsities)
    numels = [w.numel() for w in weights]
    pruned = sum(s * n for s, n in zip(sparsities, numels, strict=True))
    if rule in ("global", "lamp"):  # whole weights: exactly round(target * N)
        assert round(pruned) == target_zeros(target, TINY_TOTAL)
        assert pruned == pytest.approx(target_zeros(target, TINY_TOTAL), abs=1e-3)
    else:
        assert pruned == pytest.approx(target * TINY_TOTAL, abs=1e-6)
        assert achieved(sparsities, weights) == pytest.approx(target, abs=1e-12)


def test_uniform_is_the_target_everywhere(tiny_net):
    assert allocate("uniform", tiny_weights(tiny_net), 0.77) == [0.77] * 4


def test_erk_scores_and_density_cap():
    # Density ∝ (Σ dims)/(Π dims): 10×10 scores 0.2, 100×100 scores 0.02.
    # target 0.9: budget 1010 kept, ε = 1010 / (0.2·100 + 0.02·10000) = 4.5909...
    s = erk([torch.ones(10, 10), torch.ones(100, 100)], 0.9)
    eps = 1010 / 220
    assert s == pytest.approx([1 - 0.2 * eps, 1 - 0.02 * eps], abs=1e-12)
    # A 4×4 layer would get density > 1: it is made dense (sparsity 0) and the rest rescaled.
    s = erk([torch.ones(4, 4), torch.ones(100, 100)], 0.5)
    assert s[0] == 0.0
    assert s[1] == pytest.approx((10000 - (0.5 * 10016 - 16)) / 10000, abs=1e-12)
    assert achieved(s, [torch.ones(4, 4), torch.ones(100, 100)]) == pytest.approx(0.5, abs=1e-12)
    # Conv shapes use all four dims: (out + in + kh + kw) / (out·in·kh·kw).
    s = erk([torch.ones(8, 4, 3, 3), torch.ones(16, 8, 3, 3)], 0.6)
    raw = [18 / 288, 30 / 1152]
    eps = 0.4 * (288 + 1152) / (raw[0] * 288 + raw[1] * 1152)
    assert s == pytest.approx([1 - eps * raw[0], 1 - eps * raw[1]], abs=1e-12)


@pytest.mark.parametrize("target", [0.05, 0.3, 0.6, 0.95])
def test_erk_never_exceeds_density_one(target):
    weights = [torch.ones(2, 2), torch.ones(3, 5), torch.ones(50, 60), torch.ones(8, 4, 3, 3), torch.ones(200, 10)]
    s = erk(weights, target)
    assert all(0.0 <= x <= 1.0 for x in s)
    assert achieved(s, weights) == pytest.approx(target, abs=1e-9)
    if target <= 0.3:
        assert s[0] == 0.0  # the 2×2 layer is capped at density 1


def test_global_allocation_is_one_threshold():
    weights = [torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0.3, 0.2, 0.8, 0.7])]
    # 7 weights, target 0.43 -> 3 zeros: 0.1, 0.2, 0.3
    assert global_magnitude(weights, 0.43) == pytest.approx([1 / 3, 2 / 4])


def test_lamp_scores_by_hand():
    """Layer a: |w| 1, 2 → scores 1/5, 4/4; layer b: 10..40 → 100/3000, 400/2900, 900/2500, 1.
    The three lowest scores (1/30, 4/29, 1/5) prune one weight of a and two of b."""
    weights = [torch.tensor([2.0, -1.0]), torch.tensor([40.0, -10.0, 30.0, 20.0])]
    assert allocate("lamp", weights, 0.5) == [0.5, 0.5]
    # At 1/6 only b's smallest goes; LAMP never empties a layer before its largest weight is the lowest left.
    assert allocate("lamp", weights, 1 / 6) == [0.0, 0.25]


def test_unknown_allocation():
    with pytest.raises(ValueError, match="unknown allocation"):
        allocate("bogus", [torch.ones(3)], 0.5)
