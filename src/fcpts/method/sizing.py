"""Sizing a learning run to its time budget (:mod:`.budget`): probe steps, the chosen ``iters``, the deadline.

:func:`sized_config` times probe steps (:func:`probe_times`, then undone) and returns the config
with the ``iters`` that fit, the facts the report records and the deadline; :func:`past_deadline`
is the per-step check every rank agrees on; a :class:`Resize` re-sizes the run once from its own
step times.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..api import RunOptions
from ..core import distributed
from ..core.calibration import Calibration
from . import budget
from .checkpoint import checkpoint_config
from .config import FCPTSConfig
from .objective import _Objective
from .prepare import Prepared, exact_keep_masks
from .steps import _Loop, param_groups, rank_shard


def past_deadline(deadline: float | None, device: torch.device) -> bool:
    """Whether rank 0's clock is past ``deadline`` (None: never); every rank takes rank 0's answer."""
    if deadline is None:
        return False
    past = torch.tensor([int(budget.clock() > deadline)], device=device)
    distributed.broadcast_tensors([past])  # one decision, or some ranks would wait on the others' collectives
    return bool(past.item())


@dataclass
class Resize:
    """The one re-sizing of a budgeted run (:func:`~fcpts.method.budget.resized_iters`): call
    :meth:`iters` before every step; before step :data:`~fcpts.method.budget.RESIZE_AT_STEP` it
    returns the new length (None at every other step, and when nothing changes)."""

    deadline: float
    cap: int  # the most steps the run may take: the iters the budget sized down from
    starts: list[float] = field(default_factory=list)  # the clock at the start of each step so far
    facts: dict[str, Any] = field(default_factory=dict)  # what the report records of a re-size

    def iters(self, step: int, current: int, device: torch.device) -> int | None:
        now = budget.clock()
        self.starts.append(now)
        if step != budget.RESIZE_AT_STEP or len(self.starts) <= budget.RESIZE_TIMED:
            return None  # not the step, or fewer steps timed (a run that did not start at step 0)
        recent = self.starts[-budget.RESIZE_TIMED - 1 :]  # RESIZE_TIMED + 1 readings: RESIZE_TIMED steps
        step_s = statistics.median(b - a for a, b in itertools.pairwise(recent))
        chosen = torch.tensor([budget.resized_iters(self.deadline, now, step_s, step, self.cap)], device=device)
        distributed.broadcast_tensors([chosen])  # every rank runs rank 0's count
        iters = int(chosen.item())
        if iters == current:
            return None
        self.facts = {"at_step": step, "step_s": round(step_s, 6), "iters_before": current, "iters": iters}
        return iters


def sized_config(
    prepared: Prepared,
    objective: _Objective,
    calibration: Calibration,
    config: FCPTSConfig,
    options: RunOptions,
    started: float,
) -> tuple[FCPTSConfig, dict[str, Any], float | None]:
    """``config`` with the ``iters`` that fit its time budget (:mod:`.budget`), what the sizing found
    (nothing when every step fits: the run and its report are those without a budget), and the
    deadline no step starts after (None for a resume: it runs its checkpoint's steps).

    A resume keeps the iters its checkpoint was sized to. Otherwise probe steps are timed on a
    throwaway optimizer, one exact mask cut stands for finalize, and the model, the thresholds and
    the RNG are put back: the run that follows is the plain run with the chosen iters. Every rank
    takes rank 0's choice.
    """
    budget_s = config.time_budget_s
    assert budget_s is not None
    if options.resume:
        saved = checkpoint_config(options.checkpoint_dir)  # type: ignore[arg-type]
        if saved.get("time_budget_iters_cap") == config.iters and isinstance(saved.get("iters"), int):
            sized = dataclasses.replace(config, iters=saved["iters"])  # the budget is compared by load_checkpoint
            facts = {"budget_s": budget_s, "iters_cap": config.iters, "resumed": True}
            return sized, {"iters": sized.iters, "time_budget": facts}, None
        return config, {}, None  # not a sized run's checkpoint: load_checkpoint names the difference
    step_s, finalize_s, probes = probe_times(prepared, objective, calibration, config, options)
    spent_s = budget.clock() - started
    chosen = torch.tensor(
        [budget.sized_iters(budget_s, spent_s, step_s, finalize_s, config.iters)], device=calibration.device
    )
    distributed.broadcast_tensors([chosen])  # every rank runs rank 0's count
    iters = int(chosen.item())
    if iters == 0:
        warnings.warn(
            f"the time budget of {budget_s:g} s was spent before learning ({spent_s:.1f} s): "
            "no learning step, the initial allocation is finalized",
            stacklevel=3,
        )
    limit = budget.deadline(started, budget_s, finalize_s)
    if iters == config.iters:  # the whole run fits: nothing changes, and nothing is reported
        return config, {}, limit
    facts = {
        "budget_s": budget_s,
        "iters_cap": config.iters,
        "step_s": round(step_s, 6),
        "finalize_s": round(finalize_s, 6),
        "spent_before_learning_s": round(spent_s, 3),
        "probe_steps": probes,
    }
    return dataclasses.replace(config, iters=iters), {"iters": iters, "time_budget": facts}, limit


def probe_times(
    prepared: Prepared, objective: _Objective, calibration: Calibration, config: FCPTSConfig, options: RunOptions
) -> tuple[float, float, int]:
    """The median step time, one finalize's mask cut, and the probe steps taken; the state is put back."""
    state = {k: v.detach().clone() for k, v in prepared.model.state_dict().items()}
    rng = torch.get_rng_state()
    groups, schedules = param_groups(prepared, config)
    quiet = dataclasses.replace(options, checkpoint_dir=None, checkpoint_every=None, resume=False, progress=False)
    probe = _Loop.create(prepared, groups, schedules, config, quiet)
    stream = calibration.stream()
    times = []
    for step in range(budget.WARMUP_STEPS + budget.MEASURED_STEPS):
        start = budget.clock()
        prepared.refresh_bandwidths()
        inputs, index, share = rank_shard(*next(stream))
        probe.step(step, objective(inputs, index), share)
        times.append(budget.clock() - start)
    start = budget.clock()
    exact_keep_masks(prepared)
    finalize_s = budget.clock() - start
    with torch.no_grad():
        prepared.model.load_state_dict(state)
    torch.set_rng_state(rng)
    for p in probe.trained:
        p.grad = None
    return statistics.median(times[budget.WARMUP_STEPS :]), finalize_s, len(times)
