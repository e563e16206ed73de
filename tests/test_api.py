"""fcpts.prune and its result: exact counts for every method, N:M groups, determinism, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import fcpts
from tests.helpers import TINY_LAYERS, TINY_TOTAL, count_zeros


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight == 0 for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


# --- results -----------------------------------------------------------------------------------


def test_prune_result_fields(tiny_net, calib_x):
    config = fcpts.FCPTSConfig(target_sparsity=0.77, iters=4, batch_size=16)
    result = fcpts.prune(tiny_net, calib_x, config)
    k = round(0.77 * TINY_TOTAL)
    assert result.method == "fcpts"
    assert result.target_sparsity == 0.77
    assert (result.zeros, result.numel) == (k, TINY_TOTAL)
    assert result.global_sparsity == k / TINY_TOTAL
    assert [layer.name for layer in result.layers] == TINY_LAYERS
    assert [layer.numel for layer in result.layers] == [27, 135, 560, 21]
    zeros = count_zeros(result.model)
    assert {layer.name: layer.zeros for layer in result.layers} == zeros
    assert result.layer_sparsity == {
        name: zeros[name] / n for name, n in zip(TINY_LAYERS, [27, 135, 560, 21], strict=True)
    }
    assert [h["step"] for h in result.history] == [0, 1, 2, 3]
    assert all(set(h) >= {"loss", "rec", "feature", "sparsity"} for h in result.history)
    assert result.wall_time_s > 0
    assert result.config["method"] == "fcpts"
    assert result.config["iters"] == 4 and result.config["target_sparsity"] == 0.77
    assert result.config["layer_filter"] == "default_layer_filter"
    assert not result.model.training


@pytest.mark.parametrize("target", [0.1, 0.5, 0.77, 0.9, 0.99])
@pytest.mark.parametrize(
    "method", ["fcpts", "uniform-magnitude", "erk-magnitude", "global-magnitude", "lamp-magnitude"]
)
def test_prune_is_exact_for_every_method(tiny_net, calib_x, method, target):
    options = {"iters": 3, "batch_size": 16} if method == "fcpts" else {}
    result = fcpts.prune(tiny_net, calib_x, fcpts.make_config(method, target_sparsity=target, **options))
    k = round(target * TINY_TOTAL)
    assert sum(count_zeros(result.model).values()) == k
    assert result.zeros == k
    assert result.global_sparsity == k / TINY_TOTAL
    assert result.method == method


def test_make_config_defaults_and_overrides():
    config = fcpts.make_config("erk-magnitude", target_sparsity=0.8)
    assert isinstance(config, fcpts.MagnitudeConfig)
    assert (config.allocation, config.method, config.recalibrate_bn) == ("erk", "erk-magnitude", True)
    assert fcpts.make_config("global-magnitude", target_sparsity=0.8).allocation == "global"
    assert fcpts.make_config("uniform-magnitude", target_sparsity=0.8).allocation == "uniform"
    fc = fcpts.make_config("fcpts", target_sparsity=0.8, iters=7)
    assert isinstance(fc, fcpts.FCPTSConfig) and fc.iters == 7 and fc.method == "fcpts"
    assert fc.recalibrate_bn is False
    assert set(fcpts.METHODS) >= {"fcpts", "uniform-magnitude", "erk-magnitude", "global-magnitude"}
    with pytest.raises(fcpts.FcptsError, match="unknown method"):
        fcpts.make_config("bogus", target_sparsity=0.5)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_masks_and_weights(tiny_net, calib_x):
    config = fcpts.FCPTSConfig(target_sparsity=0.8, iters=6, batch_size=16, seed=3, kde_samples=64)
    a = fcpts.prune(tiny_net, calib_x, config)
    b = fcpts.prune(tiny_net, calib_x, config)
    ma, mb = masks_of(a.model), masks_of(b.model)
    assert ma.keys() == mb.keys()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(
        torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )
    assert a.history == b.history and len(a.history) == 6


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 0.0, 1, 1.0, -0.1, 1.5, float("nan")])
@pytest.mark.parametrize("method", ["fcpts", "uniform-magnitude"])
def test_bad_sparsity_raises_fcpts_error(method, bad):
    with pytest.raises(fcpts.FcptsError, match="open interval"):
        fcpts.make_config(method, target_sparsity=bad)
    with pytest.raises(fcpts.FcptsError):
        fcpts.FCPTSConfig(target_sparsity=bad)


def test_bad_options_raise_fcpts_error():
    with pytest.raises(fcpts.FcptsError, match="batch_size"):
        fcpts.FCPTSConfig(target_sparsity=0.5, batch_size=0)
    with pytest.raises(fcpts.FcptsError, match="iters"):
        fcpts.FCPTSConfig(target_sparsity=0.5, iters=-1)
    with pytest.raises(fcpts.FcptsError, match="control_loss"):
        fcpts.FCPTSConfig(target_sparsity=0.5, control_loss="huber")
    with pytest.raises(fcpts.FcptsError, match="threshold_grad"):
        fcpts.FCPTSConfig(target_sparsity=0.5, threshold_grad="exact")


def test_fcpts_error_is_a_value_error():
    assert issubclass(fcpts.FcptsError, ValueError)


@pytest.mark.parametrize("empty", [torch.empty(0, 1, 8, 8), torch.tensor(3.0)])
def test_empty_tensor_data_raises(tiny_net, empty):
    config = fcpts.FCPTSConfig(target_sparsity=0.5, iters=2)
    with pytest.raises(fcpts.FcptsError, match="calibration data is empty"):
        fcpts.prune(tiny_net, empty, config)


def test_empty_dataset_and_iterable_raise(tiny_net):
    config = fcpts.make_config("uniform-magnitude", target_sparsity=0.5)
    with pytest.raises(fcpts.FcptsError, match="empty"):
        fcpts.prune(tiny_net, TensorDataset(torch.empty(0, 1, 8, 8)), config)
    with pytest.raises(fcpts.FcptsError, match="empty"):
        fcpts.prune(tiny_net, [], config)
    with pytest.raises(fcpts.FcptsError, match="cannot use"):
        fcpts.prune(tiny_net, 42, config)


def test_data_that_does_not_fit_raises(tiny_net):
    with pytest.raises(fcpts.FcptsError, match=r"sample shape \(1, 5, 5\) does not fit the model"):
        fcpts.prune(tiny_net, torch.rand(8, 1, 5, 5), fcpts.FCPTSConfig(target_sparsity=0.5, iters=2))


def test_no_prunable_layer_raises(calib_x):
    net = nn.Sequential(nn.Flatten(), nn.ReLU())
    for method in ("fcpts", "global-magnitude"):
        with pytest.raises(fcpts.FcptsError, match="no prunable layer"):
            fcpts.prune(net, calib_x, fcpts.make_config(method, target_sparsity=0.5))


#: Every registered method with the extra options that keep it fast on the tiny net.
FAST = {"fcpts": {"iters": 3, "batch_size": 16}}
ALL_METHODS = sorted(fcpts.METHODS)
#: (method, extra options) for every method, plus fcpts thresholding the Wanda score.
CASES = [(m, FAST.get(m, {})) for m in ALL_METHODS] + [
    ("fcpts", {**FAST["fcpts"], "importance": "wanda"}),
    ("fcpts", {**FAST["fcpts"], "importance": "wanda", "refit_init": True}),
]
IDS = [f"{m}-{e.get('importance', '')}{'-refit' if e.get('refit_init') else ''}" for m, e in CASES]


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in fcpts.prunable_layers(model)}


# --- every method: exact global count, exact N:M groups -------------------------------------------


@pytest.mark.parametrize(("method", "extra"), CASES, ids=IDS)
def test_every_method_reaches_the_exact_global_count(method, extra, tiny_net, calib_x):
    config = fcpts.make_config(method, target_sparsity=0.77, **extra)
    result = fcpts.prune(tiny_net, calib_x, config)
    zeros = sum(int((w == 0).sum()) for w in prunable_weights(result.model).values())
    assert zeros == result.zeros == round(0.77 * TINY_TOTAL)


@pytest.mark.parametrize("pattern", ["2:4", "1:3"])
@pytest.mark.parametrize(("method", "extra"), CASES, ids=IDS)
def test_every_method_makes_exact_nm_groups(method, extra, pattern, tiny_net, calib_x):
    n, m = (int(v) for v in pattern.split(":"))
    config = fcpts.make_config(method, target_sparsity=n / m, pattern=pattern, **extra)
    result = fcpts.prune(tiny_net, calib_x, config)
    divisible = 0
    for name, w in prunable_weights(result.model).items():
        rows = w.flatten(1)
        if rows.shape[1] % m:
            assert int((w == 0).sum()) == 0, f"{name} should stay dense"
            continue
        divisible += w.numel()
        assert ((rows.view(rows.shape[0], -1, m) == 0).sum(-1) == n).all(), name
    # TinyNet: 2:4 divides only fc1 (80 inputs); 1:3 divides conv1 (9) and conv2 (27).
    assert divisible == {"2:4": 560, "1:3": 27 + 135}[pattern]
    assert result.zeros == divisible * n // m


def test_pattern_must_match_the_target():
    with pytest.raises(fcpts.FcptsError, match=r"means sparsity 0\.5"):
        fcpts.make_config("wanda", target_sparsity=0.6, pattern="2:4")
    with pytest.raises(fcpts.FcptsError, match="N:M"):
        fcpts.make_config("wanda", target_sparsity=0.5, pattern="4:2")
