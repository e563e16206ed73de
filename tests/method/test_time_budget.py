"""``time_budget_s`` / ``--time-budget``: the run times its first steps and sizes ``iters`` to fit."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import fcpts
from fcpts.api import RunOptions
from fcpts.errors import FcptsError
from fcpts.method import budget
from fcpts.method.prepare import Prepared
from fcpts.method.steps import _Loop
from tests.helpers import TINY_TOTAL, cli_error


class FakeClock:
    """A clock that moves only when a learning step runs (``step_s`` each) or when told to."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step_s: float) -> None:
        self.now, self.step_s = 0.0, step_s
        monkeypatch.setattr(budget, "clock", lambda: self.now)
        original = _Loop.step

        def step(loop, *args, **kwargs):
            self.now += self.step_s
            return original(loop, *args, **kwargs)

        monkeypatch.setattr(_Loop, "step", step)


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90.0), ("10m", 600.0), ("1h", 3600.0), ("1.5h", 5400.0), ("600", 600.0), (" 2M ", 120.0), (".5s", 0.5)],
)
def test_parse_duration(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "10x", "-5", "0", "0s", "1h30m", "inf", "nan"])
def test_parse_duration_refuses_garbage(text):
    with pytest.raises(ValueError, match=r"duration|> 0"):
        budget.parse_duration(text)


def test_sized_iters():
    # 100 s budget, 4 s spent, 5 s margin (5%), 2 × 0.5 s finalize: 90 s left at 0.5 s a step
    assert budget.sized_iters(100.0, 4.0, 0.5, 0.5, 1000) == 180
    assert budget.sized_iters(100.0, 4.0, 0.5, 0.5, 120) == 120  # at most iters
    assert budget.sized_iters(10.0, 12.0, 0.5, 0.0, 1000) == 0  # already spent


def test_fake_clock_chooses_the_exact_iters(tiny_net, calib_x, monkeypatch):
    """1 s a step: 4 probe steps spent, 5% of 40 s kept for finalize → ⌊(40 − 4 − 2) / 1⌋ = 34 steps."""
    FakeClock(monkeypatch, step_s=1.0)
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=1000, batch_size=16, time_budget_s=40.0)
    result = fcpts.prune(tiny_net, calib_x, config)
    probe = budget.WARMUP_STEPS + budget.MEASURED_STEPS
    assert probe == 4
    assert result.config["iters"] == 34 == len(result.history)
    assert [entry["step"] for entry in result.history] == list(range(34))
    facts = result.config["time_budget"]
    assert facts["budget_s"] == 40.0 and facts["iters_cap"] == 1000 and facts["step_s"] == 1.0
    assert facts["spent_before_learning_s"] == 4.0 and facts["learned_s"] == 38.0
    assert result.zeros == round(0.7 * TINY_TOTAL)


def test_a_sized_run_is_the_plain_run_with_that_iters(tiny_net, calib_x, monkeypatch):
    FakeClock(monkeypatch, step_s=1.0)
    sized = fcpts.prune(
        tiny_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.7, iters=50, batch_size=16, time_budget_s=20.0)
    )
    iters = sized.config["iters"]
    assert iters == 15  # ⌊(20 − 4 − 1) / 1⌋
    plain = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.7, iters=iters, batch_size=16))
    assert sized.history == plain.history
    for a, b in zip(sized.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_budget_spent_before_learning_warns_and_finalizes(tiny_net, calib_x, monkeypatch):
    FakeClock(monkeypatch, step_s=10.0)
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=100, batch_size=16, time_budget_s=30.0)
    with pytest.warns(UserWarning, match="spent before learning"):
        result = fcpts.prune(tiny_net, calib_x, config)
    assert result.config["iters"] == 0 and result.history == []
    assert result.zeros == round(0.7 * TINY_TOTAL)


