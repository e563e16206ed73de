"""prepare / finalize: exact global sparsity, and nothing of fcpts left afterwards."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fcpts
from fcpts.core.masks import target_zeros
from tests.helpers import TINY_LAYERS, TINY_TOTAL, TinyNet, count_zeros

TARGETS = [0.1, 0.5, 0.77, 0.9, 0.99]
MAGNITUDE_METHODS = ["uniform-magnitude", "erk-magnitude", "global-magnitude", "lamp-magnitude"]


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
    message = "560 zeros instead of the target 74: the model already had more exact zeros than the target"
    with pytest.warns(UserWarning, match=f"^{message}$"):
        plain = fcpts.finalize(prepared)
    assert count_zeros(plain) == {"conv1": 0, "conv2": 0, "fc1": 560, "fc2": 0}  # nothing more pruned


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
        plain = fcpts.finalize(fcpts.prepare(tiny_net, 0.9))
    assert sum(count_zeros(plain).values()) == target_zeros(0.9, TINY_TOTAL) == 669


def test_finalize_keeps_parameter_order(tiny_net, calib_x):
    """Removing a parametrization re-registers ``weight`` after ``bias``; finalize restores the dense
    order, so state_dict(), named_parameters() and parameters() match the dense model's."""
    dense_order = list(tiny_net.state_dict())
    assert dense_order[:2] == ["conv1.weight", "conv1.bias"]
    result = fcpts.prune(tiny_net, calib_x, fcpts.make_config("uniform-magnitude", target_sparsity=0.5))
    assert list(result.model.state_dict()) == dense_order
    assert [n for n, _ in result.model.named_parameters()] == [n for n, _ in tiny_net.named_parameters()]
