"""A time budget for FCPTS: the run measures its first steps and chooses ``iters`` to finish in time.

``FCPTSConfig.time_budget_s`` (``--time-budget``; 10 minutes by default, None for no budget) is the
wall time of the whole fcpts run, from the start of :func:`~fcpts.method.fcpts.run_fcpts` (the
teacher copy, a one-shot start, the refit and the teacher-output cache count) to the pruned model.
:func:`~fcpts.method.learn.learn` times :data:`WARMUP_STEPS` + :data:`MEASURED_STEPS` probe steps
and one exact mask cut (what :func:`~fcpts.method.prepare.finalize` costs), puts the model, the
thresholds and the RNG back as they were, and runs :func:`sized_iters` steps: the most that fit in
what is left of the budget after a margin for finalize, at most ``config.iters`` (a budget only
shortens a run; give a large ``--iters`` to fill the budget; after a one-shot start the start check of
:mod:`~fcpts.method.keep_start`, three no-grad passes over 256 calibration rows, comes out of the
margin too: 21 s with finalize on EfficientNet-Lite1). The probe changes nothing: a sized
run is bit for bit the run with that ``iters`` and no budget, and ``freeze_masks_at`` and the
learning-rate schedules apply to the sized ``iters``. When every step fits, nothing changes and
nothing is reported. A resumed run keeps the ``iters`` its checkpoint was sized to (the checkpoint
records the cap it was sized from). The size is a forecast; the budget is also a limit: a step that
would start past :func:`deadline` (steps turned slower than the probe's, e.g. on a machine that got
busy) ends learning there, with a warning, and the report's ``time_budget.stopped_at_step`` says
where. A stopped run is not the plain run with that ``iters`` (its schedule had not ended).
The first steps are often the slowest (on EfficientNet-Lite1 at 0.8 the probe measured 5.0 s a
step and the steps then averaged about 3.9 s, and a run sized on the probe alone ended at 463 s of
600), so the run is **re-sized once**, before step :data:`RESIZE_AT_STEP`, from the median of its
own last :data:`RESIZE_TIMED` steps (:func:`resized_iters`, at most the cap; the report's
``time_budget.resized`` holds the step time and both sizes). From there the learning-rate schedule
and the mask-freeze point follow the new ``iters``; the steps before it followed the probe's, so a
re-sized run is the plain run with its ``iters`` except for the first :data:`RESIZE_AT_STEP`
steps' kept-weight rates. A run resumed from a checkpoint taken before the re-size keeps the
probe's size (a resume is not re-timed).

The timer is :func:`clock` (tests replace it with a fake one).
"""

from __future__ import annotations

import math
import re
import time

#: The timer every budget measurement reads (``time.perf_counter``; monkeypatched in tests).
clock = time.perf_counter

#: Probe steps run before the timed ones (first-call allocations, lazy initialisation).
WARMUP_STEPS = 1
#: Timed probe steps: their median is the step time.
MEASURED_STEPS = 3
#: The run's step before which it is re-sized from its own step times (once; shorter runs never are).
RESIZE_AT_STEP = 12
#: The steps just before :data:`RESIZE_AT_STEP` whose median is the re-sized step time.
RESIZE_TIMED = 6
#: Kept back for finalize and the return, as a fraction of the budget, besides twice the timed mask cut.
FINALIZE_MARGIN = 0.05

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in a duration: ``90s``, ``10m``, ``1.5h`` or plain seconds (``600``); > 0.

    >>> parse_duration("90s"), parse_duration("10m"), parse_duration("1h"), parse_duration("2.5")
    (90.0, 600.0, 3600.0, 2.5)
    >>> parse_duration("ten minutes")
    Traceback (most recent call last):
    ...
    ValueError: expected a duration like 90s, 10m, 1h or plain seconds, got 'ten minutes'
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration like 90s, 10m, 1h or plain seconds, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not seconds > 0:
        raise ValueError(f"a time budget must be > 0, got {text!r}")
    return seconds


def deadline(started: float, budget_s: float, finalize_s: float) -> float:
    """The clock reading after which no learning step starts: the budget less :func:`sized_iters`'s margin.

    >>> deadline(10.0, 100.0, 0.5)
    104.0
    """
    return started + budget_s - FINALIZE_MARGIN * budget_s - 2 * finalize_s


def sized_iters(budget_s: float, spent_s: float, step_s: float, finalize_s: float, cap: int) -> int:
    """The steps that fit: ``⌊(budget − spent − margin) / step⌋`` in ``[0, cap]``.

    ``margin = FINALIZE_MARGIN · budget + 2 · finalize_s``.

    >>> sized_iters(100.0, 4.0, 0.5, 0.0, 1000), sized_iters(100.0, 4.0, 0.5, 0.0, 50), sized_iters(10.0, 20.0, 1, 0, 9)
    (182, 50, 0)
    """
    left = budget_s - spent_s - FINALIZE_MARGIN * budget_s - 2 * finalize_s
    if step_s <= 0:
        return cap if left > 0 else 0
    return max(0, min(cap, math.floor(left / step_s)))


def resized_iters(deadline: float, now: float, step_s: float, done: int, cap: int) -> int:
    """The run's new length at ``now``, ``done`` steps in: those plus the steps of ``step_s`` that
    end by the ``deadline``, in ``[done, cap]``.

    >>> resized_iters(100.0, 40.0, 2.0, 12, 1000), resized_iters(100.0, 40.0, 2.0, 12, 30)
    (42, 30)
    >>> resized_iters(10.0, 20.0, 1.0, 12, 50)  # past the deadline already: no further step
    12
    """
    if step_s <= 0:
        return cap
    return max(done, min(cap, done + math.floor((deadline - now) / step_s)))
