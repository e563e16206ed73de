"""ThresholdMask on hand-written weights: outputs, gradients, ties at the threshold, frozen masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fcpts
from fcpts.core.masks import hard_mask
from fcpts.method.threshold_mask import ThresholdMask

# |w| = 0.1 ... 0.8, shuffled and with mixed signs.
W8 = torch.tensor([[0.5, -0.1, 0.8, -0.3, 0.2, -0.7, 0.4, -0.6]])


def linear8() -> nn.Linear:
    layer = nn.Linear(8, 1)
    with torch.no_grad():
        layer.weight.copy_(W8)
        layer.bias.fill_(0.25)
    return layer


def test_threshold_mask_output_and_threshold():
    mask = ThresholdMask(W8, threshold=0.45)
    assert mask.threshold.item() == pytest.approx(0.45, rel=1e-6)
    assert isinstance(mask.log_threshold, nn.Parameter)
    out = mask(W8)
    expected = torch.tensor([[0.5, 0.0, 0.8, 0.0, 0.0, -0.7, 0.0, -0.6]])
    assert torch.equal(out, expected)
    with torch.no_grad():
        mask.log_threshold.fill_(torch.tensor(0.15).log())
    assert torch.equal(mask(W8), torch.tensor([[0.5, 0.0, 0.8, -0.3, 0.2, -0.7, 0.4, -0.6]]))


def test_threshold_mask_rejects_unknown_threshold_grad():
    with pytest.raises(ValueError, match="threshold_grad"):
        ThresholdMask(W8, 0.45, threshold_grad="exact")


def test_threshold_mask_weight_gradient_is_masked_and_surrogate_reaches_threshold():
    w = W8.clone().requires_grad_(True)
    mask = ThresholdMask(W8, threshold=0.45, threshold_grad="surrogate", bandwidth_rule=0.1)
    mask(w).sum().backward()
    keep = (W8.abs() > 0.45).float()
    assert torch.equal(w.grad, keep)  # d(sum W*m)/dW = m: pruned weights get no gradient
    # Surrogate: d/d log t of sum(W * sigmoid((|W| - t)/h)) = sum(W * -sigmoid'(z)/h) * t.
    t, h = torch.tensor(0.45), torch.tensor(0.1)
    z = (W8.abs() - t) / h
    sig = torch.sigmoid(z)
    expected = (W8 * (-(sig * (1 - sig)) / h)).sum() * t
    assert mask.log_threshold.grad.item() == pytest.approx(expected.item(), rel=1e-4)

    frozen = ThresholdMask(W8, threshold=0.45, threshold_grad="none")
    w2 = W8.clone().requires_grad_(True)
    frozen(w2).sum().backward()
    assert frozen.log_threshold.grad is None
    assert torch.equal(w2.grad, keep)


@pytest.mark.parametrize(
    ("sparsity", "expected"),
    [
        (0.5, [[0.5, 0.0, 0.8, 0.0, 0.0, -0.7, 0.0, -0.6]]),
        (0.25, [[0.5, 0.0, 0.8, -0.3, 0.0, -0.7, 0.4, -0.6]]),
        (0.875, [[0.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0]]),
    ],
)
def test_prepare_uniform_on_a_hand_written_linear(sparsity, expected):
    layer = linear8()
    prepared = fcpts.prepare(layer, sparsity, init="uniform")
    assert parametrize.is_parametrized(layer, "weight")
    assert [pl.name for pl in prepared.layers] == [""]
    assert prepared.layers[0].initial_sparsity == sparsity
    assert torch.equal(layer.weight, torch.tensor(expected))
    # The dense weights are still stored underneath.
    assert torch.equal(layer.parametrizations.weight.original, W8)
    assert prepared.global_sparsity().item() == pytest.approx(sparsity)
    # Forward uses the masked weight.
    x = torch.ones(1, 8)
    assert layer(x).item() == pytest.approx(sum(expected[0]) + 0.25, abs=1e-6)
    plain = fcpts.finalize(prepared)
    assert type(plain) is nn.Linear
    assert torch.equal(plain.weight, torch.tensor(expected))
    assert plain.bias.item() == 0.25


def test_threshold_mask_prunes_a_weight_exactly_at_the_threshold():
    mask = ThresholdMask(W8, threshold=0.3)
    t = mask.threshold.detach()
    w = torch.stack([t, -t, t * 2, t / 2, t, t * 3, -t / 4, t]).view(1, 8)  # same shape as W8
    zero = t * 0
    assert torch.equal(mask(w), torch.stack([zero, zero, t * 2, zero, zero, t * 3, zero, zero]).view(1, 8))
    # ...consistent with hard_mask and with the exact sparsity of the bridge.
    assert torch.equal(mask(w) != 0, hard_mask(w, t))
    assert mask.sparsity(w).item() == 0.75


# --- frozen masks: a fixed allocation with reconstruction ---------------------------------------


def test_frozen_mask_holds_whatever_the_weights_become():
    w = torch.tensor([[0.1, -0.5, 0.3, -0.05, 0.25, -0.7, 0.15, 0.4]])
    mask = fcpts.ThresholdMask(w, threshold=0.2)
    mask.freeze(w)
    moved = torch.tensor([[0.9, -0.01, 0.3, -0.05, 0.19, -0.7, 0.15, 0.4]])  # two weights crossed t
    assert torch.equal(mask(moved), moved * torch.tensor([[0.0, 1, 1, 0, 1, 1, 0, 1]]))
    assert mask.sparsity(moved).item() == 3 / 8
    score = mask.ranking_score(moved)
    assert (score[0, [1, 2, 4, 5, 7]] > 1).all() and (score[0, [0, 3, 6]] <= 1).all()
