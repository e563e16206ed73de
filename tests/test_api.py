"""The one-call API: prune results, determinism, BatchNorm handling, calibration inputs, errors."""

from __future__ import annotations

import copy
import signal
from contextlib import contextmanager

import pytest
import torch
from conftest import TINY_LAYERS, TINY_TOTAL, count_zeros
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fcpts
from fcpts.core.batchnorm import recalibrate_batchnorm


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


def test_magnitude_methods_are_deterministic(bn_net, calib_x):
    for method in ("uniform-magnitude", "erk-magnitude", "global-magnitude", "lamp-magnitude"):
        a = fcpts.prune(bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.5))
        b = fcpts.prune(bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.5))
        assert all(
            torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
        )


# --- BatchNorm -----------------------------------------------------------------------------------


def test_recalibrate_batchnorm_is_a_no_op_without_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Dropout(0.5), nn.Linear(6, 2)).train()
    net[1].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    assert recalibrate_batchnorm(net, [torch.randn(8, 6) for _ in range(3)]) == 0
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert [m.training for m in net.modules()] == modes


def test_recalibrate_batchnorm_computes_the_exact_average(bn_net, calib_x):
    bn = bn_net[1]
    bn.momentum = 0.3
    dropout_net = nn.Sequential(bn_net, nn.Dropout(0.5)).eval()
    batches = list(calib_x.split(16))  # 4 equal batches
    assert recalibrate_batchnorm(dropout_net, batches) == 1
    with torch.no_grad():
        feats = bn_net[0](calib_x)  # (64, 4, 6, 6)
    expected_mean = feats.mean(dim=(0, 2, 3))
    per_batch_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats.split(16)])
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-6, rtol=1e-5)
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), atol=1e-6, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 4
    # Modes and momentum are restored.
    assert bn.momentum == 0.3
    assert not any(m.training for m in dropout_net.modules())
    # Independent of batch order.
    reversed_net = copy.deepcopy(dropout_net)
    recalibrate_batchnorm(reversed_net, batches[::-1])
    assert torch.allclose(reversed_net[0][1].running_mean, bn.running_mean, atol=1e-6)


def test_fcpts_keeps_dense_batchnorm_statistics_by_default(bn_net, calib_x):
    dense = copy.deepcopy(bn_net)
    result = fcpts.prune(bn_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.7, iters=4, batch_size=16))
    bn, dense_bn = result.model[1], dense[1]
    assert torch.equal(bn.running_mean, dense_bn.running_mean)
    assert torch.equal(bn.running_var, dense_bn.running_var)
    assert int(bn.num_batches_tracked) == 7
    # ...and recalibrates them when asked to.
    result = fcpts.prune(
        bn_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.7, iters=2, batch_size=16, recalibrate_bn=True)
    )
    assert not torch.equal(result.model[1].running_mean, dense_bn.running_mean)
    assert int(result.model[1].num_batches_tracked) == 4  # 64 samples in batches of 16


@pytest.mark.parametrize("method", ["uniform-magnitude", "erk-magnitude", "global-magnitude", "lamp-magnitude"])
def test_magnitude_baselines_recalibrate_batchnorm_by_default(bn_net, calib_x, method):
    dense_bn = copy.deepcopy(bn_net[1])
    result = fcpts.prune(bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.6, batch_size=32))
    model = result.model
    with torch.no_grad():
        feats = model[0](calib_x)  # the pruned conv's outputs
    assert torch.allclose(model[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-6, rtol=1e-5)
    assert int(model[1].num_batches_tracked) == 2
    assert not torch.equal(model[1].running_mean, dense_bn.running_mean)
    # Off on request: the dense statistics stay.
    result = fcpts.prune(
        bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.6, batch_size=32, recalibrate_bn=False)
    )
    assert torch.equal(result.model[1].running_mean, dense_bn.running_mean)
    assert torch.equal(result.model[1].running_var, dense_bn.running_var)


# --- calibration inputs ----------------------------------------------------------------------------


def test_calibration_accepts_dataset_dataloader_and_dicts(tiny_net, calib_x):
    labels = torch.zeros(len(calib_x), dtype=torch.long)
    k = round(0.5 * TINY_TOTAL)
    config = fcpts.FCPTSConfig(target_sparsity=0.5, iters=3, batch_size=16)
    for data in (TensorDataset(calib_x, labels), DataLoader(TensorDataset(calib_x, labels), batch_size=16)):
        assert fcpts.prune(tiny_net, data, config).zeros == k

    class KwargNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(pixel_values)}

    batches = [{"pixel_values": torch.randn(8, 4)} for _ in range(3)]
    result = fcpts.prune(KwargNet(), batches, fcpts.FCPTSConfig(target_sparsity=0.5, iters=4))
    assert result.zeros == 4


@contextmanager
def time_limit(seconds: int):
    def fail(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_one_shot_iterator_calibration_is_replayed():
    """A generator of batches is not re-iterable: its batches are kept, so 5 iterations over 3
    batches finish (a regression: the stream once looped forever on the exhausted generator)."""
    net = nn.Sequential(nn.Linear(8, 4))
    batches = (torch.randn(4, 8) for _ in range(3))
    with time_limit(5):
        result = fcpts.prune(net, batches, fcpts.FCPTSConfig(target_sparsity=0.5, iters=5))
    assert result.zeros == 16
    assert len(result.history) == 5


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


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("temperature", 0.0),
        ("lr_weight", -1.0),
        ("lr_threshold", -1.0),
        ("control_weight", -1.0),
        ("init", "bogus"),
        ("bandwidth", "bogus"),
        ("bandwidth", 0.0),
        ("kde_samples", 1),
        ("density", "parzen"),
    ],
)
def test_invalid_fcpts_options_are_rejected_up_front(option, value):
    """E.g. ``temperature=0`` would divide the logits by 0 and turn every weight into NaN."""
    with pytest.raises(fcpts.FcptsError, match=option if option != "kde_samples" else "kde_samples"):
        fcpts.FCPTSConfig(target_sparsity=0.5, **{option: value})
