"""``init`` a one-shot method (``--init sparsegpt|pot|wanda``): fcpts starts from its masks and weights."""

from __future__ import annotations

import copy

import pytest
import torch

import fcpts
from fcpts.core.calibration import Calibration
from fcpts.errors import FcptsError
from fcpts.method.fcpts import prepare_from_config, run_oneshot
from fcpts.method.prepare import exact_keep_masks
from tests.helpers import TINY_LAYERS, TINY_TOTAL, cli_error, count_zeros


def oneshot(model, x, method, **options):
    """The one-shot method's model, in the contiguous format that run_oneshot runs in outside prune()."""
    config = fcpts.make_config(method, target_sparsity=0.7, batch_size=16, memory_format="contiguous", **options)
    return fcpts.prune(model, x, config).model


@pytest.mark.parametrize("method, pattern", [("sparsegpt", None), ("pot", None), ("wanda", None), ("sparsegpt", "2:4")])
def test_initial_masks_and_weights_are_the_one_shot_methods(tiny_net, calib_x, method, pattern):
    sparsity = 0.5 if pattern else 0.7
    options = {"batch_size": 16, "pattern": pattern, "memory_format": "contiguous"}  # as run_oneshot below
    reference = fcpts.prune(tiny_net, calib_x, fcpts.make_config(method, target_sparsity=sparsity, **options)).model
    config = fcpts.FCPTSConfig(target_sparsity=sparsity, batch_size=16, init=method, pattern=pattern)
    student, teacher = copy.deepcopy(tiny_net), copy.deepcopy(tiny_net)
    calibration = Calibration(calib_x, 16)
    run_oneshot(student, calibration, config, fcpts.RunOptions())
    prepared, _ = prepare_from_config(student, teacher, calibration, config)
    for layer, keep in zip(prepared.layers, exact_keep_masks(prepared), strict=True):
        ref = getattr(reference, layer.name).weight
        assert torch.equal(layer.module.weight, ref)  # its masks and its updated weights, exactly
        assert torch.equal(keep, ref != 0)  # and finalize's exact cut keeps them
    zeros = sum(int((getattr(reference, n).weight == 0).sum()) for n in TINY_LAYERS)
    assert round(prepared.target_sparsity * prepared.total) == zeros
    assert prepared.global_sparsity().item() == pytest.approx(zeros / TINY_TOTAL, abs=1e-7)


@pytest.mark.parametrize("method", ["sparsegpt", "pot", "wanda"])
def test_learning_from_a_one_shot_start_keeps_the_exact_count(tiny_net, calib_x, method):
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=12, batch_size=16, init=method)
    result = fcpts.prune(tiny_net, calib_x, config)
    assert result.zeros == round(0.7 * TINY_TOTAL)
    assert sum(count_zeros(result.model, TINY_LAYERS).values()) == round(0.7 * TINY_TOTAL)
    # The control loss starts at 0: the start is exactly at the target.
    assert result.history[0]["sparsity"] == pytest.approx(0.7, abs=1 / TINY_TOTAL)


def test_without_threshold_learning_the_one_shot_masks_stay(tiny_net, calib_x):
    reference = oneshot(tiny_net, calib_x, "sparsegpt")
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=8, batch_size=16, init="sparsegpt", learn_thresholds=False)
    result = fcpts.prune(tiny_net, calib_x, config)
    for name in TINY_LAYERS:
        assert torch.equal(getattr(result.model, name).weight == 0, getattr(reference, name).weight == 0)


def test_unknown_init_is_refused():
    with pytest.raises(FcptsError, match=r"init must be auto, an allocation .* or a one-shot method"):
        fcpts.FCPTSConfig(target_sparsity=0.5, init="fcpts")


def test_cli_bad_init(capsys):
    assert "argument --init: invalid choice: 'sparsegtp'" in cli_error(capsys, "--init", "sparsegtp")


