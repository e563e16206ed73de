"""The method's internals after the one-step redesign: held masks, the shared exact cut, the
magnitude baseline on core only, one validation of the mask options, and resume through learn()."""

from __future__ import annotations

import copy
import importlib
import itertools
import math
import warnings

import pytest
import torch
from torch import nn

import fcpts
from fcpts.baselines.magnitude import run_magnitude
from fcpts.core.calibration import Calibration
from fcpts.core.masks import exact_global_masks, target_zeros
from fcpts.method.checkpoint import CHECKPOINT_NAME
from fcpts.method.prepare import exact_keep_masks
from fcpts.method.threshold_mask import ThresholdMask, validate_mask_options
from tests.helpers import TinyNet

LEARN = importlib.import_module("fcpts.method.objective")  # where the step's losses are computed


def mlp(seed: int = 0, quantum: float | None = None) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    if quantum is not None:  # many tied magnitudes: the tie-breaking decides
        with torch.no_grad():
            for m in net[::2]:
                m.weight.copy_((m.weight / quantum).round() * quantum)
    return net


def test_hold_masks_freezes_the_exact_count_and_stops_the_thresholds():
    prepared = fcpts.prepare(mlp(), 0.8)
    assert prepared.frozen_masks() is None
    prepared.global_sparsity().backward()
    expected = exact_keep_masks(prepared)
    prepared.hold_masks()
    held = prepared.frozen_masks()
    assert held is not None and all(torch.equal(a, b) for a, b in zip(held, expected, strict=True))
    assert all(layer.mask.is_frozen for layer in prepared.layers)
    assert all(not p.requires_grad and p.grad is None for p in prepared.threshold_parameters())
    assert sum(int((~k).sum()) for k in held) == target_zeros(0.8, prepared.total)


def test_hold_masks_takes_given_masks_and_freeze_masks_the_current_ones():
    prepared = fcpts.prepare(mlp(), 0.5, init="uniform")
    current = [layer.module.weight != 0 for layer in prepared.layers]
    given = [torch.ones_like(c) for c in current]
    prepared.hold_masks(given)
    assert all(torch.equal(m, g) for m, g in zip(prepared.frozen_masks(), given, strict=True))
    prepared.freeze_masks()  # the current threshold masks again
    assert all(torch.equal(m, c) for m, c in zip(prepared.frozen_masks(), current, strict=True))


@pytest.mark.parametrize(("init", "quantum"), list(itertools.product(["uniform", "erk", "global"], [None, 0.01])))
def test_exact_keep_masks_rest_on_the_core_cut(init, quantum):
    """Unfrozen, finalize's masks are core's exact global masks at the stored thresholds, bit for bit."""
    prepared = fcpts.prepare(mlp(1, quantum), 0.85, init=init)
    with torch.no_grad():
        for layer in prepared.layers:
            layer.mask.log_threshold.add_(0.05)  # off the allocation: the cut must correct the count
    weights = [layer.weight for layer in prepared.layers]
    thresholds = [layer.mask.threshold.detach() for layer in prepared.layers]
    core = exact_global_masks(weights, thresholds, target_zeros(0.85, prepared.total))
    assert all(torch.equal(a, b) for a, b in zip(exact_keep_masks(prepared), core, strict=True))


