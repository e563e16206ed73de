"""``init="auto"`` (:mod:`fcpts.method.start`): ERK when the budget affords the steps, POT-LAMP at a tenth
of the kept-weight rate when it does not; the choice in the report, a resume keeping it."""

from __future__ import annotations

import importlib

import pytest
import torch

import fcpts
from fcpts.api import RunOptions
from fcpts.core.calibration import Calibration
from fcpts.method import budget
from fcpts.method import start as start_module
from fcpts.method.config import ALLOCATION_BATCH, ALLOCATION_LR_WEIGHT, ONESHOT_BATCH, ONESHOT_LR_WEIGHT
from tests.helpers import TINY_TOTAL, same_weights

objective_module = importlib.import_module("fcpts.method.objective")


def slow_steps(monkeypatch: pytest.MonkeyPatch, step_s: float) -> None:
    """Make auto's timed forward and backward pass read ``step_s`` seconds."""
    monkeypatch.setattr(start_module, "forward_backward_s", lambda *args: step_s)


def test_auto_without_a_budget_is_erk_bit_for_bit(tiny_net, calib_x):
    auto = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(0.7, iters=8, batch_size=16, time_budget_s=None))
    erk = fcpts.FCPTSConfig(0.7, iters=8, batch_size=16, time_budget_s=None, init="erk", lr_weight=1e-3)
    assert same_weights(auto.model, fcpts.prune(tiny_net, calib_x, erk).model)
    assert auto.config["init"] == "erk" and auto.config["lr_weight"] == ALLOCATION_LR_WEIGHT == 1e-3
    assert auto.config["start"] == {"init": "erk", "allocation": None, "reason": "no time budget"}


def test_auto_under_a_budget_that_affords_the_steps_is_erk_bit_for_bit(tiny_net, calib_x):
    """The timed forward and backward pass leaves no trace: the default run is the ERK run without a budget."""
    auto = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(0.7, iters=8, batch_size=16))
    erk = fcpts.FCPTSConfig(0.7, iters=8, batch_size=16, time_budget_s=None, init="erk", lr_weight=1e-3)
    assert auto.config["start"]["init"] == "erk" and auto.history == fcpts.prune(tiny_net, calib_x, erk).history
    assert same_weights(auto.model, fcpts.prune(tiny_net, calib_x, erk).model)


def test_auto_switches_at_half_the_steps(tiny_net, calib_x, monkeypatch):
    # 600 s budget, 5% kept back: (570 − spent) / 1 s ≥ 500 = half of the 1000 iters
    slow_steps(monkeypatch, 1.0)
    monkeypatch.setattr(budget, "clock", lambda: 0.0)  # nothing spent before the choice
    config = fcpts.FCPTSConfig(0.7, iters=1000, batch_size=16, time_budget_s=600.0)
    facts = start_module.resolve_start(tiny_net, calib(calib_x), config, RunOptions(), 0.0)[1]
    assert facts == {"init": "erk", "allocation": None, "reason": "the budget affords at least 50% of the steps"}
    slow_steps(monkeypatch, 1.2)  # (570 − spent) / 1.2 s < 500
    facts = start_module.resolve_start(tiny_net, calib(calib_x), config, RunOptions(), 0.0)[1]
    assert facts["init"] == "pot" and facts["step_s"] == 1.2 and facts["affordable_steps"] == 475


def test_auto_with_a_short_budget_starts_from_pot_lamp(tiny_net, calib_x, monkeypatch):
    """200 s a pass: 2 of 10 steps fit in 600 s, under half: POT-LAMP's fit at a tenth of the rate, the same
    run as asking for it (the steps themselves are fast: the budget does not cut them)."""
    slow_steps(monkeypatch, 200.0)
    auto = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(0.7, iters=10, batch_size=16, time_budget_s=600.0))
    facts = auto.config["start"]
    assert facts["init"] == "pot" and facts["allocation"] == "lamp" and facts["affordable_steps"] == 2
    assert auto.config["init"] == "pot" and auto.config["allocation"] == "lamp"
    assert auto.config["lr_weight"] == ONESHOT_LR_WEIGHT == 1e-4
    asked = fcpts.FCPTSConfig(0.7, iters=10, batch_size=16, time_budget_s=None, init="pot", allocation="lamp")
    assert same_weights(auto.model, fcpts.prune(tiny_net, calib_x, asked).model)
    assert auto.zeros == round(0.7 * TINY_TOTAL)