def test_allocation_reaches_the_one_shot_method(tiny_net, calib_x):
    reference = oneshot(tiny_net, calib_x, "sparsegpt", allocation="global")
    config = fcpts.FCPTSConfig(target_sparsity=0.7, batch_size=16, init="sparsegpt", allocation="global")
    student = copy.deepcopy(tiny_net)
    run_oneshot(student, Calibration(calib_x, 16), config, fcpts.RunOptions())
    for name in TINY_LAYERS:
        assert torch.equal(getattr(student, name).weight, getattr(reference, name).weight)


def test_allocation_needs_a_one_shot_init():
    with pytest.raises(FcptsError, match="applies to a one-shot init"):
        fcpts.FCPTSConfig(target_sparsity=0.5, init="erk", allocation="global")
    assert fcpts.FCPTSConfig(target_sparsity=0.5, allocation="global").allocation == "global"  # auto's start
    with pytest.raises(FcptsError, match="nope"):
        fcpts.FCPTSConfig(target_sparsity=0.5, init="sparsegpt", allocation="nope")


def test_cli_allocation_without_a_one_shot_init(run_cli):
    code, _, err = run_cli(
        "prune", "--model", "refcnn", "--data", "fashion-mnist", "--sparsity", "0.9", "--out", "o",
        "--init", "erk", "--allocation", "global",
    )  # fmt: skip
    assert code == 2 and err.startswith("fcpts: error: allocation 'global' applies to a one-shot init")


def test_a_start_learning_made_worse_is_returned_exactly(tiny_net, calib_x):
    """keep_start: a kept-weight rate that wrecks the start gives back the one-shot result, bit for bit."""
    reference = oneshot(tiny_net, calib_x, "pot")
    config = fcpts.FCPTSConfig(
        target_sparsity=0.7, iters=6, batch_size=16, init="pot", lr_weight=1.0, memory_format="contiguous"
    )
    with pytest.warns(UserWarning, match="the pot result is returned"):
        result = fcpts.prune(tiny_net, calib_x, config)
    check = result.config["start_check"]
    assert check["kept"] == "start" and check["start_loss"] < check["learned_loss"]
    for name in TINY_LAYERS:
        assert torch.equal(getattr(result.model, name).weight, getattr(reference, name).weight)
    assert result.zeros == round(0.7 * TINY_TOTAL)


def test_no_keep_start_returns_the_learned_model(tiny_net, calib_x):
    reference = oneshot(tiny_net, calib_x, "pot")
    config = fcpts.FCPTSConfig(
        target_sparsity=0.7, iters=6, batch_size=16, init="pot", lr_weight=1.0, memory_format="contiguous",
        keep_start=False,
    )  # fmt: skip
    result = fcpts.prune(tiny_net, calib_x, config)
    assert "start_check" not in result.config and result.config["keep_start"] is False
    assert not all(torch.equal(getattr(result.model, n).weight, getattr(reference, n).weight) for n in TINY_LAYERS)


def test_learning_that_improves_is_kept(tiny_net, calib_x):
    """From uniform magnitude (no refit), 40 steps lower the loss: the learned model is returned."""
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=40, batch_size=16, init="uniform-magnitude")
    result = fcpts.prune(tiny_net, calib_x, config)
    check = result.config["start_check"]
    assert check["kept"] == "learned" and check["learned_loss"] <= check["start_loss"]


def test_reconstruction_losses_read_the_first_check_samples_rows():
    """Batches of 64 over 300 rows: the first 4 batches (256 rows), the batch-weighted KL of each model."""
    from fcpts.method.keep_start import CHECK_SAMPLES, reconstruction_losses
    from fcpts.method.losses import distillation_loss

    torch.manual_seed(0)
    teacher, student, x = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4), torch.randn(300, 5)
    config = fcpts.FCPTSConfig(target_sparsity=0.5, temperature=2.0)
    got = reconstruction_losses([student, teacher], teacher, Calibration(x, 64), config)
    with torch.no_grad():
        want = distillation_loss(student(x[:CHECK_SAMPLES]), teacher(x[:CHECK_SAMPLES]), 2.0).item()
    assert CHECK_SAMPLES == 256
    assert got[0] == pytest.approx(want, rel=1e-5) and got[1] == 0.0
