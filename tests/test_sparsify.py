"""Allocation rules, prepare/finalize, exact global sparsity, and nothing of fcpts left afterwards."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from conftest import TINY_LAYERS, TINY_TOTAL, TinyNet, count_zeros
from torch import nn
from torch.nn.utils import parametrize

import fcpts
from fcpts.core.allocation import achieved, allocate, erk, global_magnitude
from fcpts.core.calibration import Calibration
from fcpts.core.masks import target_zeros

TARGETS = [0.1, 0.5, 0.77, 0.9, 0.99]
MAGNITUDE_METHODS = ["uniform-magnitude", "erk-magnitude", "global-magnitude", "lamp-magnitude"]


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


# --- prepare / finalize: exact counts --------------------------------------------------------


@pytest.mark.parametrize("init", ["uniform", "erk", "global"])
@pytest.mark.parametrize("target", TARGETS)
def test_finalize_is_exact(tiny_net, init, target):
    prepared = fcpts.prepare(tiny_net, target, init=init)
    assert [pl.name for pl in prepared.layers] == TINY_LAYERS
    assert prepared.total == TINY_TOTAL
    plain = fcpts.finalize(prepared)
    assert sum(count_zeros(plain).values()) == round(target * TINY_TOTAL)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
def test_global_allocation_leaves_a_large_weight_layer_fully_dense(tiny_net, target):
    with torch.no_grad():
        tiny_net.fc2.weight.mul_(1000.0)  # fc2's |w| are all far above every other layer's
    zeros = count_zeros(fcpts.finalize(fcpts.prepare(tiny_net, target, init="global")))
    assert zeros["fc2"] == 0
    assert sum(zeros.values()) == round(target * TINY_TOTAL)


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


def test_tiny_threshold_keeps_a_layer_dense_after_finalize(tiny_net):
    prepared = fcpts.prepare(tiny_net, 0.6, init="uniform")
    with torch.no_grad():
        prepared.layers[1].mask.log_threshold.fill_(math.log(1e-9))  # conv2: keep everything
    plain = fcpts.finalize(prepared)
    zeros = count_zeros(plain)
    assert zeros["conv2"] == 0
    assert sum(zeros.values()) == round(0.6 * TINY_TOTAL)


def test_finalize_keeps_learned_values_of_kept_weights(tiny_net):
    dense = copy.deepcopy(tiny_net)
    prepared = fcpts.prepare(tiny_net, 0.5, init="erk")
    with torch.no_grad():
        prepared.layers[2].weight.add_(0.001)  # a "learned" update of fc1's stored weights
    plain = fcpts.finalize(prepared)
    kept = plain.fc1.weight != 0
    assert torch.equal(plain.fc1.weight[kept], dense.fc1.weight[kept] + 0.001)
    kept = plain.conv1.weight != 0
    assert torch.equal(plain.conv1.weight[kept], dense.conv1.weight[kept])


def test_exclude_keeps_a_layer_out_and_the_count_is_over_the_rest(tiny_net):
    prepared = fcpts.prepare(tiny_net, 0.5, init="uniform", layer_filter=fcpts.exclude("fc1"))
    assert [pl.name for pl in prepared.layers] == ["conv1", "conv2", "fc2"]
    zeros = count_zeros(fcpts.finalize(prepared))
    assert zeros["fc1"] == 0
    assert zeros["conv1"] + zeros["conv2"] + zeros["fc2"] == round(0.5 * (27 + 135 + 21))


def test_finalize_warns_when_the_model_already_has_more_zeros(tiny_net):
    with torch.no_grad():
        tiny_net.fc1.weight.zero_()  # 560 zeros > round(0.1 * 743)
    prepared = fcpts.prepare(tiny_net, 0.1, init="uniform")
    with pytest.warns(UserWarning, match="zeros instead of the target"):
        fcpts.finalize(prepared)


def test_prepare_twice_and_no_prunable_layer_are_errors(tiny_net):
    fcpts.prepare(tiny_net, 0.5)
    with pytest.raises(fcpts.FcptsError, match="already has a weight parametrization"):
        fcpts.prepare(tiny_net, 0.5)
    with pytest.raises(fcpts.FcptsError, match="no prunable layer"):
        fcpts.prepare(nn.Sequential(nn.Flatten(), nn.ReLU()), 0.5)


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan"), "0.5", None])
def test_prepare_rejects_bad_sparsity(tiny_net, bad):
    with pytest.raises(fcpts.FcptsError, match="open interval"):
        fcpts.prepare(tiny_net, bad)


# --- nothing of ours left --------------------------------------------------------------------


def assert_plain(model: nn.Module, dense: nn.Module) -> None:
    """``model`` has the same plain structure as ``dense`` and holds nothing of fcpts."""
    dense_modules = dict(dense.named_modules())
    assert [n for n, _ in model.named_modules()] == list(dense_modules)
    for name, m in model.named_modules():
        assert type(m) is type(dense_modules[name]), name
        assert not parametrize.is_parametrized(m), name
        assert not hasattr(m, "parametrizations"), name
        assert not m._forward_hooks and not m._forward_pre_hooks, name
        assert not m._backward_hooks and not m._backward_pre_hooks, name
        assert not m._state_dict_hooks and not m._load_state_dict_pre_hooks, name
        assert not any(isinstance(v, fcpts.ThresholdMask) for v in vars(m).values()), name
        if hasattr(dense_modules[name], "weight"):
            assert isinstance(m.weight, nn.Parameter) and m.weight.is_leaf
    # Same keys (the order is checked in test_finalize_keeps_parameter_order).
    assert sorted(model.state_dict()) == sorted(dense.state_dict())
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert sorted(names) == sorted([n for n, _ in dense.named_parameters()] + [n for n, _ in dense.named_buffers()])
    for n in names:
        assert not any(word in n for word in ("threshold", "kde", "original", "parametrizations")), n
    assert not any(isinstance(m, fcpts.ThresholdMask) for m in model.modules())
    dense_params = dict(dense.named_parameters())
    for n, p in model.named_parameters():
        assert p.requires_grad == dense_params[n].requires_grad, n
        assert p.shape == dense_params[n].shape and p.dtype == dense_params[n].dtype, n
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks


def test_finalize_leaves_plain_modules(tiny_net):
    dense = copy.deepcopy(tiny_net)
    plain = fcpts.finalize(fcpts.prepare(tiny_net, 0.5))
    assert plain is tiny_net
    assert type(plain) is TinyNet
    assert type(plain.fc1) is nn.Linear and type(plain.conv1) is nn.Conv2d
    assert_plain(plain, dense)
    # The plain model still loads the dense state dict and runs.
    plain.load_state_dict(dense.state_dict())
    assert plain(torch.rand(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("method", ["fcpts", *MAGNITUDE_METHODS])
def test_prune_returns_a_plain_model_and_keeps_the_input(tiny_net, calib_x, method):
    dense_state = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    dense = copy.deepcopy(tiny_net)
    options = {"iters": 3, "feature_modules": ("conv2",), "batch_size": 16} if method == "fcpts" else {}
    result = fcpts.prune(tiny_net, calib_x, fcpts.make_config(method, target_sparsity=0.6, **options))
    assert result.model is not tiny_net
    assert_plain(result.model, dense)
    assert sum(count_zeros(result.model).values()) == round(0.6 * TINY_TOTAL)
    # The input model is untouched: same weights, no zeros added, still plain.
    assert all(torch.equal(tiny_net.state_dict()[k], v) for k, v in dense_state.items())
    assert all(count == 0 for count in count_zeros(tiny_net).values())
    assert_plain(tiny_net, dense)


def test_prune_of_a_model_with_frozen_params_restores_the_flags(tiny_net, calib_x):
    tiny_net.conv1.weight.requires_grad_(False)
    tiny_net.fc2.bias.requires_grad_(False)
    result = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.5, iters=2, batch_size=16))
    flags = {n: p.requires_grad for n, p in result.model.named_parameters()}
    assert flags == {n: p.requires_grad for n, p in tiny_net.named_parameters()}
    assert flags["conv1.weight"] is False and flags["fc2.bias"] is False and flags["fc1.weight"] is True


def test_no_warnings_on_a_normal_finalize(tiny_net):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fcpts.finalize(fcpts.prepare(tiny_net, 0.9))


def test_finalize_keeps_parameter_order(tiny_net, calib_x):
    """Removing a parametrization re-registers ``weight`` after ``bias``; finalize restores the dense
    order, so state_dict(), named_parameters() and parameters() match the dense model's."""
    dense_order = list(tiny_net.state_dict())
    assert dense_order[:2] == ["conv1.weight", "conv1.bias"]
    result = fcpts.prune(tiny_net, calib_x, fcpts.make_config("uniform-magnitude", target_sparsity=0.5))
    assert list(result.model.state_dict()) == dense_order
    assert [n for n, _ in result.model.named_parameters()] == [n for n, _ in tiny_net.named_parameters()]


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


