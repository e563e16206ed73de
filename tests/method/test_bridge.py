"""The differentiable bridge: exact forward value, KDE gradient, bandwidth rules, KDE subsample size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fcpts
from fcpts.method.bridge import (
    bandwidth,
    bridged_sparsity,
    histogram_cdf,
    kde_cdf,
    kde_density,
    scott_bandwidth,
    silverman_bandwidth,
)
from fcpts.method.threshold_mask import ThresholdMask, surrogate_masked


@pytest.fixture
def weight() -> torch.Tensor:
    return torch.randn(40, 25, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.3, 0.8, 1.7, 10.0])
def test_bridged_sparsity_forward_is_the_exact_fraction(weight, t):
    samples = weight.abs().flatten()
    h = bandwidth(samples, "silverman")
    s = bridged_sparsity(weight, torch.tensor(t, dtype=torch.float64), samples, h)
    count = int((weight.abs() <= t).sum())
    # The exact fraction count/n, as the float32 the mask's mean gives (no smoothing in the value).
    assert s.item() == torch.tensor(count / weight.numel(), dtype=torch.float32).item()
    assert round(s.item() * weight.numel()) == count


def test_bridged_sparsity_counts_ties_at_the_threshold_as_pruned():
    w = torch.tensor([0.1, -0.2, 0.2, 0.4])
    s = bridged_sparsity(w, torch.tensor(0.2), w.abs(), torch.tensor(0.05))
    assert s.item() == 0.75


@pytest.mark.parametrize("rule", ["silverman", "scott", 0.05])
@pytest.mark.parametrize("t", [0.02, 0.4, 1.1, 2.5])
def test_bridge_gradient_is_the_kde_density_and_the_cdf_slope(weight, rule, t):
    samples = weight.abs().flatten()
    h = bandwidth(samples, rule)
    threshold = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    bridged_sparsity(weight, threshold, samples, h).backward()
    grad = threshold.grad.item()
    eps = 1e-6
    fd = (
        kde_cdf(torch.tensor(t + eps, dtype=torch.float64), samples, h)
        - kde_cdf(torch.tensor(t - eps, dtype=torch.float64), samples, h)
    ).item() / (2 * eps)
    assert grad == pytest.approx(fd, rel=1e-6, abs=1e-9)
    assert grad == pytest.approx(kde_density(torch.tensor(t, dtype=torch.float64), samples, h).item(), rel=1e-10)
    # The hand-written reflected Gaussian KDE.
    x = samples.numpy()
    hv = h.item()
    by_hand = (np.exp(-0.5 * ((t - x) / hv) ** 2) + np.exp(-0.5 * ((t + x) / hv) ** 2)).mean() / (
        hv * math.sqrt(2 * math.pi)
    )
    assert grad == pytest.approx(by_hand, rel=1e-10)


def test_kde_cdf_bounds_and_reflection():
    x = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    h = torch.tensor(0.1, dtype=torch.float64)
    assert kde_cdf(torch.tensor(0.0, dtype=torch.float64), x, h).item() == 0.0
    assert kde_cdf(torch.tensor(100.0, dtype=torch.float64), x, h).item() == pytest.approx(1.0)
    # Reflection at 0: an all-zero sample's CDF is 1 - 2(1 - Phi(t/h)) = erf(t / (h sqrt 2)).
    zeros = torch.zeros(5, dtype=torch.float64)
    t = torch.tensor(0.07, dtype=torch.float64)
    assert kde_cdf(t, zeros, h).item() == pytest.approx(math.erf(0.07 / (0.1 * math.sqrt(2))), rel=1e-12)
    # A small bandwidth makes it the empirical CDF of |w| away from the samples.
    assert kde_cdf(
        torch.tensor(0.75, dtype=torch.float64), x, torch.tensor(1e-4, dtype=torch.float64)
    ).item() == pytest.approx(0.5)


def test_threshold_mask_sparsity_gradient_in_log_threshold_is_density_times_t():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(3))
    mask = ThresholdMask(w, threshold=0.6, kde_samples=256, generator=torch.Generator().manual_seed(0))
    s = mask.sparsity(w)
    assert s.item() == pytest.approx((w.abs() <= mask.threshold.detach()).float().mean().item(), abs=0)
    s.backward()
    samples = w.flatten()[mask.kde.index].abs().float()
    h = bandwidth(samples, "silverman")
    t = mask.threshold.detach()
    expected = (kde_density(t, samples, h) * t).item()
    assert mask.log_threshold.grad.item() == pytest.approx(expected, rel=1e-5)


def test_histogram_cdf_is_the_empirical_cdf_at_edges_and_linear_inside():
    x = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.45, 0.7, 1.2], dtype=torch.float64)
    width = 0.25
    h = torch.tensor(width / math.sqrt(12), dtype=torch.float64)
    for edge in (0.25, 0.5, 0.75, 1.0, 1.25):
        expected = (x < edge).double().mean().item()  # bins are [lo, lo + w): the edge belongs above
        assert histogram_cdf(torch.tensor(edge, dtype=torch.float64), x, h).item() == pytest.approx(expected)
    # Inside [0.25, 0.5): 2 of 7 below, 2 of 7 inside; the slope is the density 2 / (7 · 0.25).
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    value = histogram_cdf(t, x, h)
    value.backward()
    assert value.item() == pytest.approx(3 / 7 + (2 / 7) * (0.05 / 0.25))
    assert t.grad.item() == pytest.approx(2 / (7 * 0.25))


def test_threshold_mask_histogram_density_gradient():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(3))
    mask = ThresholdMask(w, 0.6, kde_samples=256, generator=torch.Generator().manual_seed(0), density="histogram")
    s = mask.sparsity(w)
    assert s.item() == (w.abs() <= mask.threshold.detach()).float().mean().item()  # exact value either way
    s.backward()
    samples = w.flatten()[mask.kde.index].abs().float()
    width = bandwidth(samples, "silverman") * math.sqrt(12)
    t = mask.threshold.detach()
    lo = torch.floor(t / width) * width
    density = ((samples >= lo) & (samples < lo + width)).float().mean() / width
    assert mask.log_threshold.grad.item() == pytest.approx((density * t).item(), rel=1e-5)
    with pytest.raises(ValueError, match="density"):
        ThresholdMask(w, 0.6, density="parzen")


def test_silverman_and_scott_match_their_formulas():
    x = torch.randn(500, generator=torch.Generator().manual_seed(11), dtype=torch.float64).abs()
    arr = x.numpy()
    sigma = arr.std(ddof=1)
    iqr = np.quantile(arr, 0.75) - np.quantile(arr, 0.25)
    m = arr.size
    assert silverman_bandwidth(x).item() == pytest.approx(0.9 * min(sigma, iqr / 1.34) * m**-0.2, rel=1e-12)
    assert scott_bandwidth(x).item() == pytest.approx(1.06 * sigma * m**-0.2, rel=1e-12)
    assert bandwidth(x, "silverman").item() == pytest.approx(silverman_bandwidth(x).item(), rel=1e-12)
    assert bandwidth(x, "scott").item() == pytest.approx(scott_bandwidth(x).item(), rel=1e-12)
    # The rules differ on this sample (Silverman uses min(σ, IQR/1.34) and 0.9).
    assert bandwidth(x, "silverman").item() < bandwidth(x, "scott").item()


def test_bandwidth_number_and_floor():
    x = torch.tensor([0.2, 0.4, 0.6, 0.8])
    assert bandwidth(x, 0.3).item() == pytest.approx(0.3)
    assert bandwidth(x, 1).item() == pytest.approx(1.0)
    floor = 1e-3 * 0.5
    assert bandwidth(x, 0.0).item() == pytest.approx(floor, rel=1e-5)
    # A degenerate sample (all equal: σ = IQR = 0) still gets a positive bandwidth.
    same = torch.full((10,), 0.25)
    for rule in ("silverman", "scott"):
        assert bandwidth(same, rule).item() == pytest.approx(0.25e-3, rel=1e-4)
    with pytest.raises(ValueError, match="unknown bandwidth rule"):
        bandwidth(x, "bogus")


@pytest.mark.parametrize(
    ("shape", "kde_samples"), [((10, 10), 4096), ((10, 10), 100), ((10, 10), 37), ((3, 4, 5, 5), 64)]
)
def test_kde_sample_length_is_capped(shape, kde_samples):
    w = torch.randn(*shape)
    mask = ThresholdMask(w, threshold=0.5, kde_samples=kde_samples)
    n = w.numel()
    assert mask.kde.index.shape == (min(n, kde_samples),)
    assert mask.kde.index.unique().numel() == min(n, kde_samples)  # sampled without replacement
    assert int(mask.kde.index.min()) >= 0 and int(mask.kde.index.max()) < n
    # Not a persistent buffer: it never reaches a state dict.
    assert list(mask.state_dict()) == ["log_threshold"]


def test_kde_sample_is_seeded():
    w = torch.randn(50, 50)
    a = ThresholdMask(w, 0.5, kde_samples=100, generator=torch.Generator().manual_seed(5))
    b = ThresholdMask(w, 0.5, kde_samples=100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.kde.index, b.kde.index)


# --- the batched bridge and the fused mask: the same values and gradients as the per-layer ops ---


def _composite_surrogate(weight, score, t, h):
    """The surrogate as plain autograd ops: the reference the fused :func:`surrogate_masked` must match."""
    keep = (score > t.detach()).to(weight.dtype)
    soft = torch.sigmoid((score.float() - t) / h).to(weight.dtype)
    return weight * (keep + (soft - soft.detach()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_surrogate_mask_matches_the_composite_ops(dtype):
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 5, 3, generator=gen, dtype=dtype)
    upstream = torch.randn(6, 5, 3, generator=gen, dtype=dtype)
    h = torch.tensor(0.2)
    grads = []
    for fn in (surrogate_masked, _composite_surrogate):
        weight = w.clone().requires_grad_(True)
        log_t = torch.tensor(math.log(0.7), requires_grad=True)
        out = fn(weight, weight.detach().abs(), log_t.exp(), h)
        (out * upstream).sum().backward()
        grads.append((out.detach(), weight.grad, log_t.grad))
    (out_a, gw_a, gt_a), (out_b, gw_b, gt_b) = grads
    assert torch.equal(out_a, out_b)  # the hard mask, bit for bit
    assert torch.equal(gw_a, gw_b)  # the masked upstream gradient
    assert torch.equal(gw_a == 0, w.abs() <= 0.7)
    assert gt_a.item() == pytest.approx(gt_b.item(), rel=1e-5)
    assert gt_a.item() != 0.0


def test_fused_surrogate_mask_without_threshold_gradient():
    w = torch.tensor([0.1, -0.5, 0.3], requires_grad=True)
    out = surrogate_masked(w, w.detach().abs(), torch.tensor(0.2), torch.tensor(0.1))
    out.sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0]


@pytest.mark.parametrize("density", ["kde", "histogram"])
def test_batched_global_sparsity_equals_the_sum_of_the_layer_bridges(density):
    gen = torch.Generator().manual_seed(5)
    net = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 3))
    prepared = fcpts.prepare(net, 0.7, kde_samples=500, density=density)
    for layer in prepared.layers:  # thresholds off the initial cut, so the gradients differ per layer
        layer.mask.log_threshold.data += 0.3 * torch.randn((), generator=gen)
    batched = prepared.global_sparsity()
    batched.backward()
    grads = [p.grad.clone() for p in prepared.threshold_parameters()]
    for p in prepared.threshold_parameters():
        p.grad = None
    total = prepared.total
    pairs = zip(prepared.layer_sparsities(), prepared.layers, strict=True)
    summed = sum(s * (layer.numel / total) for s, layer in pairs)
    summed.backward()
    assert batched.item() == pytest.approx(summed.item(), abs=1e-7)
    for g, p in zip(grads, prepared.threshold_parameters(), strict=True):
        assert g.item() == pytest.approx(p.grad.item(), rel=1e-5, abs=1e-9)
    assert any(g.item() != 0 for g in grads)


def test_batched_global_sparsity_with_a_frozen_layer():
    net = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 3))
    prepared = fcpts.prepare(net, 0.6)
    first = prepared.layers[0]
    first.mask.freeze(first.weight)
    with torch.no_grad():
        first.weight.mul_(0.0)  # the frozen mask holds whatever the weights become
    s = prepared.global_sparsity()
    s.backward()
    assert first.mask.log_threshold.grad is None  # a frozen layer's threshold no longer decides
    assert prepared.layers[1].mask.log_threshold.grad is not None
    pairs = zip(prepared.layer_sparsities(), prepared.layers, strict=True)
    expected = sum(ls.item() * layer.numel for ls, layer in pairs)
    assert s.item() == pytest.approx(expected / prepared.total, abs=1e-7)


@pytest.mark.parametrize("rule", ["silverman", "scott", 0.05])
def test_refresh_bandwidths_matches_each_layer_alone(rule):
    net = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 5), nn.Linear(5, 2))
    prepared = fcpts.prepare(net, 0.5, kde_samples=1000, bandwidth_rule=rule)
    prepared.refresh_bandwidths()
    for layer in prepared.layers:
        assert layer.mask.kde.is_current(layer.weight)
        alone = bandwidth(layer.mask.kde.values(layer.weight.detach().abs()), rule)
        assert layer.mask.bandwidth_of(layer.weight).item() == pytest.approx(alone.item(), rel=1e-6)
    with torch.no_grad():
        prepared.layers[0].weight.mul_(2.0)  # an in-place step makes that layer's bandwidth stale
    assert not prepared.layers[0].mask.kde.is_current(prepared.layers[0].weight)
    assert prepared.layers[1].mask.kde.is_current(prepared.layers[1].weight)


def test_refresh_bandwidths_skips_frozen_masks():
    net = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    prepared = fcpts.prepare(net, 0.5)
    frozen, learning = prepared.layers
    frozen.mask.freeze(frozen.weight)
    with torch.no_grad():  # an optimizer step: every cached bandwidth is stale
        for layer in prepared.layers:
            layer.weight.mul_(2.0)
    prepared.refresh_bandwidths()
    assert not frozen.mask.kde.is_current(frozen.weight)  # a frozen mask reads no bandwidth
    assert learning.mask.kde.is_current(learning.weight)