def test_the_learning_batch_is_a_quarter_after_a_one_shot_start(tiny_net, calib_x, monkeypatch):
    """Unset, the batch is 16 after POT-LAMP (the same run as asking for 16) and 64 from ERK; a batch asked for
    is kept. Auto's timed pass reads a batch of 64 either way."""
    assert (ONESHOT_BATCH, ALLOCATION_BATCH) == (16, 64)
    slow_steps(monkeypatch, 200.0)
    auto = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(0.7, iters=10, time_budget_s=600.0))
    assert auto.config["init"] == "pot" and auto.config["batch_size"] == ONESHOT_BATCH
    asked = fcpts.FCPTSConfig(0.7, iters=10, batch_size=16, time_budget_s=600.0)
    assert same_weights(auto.model, fcpts.prune(tiny_net, calib_x, asked).model)
    kept = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(0.7, iters=10, batch_size=32, time_budget_s=600.0))
    assert kept.config["init"] == "pot" and kept.config["batch_size"] == 32
    erk = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(0.7, iters=10, time_budget_s=None))
    assert erk.config["init"] == "erk" and erk.config["batch_size"] == ALLOCATION_BATCH


def test_auto_takes_the_allocation_asked_for(tiny_net, calib_x, monkeypatch):
    slow_steps(monkeypatch, 200.0)
    config = fcpts.FCPTSConfig(0.7, iters=10, batch_size=16, allocation="erk")
    chosen, facts = start_module.resolve_start(tiny_net, calib(calib_x), config, RunOptions(), 0.0)
    assert (chosen.init, chosen.allocation, facts["allocation"]) == ("pot", "erk", "erk")


def test_a_one_shot_start_reads_the_first_start_samples_rows(tiny_net, calib_x):
    """No learning step: the result is the one-shot method's on those rows, bit for bit."""
    config = fcpts.FCPTSConfig(0.7, iters=0, batch_size=16, init="pot", allocation="lamp", start_samples=32)
    pot = fcpts.make_config("pot", target_sparsity=0.7, batch_size=16, allocation="lamp")
    assert same_weights(fcpts.prune(tiny_net, calib_x, config).model, fcpts.prune(tiny_net, calib_x[:32], pot).model)
    assert not same_weights(fcpts.prune(tiny_net, calib_x, pot).model, fcpts.prune(tiny_net, calib_x[:32], pot).model)


def test_explicit_rates_and_starts_are_kept(tiny_net, calib_x):
    assert fcpts.FCPTSConfig(0.5, init="sparsegpt").kept_weight_rate == ONESHOT_LR_WEIGHT
    assert fcpts.FCPTSConfig(0.5, init="pot", lr_weight=2e-3).kept_weight_rate == 2e-3
    config = fcpts.FCPTSConfig(0.5, init="uniform", time_budget_s=None)
    chosen, facts = start_module.resolve_start(tiny_net, calib(calib_x), config, RunOptions(), 0.0)
    assert (chosen.init, chosen.lr_weight, facts) == ("uniform", ALLOCATION_LR_WEIGHT, {})


def test_a_resume_keeps_the_checkpoints_start(tiny_net, calib_x, monkeypatch, tmp_path):
    """Interrupted after auto chose POT, resumed on a machine where ERK would fit: POT again, equal to the
    uninterrupted run."""
    slow_steps(monkeypatch, 200.0)
    config = fcpts.FCPTSConfig(0.7, iters=6, batch_size=16, time_budget_s=600.0)
    whole = fcpts.prune(tiny_net, calib_x, config)
    options = RunOptions(checkpoint_dir=tmp_path, checkpoint_every=2)
    calls = {"n": 0}
    original = objective_module.control_loss

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4 + 4:  # the probe's 4 steps, then the run's 4th
            raise Interrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(objective_module, "control_loss", interrupted)
    with pytest.raises(Interrupt):
        fcpts.prune(tiny_net, calib_x, config, options)
    monkeypatch.setattr(objective_module, "control_loss", original)
    slow_steps(monkeypatch, 1e-6)
    resumed = fcpts.prune(tiny_net, calib_x, config, RunOptions(checkpoint_dir=tmp_path, resume=True))
    assert resumed.config["start"]["reason"] == "the checkpoint's start" and resumed.config["init"] == "pot"
    assert same_weights(resumed.model, whole.model)


def calib(x: torch.Tensor) -> Calibration:
    return Calibration(x, 16)


class Interrupt(Exception):
    pass