def test_resume_keeps_the_checkpoints_sized_iters(tiny_net, calib_x, monkeypatch, tmp_path):
    clock = FakeClock(monkeypatch, step_s=1.0)
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=1000, batch_size=16, time_budget_s=20.0)
    full = fcpts.prune(tiny_net, calib_x, config, RunOptions(checkpoint_dir=str(tmp_path / "a"), checkpoint_every=4))
    assert full.config["iters"] == 15  # the last checkpoint is at step 12
    clock.now = 0.0
    clock.step_s = 100.0  # a resume in a slower moment: still the checkpoint's 15 steps, no new sizing
    resumed = fcpts.prune(tiny_net, calib_x, config, RunOptions(checkpoint_dir=str(tmp_path / "a"), resume=True))
    assert resumed.config["iters"] == 15 and resumed.config["time_budget"]["resumed"] is True
    assert resumed.history == full.history
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bad_budget_is_refused():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(FcptsError, match="time_budget_s"):
            fcpts.FCPTSConfig(target_sparsity=0.5, time_budget_s=bad)


@pytest.mark.parametrize("value", ["soon", "10x", "0", "-1m"])
def test_cli_bad_time_budget(capsys, value):
    assert "argument --time-budget: " in cli_error(capsys, f"--time-budget={value}")


def test_cli_time_budget_does_not_apply_to_one_shot_methods(run_cli):
    code, _, err = run_cli(
        "prune", "--model", "refcnn", "--data", "fashion-mnist", "--sparsity", "0.9", "--out", "o",
        "--method", "sparsegpt", "--time-budget", "10m",
    )  # fmt: skip
    assert code == 2 and err == "fcpts: error: --time-budget does not apply to method 'sparsegpt'\n"


def test_cli_time_budget_is_reported(run_cli, tmp_path, model_file, npz_file):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--sparsity", "0.6",
        "--out", out, "--iters", "7", "--batch-size", "16", "--no-progress", "--time-budget", "10m",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["iters"] == 7 == len(report["loss_history"])  # 10 minutes hold all 7 steps
    assert report["config"]["time_budget_s"] == 600.0 and "time_budget" not in report["config"]  # it did not bind
    assert "time budget" not in stdout


def test_cli_summary_names_a_sized_run():
    from fcpts.cli.commands import _summary

    layers = [fcpts.LayerResult("fc", 10, 5)]
    result = fcpts.PruneResult(None, "fcpts", 0.5, layers, [], 1.0, {"iters": 40, "time_budget": {"budget_s": 60.0}})
    assert "time budget      60 s: 40 learning steps" in _summary(result, None, None)
    result.config["time_budget"]["stopped_at_step"] = 25
    assert "60 s: 25 learning steps (stopped there: the budget ran out, of 40)" in _summary(result, None, None)
    result.config["time_budget"] = {"budget_s": 60.0, "resized": {"at_step": 12, "step_s": 1.25, "iters_before": 30}}
    assert "60 s: 40 learning steps (re-sized at step 12 from 30: 1.25 s a step)" in _summary(result, None, None)


def _switch_step_time(monkeypatch, clock: FakeClock, after_calls: int, step_s: float) -> None:
    """From ``after_calls`` calls of ``_Loop.step`` on (the probe's 4 included), a step takes ``step_s``."""
    original = _Loop.step
    calls = []

    def step(loop, *args, **kwargs):
        out = original(loop, *args, **kwargs)
        calls.append(1)
        if len(calls) == after_calls:
            clock.step_s = step_s
        return out

    monkeypatch.setattr(_Loop, "step", step)


PROBE = budget.WARMUP_STEPS + budget.MEASURED_STEPS