def test_fixed_allocation_keeps_its_masks_while_the_weights_learn(calib_x):
    """``learn_thresholds=False``: the finalized masks are the initial ones (their count is exact here)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    config = fcpts.FCPTSConfig(target_sparsity=0.75, iters=30, lr_weight=0.05, init="uniform", learn_thresholds=False)
    prepared = fcpts.prepare(copy.deepcopy(net), 0.75, init="uniform")
    initial = [layer.module.weight.detach() != 0 for layer in prepared.layers]
    dense = [layer.weight.detach().clone() for layer in prepared.layers]
    fcpts.learn(prepared, net, Calibration(calib_x.flatten(1), 16), config)
    assert any(not torch.equal(layer.weight, d) for layer, d in zip(prepared.layers, dense, strict=True))
    plain = fcpts.finalize(prepared)
    final = [plain[1].weight != 0, plain[3].weight != 0]
    assert all(torch.equal(a, b) for a, b in zip(initial, final, strict=True))
    assert sum(int((~m).sum()) for m in final) == target_zeros(0.75, 64 * 16 + 16 * 8)


def test_masks_frozen_after_a_fraction_of_the_steps(calib_x):
    """``freeze_masks_at=0.5``: thresholds learn for 10 steps; then finalize's exact masks of step 10 hold."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8))
    config = fcpts.FCPTSConfig(target_sparsity=0.75, iters=20, lr_weight=0.05, lr_threshold=0.1, freeze_masks_at=0.5)
    prepared = fcpts.prepare(copy.deepcopy(net), 0.75)
    history = fcpts.learn(prepared, net, Calibration(calib_x.flatten(1), 16), config)
    before, after = [h["sparsity"] for h in history[:10]], [h["sparsity"] for h in history[10:]]
    assert len(set(before)) > 1  # the allocation moved while it was learned
    assert len(set(after)) == 1  # and not once the masks were frozen
    frozen = [layer.mask.frozen_keep for layer in prepared.layers]
    assert all(f is not None for f in frozen)
    zeros = target_zeros(0.75, 64 * 16 + 16 * 8)
    assert sum(int((~f).sum()) for f in frozen) == zeros  # frozen at the exact count
    plain = fcpts.finalize(prepared)
    assert all(torch.equal(m.weight != 0, f) for m, f in zip((plain[1], plain[3]), frozen, strict=True))


@pytest.mark.parametrize(
    ("field", "value"),
    [("freeze_masks_at", 1.5), ("freeze_masks_at", -0.1), ("refit_rank", "x"), ("refit_samples", -1)],
)
def test_new_fcpts_options_are_validated(field, value):
    with pytest.raises(fcpts.FcptsError, match=field):
        fcpts.FCPTSConfig(target_sparsity=0.5, **{field: value})
