"""Where learning starts: ``init="auto"`` (the default) picks a magnitude allocation or a fitted one-shot start.

From a magnitude allocation (ERK) the thresholds and the kept weights need their steps: on the
reference models the default 1000 steps take minutes and lead every method. On a model whose
steps are long, the time budget buys a small part of them (EfficientNet-Lite1 at 240 px: about 4 s
a step of 64 images on 2 CPU cores, so about 130 of 1000 steps in 10 minutes), and learning from
ERK ends far below POT's layer-wise least-squares fit (docs/benchmarks.md). There fcpts learns
from that fit instead, at a tenth of the kept-weight rate (:data:`ONESHOT_LR_WEIGHT`: at the
allocation start's rate the first steps undo the fit).

:func:`resolve_start` makes the choice. ``"auto"`` times one forward and backward pass of the
dense model on the first calibration batch (a lower bound of a learning step) and starts from
:data:`AUTO_ONESHOT` under the :data:`AUTO_ALLOCATION` allocation when the time budget affords
fewer than :data:`MIN_STEP_FRACTION` of ``iters`` such steps; from ERK otherwise, and always
without a budget. From a one-shot start the batch (``batch_size=None``) is a quarter of the
allocation start's (:data:`~.config.ONESHOT_BATCH`): the budget then buys four times the steps. A
one-shot start reads the first ``start_samples`` calibration rows (1024), so that its cost stays
bounded whatever the calibration set. In a process group every rank takes rank 0's choice; a
resumed run takes its checkpoint's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..api import RunOptions
from ..core import distributed
from ..core.calibration import Calibration, call_model, rows
from ..core.evaluate import output_logits
from ..core.memory_format import in_format, resolve_memory_format
from . import budget
from .checkpoint import checkpoint_config
from .config import FCPTSConfig, oneshot_methods
from .steps import rank_shard

#: ``init="auto"``'s start when the budget is short: POT's least-squares refit of every layer ...
AUTO_ONESHOT = "pot"
#: ... under the LAMP allocation (on EfficientNet-Lite1 8 points of top-1 agreement over POT's uniform one at 0.7).
AUTO_ALLOCATION = "lamp"
#: ``init="auto"``'s start when the budget affords the learning steps: ERK (the paper's).
AUTO_ALLOCATION_START = "erk"
#: ``"auto"`` starts from the one-shot fit when the budget affords fewer than this fraction of ``iters`` steps.
MIN_STEP_FRACTION = 0.5


def resolve_start(
    model: nn.Module, calibration: Calibration, config: FCPTSConfig, options: RunOptions, started: float
) -> tuple[FCPTSConfig, dict[str, Any]]:
    """``config`` with ``init`` chosen (for ``"auto"``) and ``lr_weight`` and ``batch_size`` set (for None); the
    facts of the choice.

    The facts (empty unless ``init`` was ``"auto"``) go into the report: the choice, and the step
    time and step count it was made on. ``started`` is the run's :func:`~fcpts.method.budget.clock`
    start (the budget counts from there).

    >>> from fcpts.core.calibration import Calibration
    >>> net, cal = nn.Linear(4, 2), Calibration(torch.randn(8, 4), 4)
    >>> config, facts = resolve_start(net, cal, FCPTSConfig(0.5, time_budget_s=None), RunOptions(), 0.0)
    >>> config.init, config.lr_weight, config.batch_size, facts
    ('erk', 0.001, 64, {'init': 'erk', 'allocation': None, 'reason': 'no time budget'})
    """
    facts: dict[str, Any] = {}
    if config.init == "auto":
        init, facts = _auto_init(model, calibration, config, options, started)
        allocation = (config.allocation or AUTO_ALLOCATION) if init in oneshot_methods() else None
        config = dataclasses.replace(config, init=init, allocation=allocation)
        facts = {"init": init, "allocation": allocation, **facts}
    if config.lr_weight is None:
        config = dataclasses.replace(config, lr_weight=config.kept_weight_rate)
    if config.batch_size is None:  # (chosen after the start: "auto" timed a batch of calibration_batch)
        config = dataclasses.replace(config, batch_size=config.learning_batch)
    return config, facts


def _auto_init(
    model: nn.Module, calibration: Calibration, config: FCPTSConfig, options: RunOptions, started: float
) -> tuple[str, dict[str, Any]]:
    """``"auto"``'s start (rank 0's in a process group, a resume's checkpoint's), and why."""
    if options.resume:
        saved = checkpoint_config(options.checkpoint_dir)  # type: ignore[arg-type]
        if saved.get("init") in (AUTO_ALLOCATION_START, AUTO_ONESHOT):
            return saved["init"], {"reason": "the checkpoint's start"}
    if config.time_budget_s is None:
        return AUTO_ALLOCATION_START, {"reason": "no time budget"}
    step_s = forward_backward_s(model, calibration, config)
    spent_s = budget.clock() - started
    steps = budget.sized_iters(config.time_budget_s, spent_s, step_s, 0.0, config.iters)
    choice = torch.tensor([int(steps < MIN_STEP_FRACTION * config.iters)], device=calibration.device)
    distributed.broadcast_tensors([choice])  # every rank starts where rank 0 does
    if not choice.item():  # no timings in the report: the run is the one asked for with init "erk"
        return AUTO_ALLOCATION_START, {"reason": f"the budget affords at least {MIN_STEP_FRACTION:.0%} of the steps"}
    reason = f"the budget affords about {steps} of {config.iters} steps"
    return AUTO_ONESHOT, {"reason": reason, "step_s": round(step_s, 6), "affordable_steps": steps}


def forward_backward_s(model: nn.Module, calibration: Calibration, config: FCPTSConfig) -> float:
    """Seconds of one forward and backward pass of ``model`` on the first calibration batch (this rank's
    share in a process group), in eval mode.

    A lower bound of a learning step (no masks, no loss against a teacher), timed after an untimed
    pass on one row (first-call costs). The model's gradients are cleared afterwards and its mode
    restored; no random numbers are drawn.

    >>> from fcpts.core.calibration import Calibration
    >>> forward_backward_s(nn.Linear(4, 2), Calibration(torch.randn(8, 4), 4), FCPTSConfig(0.5)) > 0
    True
    """
    batch, _, _ = rank_shard(calibration.first(), None)  # this rank's share of the global batch
    batch = in_format(batch, resolve_memory_format(model, config.memory_format))
    training = model.training
    model.eval()
    try:
        _forward_backward(model, rows(batch, slice(0, 1)))
        start = budget.clock()
        _forward_backward(model, batch)
        return budget.clock() - start
    finally:
        model.zero_grad(set_to_none=True)
        model.train(training)


def _forward_backward(model: nn.Module, inputs: Any) -> None:
    loss = output_logits(call_model(model, inputs)).float().square().mean()
    if loss.requires_grad:  # (a model with every parameter frozen has no backward pass)
        loss.backward()