@pytest.mark.parametrize(
    ("allocation", "target", "quantum"),
    list(itertools.product(["uniform", "erk", "global", "lamp"], [0.5, 0.9], [None, 0.02, 0.001])),
)
def test_magnitude_baseline_gives_finalize_prepare_bytes(allocation, target, quantum):
    """On core only, the same bytes as the KDE parametrization it used to run through (ties included)."""
    net = mlp(2, quantum)
    old = fcpts.finalize(fcpts.prepare(copy.deepcopy(net), target, init=allocation))
    new = copy.deepcopy(net)
    config = fcpts.MagnitudeConfig(target_sparsity=target, allocation=allocation, recalibrate_bn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantised weights may hold more zeros than the target
        run_magnitude(new, None, config, fcpts.RunOptions())  # type: ignore[arg-type]
    for a, b in zip(old.state_dict().values(), new.state_dict().values(), strict=True):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # -0.0 and 0.0 told apart


def test_magnitude_baseline_warns_like_finalize_when_the_model_has_more_zeros():
    net = mlp()
    with torch.no_grad():
        net[0].weight[:20] = 0.0
    config = fcpts.MagnitudeConfig(target_sparsity=0.1, recalibrate_bn=False)
    with pytest.warns(UserWarning, match="zeros instead of the target"):
        run_magnitude(net, None, config, fcpts.RunOptions())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"threshold_grad": "exact"}, "threshold_grad"),
        ({"density": "parzen"}, "density"),
        ({"bandwidth": "bogus"}, "bandwidth"),
        ({"bandwidth": 0.0}, "bandwidth"),
    ],
)
def test_mask_options_are_validated_once_for_config_and_mask(options, match):
    grad, density = options.get("threshold_grad", "surrogate"), options.get("density", "kde")
    bandwidth = options.get("bandwidth", "silverman")
    with pytest.raises(fcpts.FcptsError, match=match) as from_helper:
        validate_mask_options(grad, density, bandwidth)
    with pytest.raises(fcpts.FcptsError) as from_config:
        fcpts.FCPTSConfig(target_sparsity=0.5, **options)
    with pytest.raises(fcpts.FcptsError) as from_mask:
        ThresholdMask(torch.ones(2, 2), 0.5, threshold_grad=grad, density=density, bandwidth_rule=bandwidth)
    assert str(from_config.value) == str(from_mask.value) == str(from_helper.value)


def test_no_prunable_layer_is_one_error_for_prepare_and_the_scored_methods():
    net = nn.Sequential(nn.Flatten(), nn.ReLU())
    with pytest.raises(fcpts.FcptsError, match="no prunable layer") as from_prepare:
        fcpts.prepare(net, 0.5)
    with pytest.raises(fcpts.FcptsError) as from_prune:
        fcpts.prune(net, torch.randn(8, 4), fcpts.make_config("wanda", target_sparsity=0.5))
    assert str(from_prepare.value) == str(from_prune.value)


def test_prepare_options_after_init_are_keyword_only():
    with pytest.raises(TypeError):
        fcpts.prepare(mlp(), 0.5, "erk", fcpts.default_layer_filter)  # type: ignore[misc]
    assert len(fcpts.prepare(mlp(), 0.5, "erk", kde_samples=64).layers) == 3


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("freeze_masks_at", [0.9, 0.25], ids=["learning-at-the-checkpoint", "frozen-before-it"])
def test_resume_equals_an_uninterrupted_run(monkeypatch, tmp_path, calib_x, freeze_masks_at):
    torch.manual_seed(0)
    net = TinyNet()
    # No time budget: its probe steps would also call the control loss that the interruption counts.
    config = fcpts.FCPTSConfig(
        0.7, iters=24, batch_size=16, seed=4, freeze_masks_at=freeze_masks_at, time_budget_s=None
    )
    reference = fcpts.prune(net, calib_x, config)
    ckpt = tmp_path / "ckpt"
    calls = {"n": 0}
    original = LEARN.control_loss

    def interrupted(*args, **kwargs):
        if calls["n"] == 13:
            raise Interrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(LEARN, "control_loss", interrupted)
        with pytest.raises(Interrupt):
            fcpts.prune(net, calib_x, config, fcpts.RunOptions(checkpoint_dir=ckpt, checkpoint_every=5))
    state = torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 10 and (state["frozen_masks"] is not None) == (freeze_masks_at < 0.5)
    resumed = fcpts.prune(net, calib_x, config, fcpts.RunOptions(checkpoint_dir=ckpt, checkpoint_every=5, resume=True))
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.history == reference.history
    assert resumed.zeros == round(0.7 * resumed.numel)


def test_learn_restores_the_flags_and_removes_its_hooks_when_the_teacher_output_is_not_finite(calib_x):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 3))
    teacher = copy.deepcopy(net)
    with torch.no_grad():
        teacher[2].bias[0] = math.nan
    prepared = fcpts.prepare(net, 0.5)
    flags = [p.requires_grad for p in net.parameters()]
    config = fcpts.FCPTSConfig(0.5, iters=3, batch_size=16, feature_modules=("1",))
    with pytest.raises(fcpts.FcptsError, match="dense model's output"):
        fcpts.learn(prepared, teacher, Calibration(calib_x.flatten(1), 16), config)
    assert [p.requires_grad for p in net.parameters()] == flags
    assert not net[1]._forward_hooks and not teacher[1]._forward_hooks