def test_steps_faster_than_the_probe_re_size_the_run_up(tiny_net, calib_x, monkeypatch):
    """Probe steps of 2 s size ⌊(60 − 8 − 3) / 2⌋ = 24 steps; the run's steps take 1 s, so before step
    12 (clock 8 + 12 = 20) it re-sizes to 12 + ⌊(57 − 20) / 1⌋ = 49 and uses the budget."""
    assert (PROBE, budget.RESIZE_AT_STEP) == (4, 12)
    clock = FakeClock(monkeypatch, step_s=2.0)
    _switch_step_time(monkeypatch, clock, PROBE, 1.0)
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=1000, batch_size=16, time_budget_s=60.0)
    result = fcpts.prune(tiny_net, calib_x, config)
    assert result.config["iters"] == 49 == len(result.history)
    facts = result.config["time_budget"]
    assert facts["step_s"] == 2.0 and facts["resized"] == {
        "at_step": 12,
        "step_s": 1.0,
        "iters_before": 24,
        "iters": 49,
    }
    assert "stopped_at_step" not in facts and facts["learned_s"] == 57.0
    assert result.zeros == round(0.7 * TINY_TOTAL)


def test_steps_slower_than_the_probe_re_size_the_run_down(tiny_net, calib_x, monkeypatch):
    """Probe steps of 1 s size 34 steps in 40 s; at 2 s a step the re-size before step 12 (clock
    4 + 24 = 28) cuts the run to 12 + ⌊(38 − 28) / 2⌋ = 17 steps, which end in time: no warning.
    With ``freeze_masks_at`` 0.5 the freeze step moves from 17 to 9, behind the re-size: the masks
    are held at step 12, once."""
    clock = FakeClock(monkeypatch, step_s=1.0)
    _switch_step_time(monkeypatch, clock, PROBE, 2.0)
    held = []
    hold = Prepared.hold_masks
    monkeypatch.setattr(Prepared, "hold_masks", lambda self, masks=None: held.append(1) or hold(self, masks))
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=1000, batch_size=16, time_budget_s=40.0, freeze_masks_at=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fcpts.prune(tiny_net, calib_x, config)
    assert result.config["iters"] == 17 == len(result.history)
    assert result.config["time_budget"]["resized"] == {"at_step": 12, "step_s": 2.0, "iters_before": 34, "iters": 17}
    assert len(held) == 1
    assert result.zeros == round(0.7 * TINY_TOTAL)


def test_a_resumed_re_sized_run_is_the_uninterrupted_one(tiny_net, calib_x, monkeypatch, tmp_path):
    """Checkpoints after the re-size record its iters and the cap: the resume ends where the full run did."""
    clock = FakeClock(monkeypatch, step_s=2.0)
    _switch_step_time(monkeypatch, clock, PROBE, 1.0)
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=1000, batch_size=16, time_budget_s=60.0)
    full = fcpts.prune(tiny_net, calib_x, config, RunOptions(checkpoint_dir=str(tmp_path / "a"), checkpoint_every=8))
    assert full.config["iters"] == 49  # the last checkpoint is at step 48
    clock.now, clock.step_s = 0.0, 100.0
    resumed = fcpts.prune(tiny_net, calib_x, config, RunOptions(checkpoint_dir=str(tmp_path / "a"), resume=True))
    assert resumed.config["iters"] == 49 and resumed.history == full.history
    for a, b in zip(resumed.model.state_dict().values(), full.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_steps_slower_after_the_re_size_stop_at_the_deadline(tiny_net, calib_x, monkeypatch):
    """Probe and first 12 steps at 1 s: 34 steps, the re-size (clock 16, ⌊(38 − 16) / 1⌋ = 22 left)
    keeps 34. From step 12 on a step takes 2 s: before step k the clock reads 16 + 2(k − 12), past
    38 first at k = 24, where the deadline stops learning."""
    clock = FakeClock(monkeypatch, step_s=1.0)
    _switch_step_time(monkeypatch, clock, PROBE + budget.RESIZE_AT_STEP, 2.0)
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=1000, batch_size=16, time_budget_s=40.0)
    with pytest.warns(UserWarning, match="ran out: learning stopped after 24 of 34 steps"):
        result = fcpts.prune(tiny_net, calib_x, config)
    assert result.config["iters"] == 34 and len(result.history) == 24
    assert result.config["time_budget"]["stopped_at_step"] == 24 and "resized" not in result.config["time_budget"]
    assert result.zeros == round(0.7 * TINY_TOTAL)
