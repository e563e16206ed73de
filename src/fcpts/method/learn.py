"""The learning loop of FCPTS: :func:`learn` minimises ``L_rec + λ·L_c`` over thresholds and kept weights.

:func:`learn` reads top-down: it sets the models up (:func:`_set_up`), builds Adam's two groups
(:func:`param_groups`: thresholds at a constant rate, kept weights with a cosine decay or a
constant rate), and runs the steps of a :class:`_Loop` (optimizer, schedule, history, checkpoints) on the losses of
an :class:`_Objective` (the teacher's outputs, cached where they fit, the reconstruction and
feature losses, the control loss on the bridged global sparsity). At ``freeze_masks_at`` the masks
are held at finalize's exact count (:meth:`~fcpts.method.prepare.Prepared.hold_masks`). In a
process group each rank computes on its shard of the global batch (:func:`rank_shard`) and the
gradients are summed over the ranks (:mod:`fcpts.core.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..api import History, RunOptions
from ..core import distributed
from ..core.calibration import Calibration
from ..core.memory_format import resolve_memory_format
from ..errors import FcptsError
from . import budget
from .checkpoint import has_checkpoint
from .config import FCPTSConfig
from .objective import _Objective
from .prepare import Prepared
from .sizing import Resize, past_deadline, sized_config
from .steps import Schedule, _Loop, param_groups, rank_shard


def learn(
    prepared: Prepared,
    teacher: nn.Module,
    calibration: Calibration,
    config: FCPTSConfig,
    options: RunOptions | None = None,
    *,
    started: float | None = None,
) -> History:
    """Minimise ``L_rec + L_c`` over thresholds and kept weights; returns the per-step loss history.

    **Time budget.** With ``config.time_budget_s``, ``iters`` is sized to finish the run started at
    ``started`` (a :func:`fcpts.method.budget.clock` reading; default: now) within the budget, and
    no step starts past it (re-sized once from its own step times); the history's ``run`` records
    the iters and timings (:mod:`.budget`).

    **Data parallel.** In a process group (``torchrun``, or your own ``init_process_group``),
    ``config.batch_size`` is the *global* batch: each rank computes on its contiguous shard of it
    (sizes differ by at most one) and the gradients, weighted by each share, are summed over the
    ranks before every step (:mod:`fcpts.core.distributed`): the step one process takes on the whole
    batch, up to float rounding. The data and the model must be the same on every rank; rank 0's
    weights are broadcast at the start and the end, so all ranks end identical.

    **Checkpoints.** With ``options.checkpoint_every = N`` the training state goes to
    ``options.checkpoint_dir`` every N steps (by rank 0); ``options.resume`` continues from it to the
    result, bit for bit, of an uninterrupted run with the same options (:mod:`.checkpoint`).
    """
    options = RunOptions() if options is None else options
    started = budget.clock() if started is None else started
    if config.batch_size is None:  # (not chosen by run_fcpts: the batches are the calibration's)
        config = dataclasses.replace(config, batch_size=calibration.batch_size)
    _set_up(prepared, teacher, config)
    groups, schedules = param_groups(prepared, config)
    if not groups or config.iters == 0:
        return History()
    _check_run(config, options)
    # Every rank starts from rank 0's model (one built without a fixed seed differs between processes).
    distributed.broadcast_module(prepared.model)
    distributed.broadcast_module(teacher)
    memory_format = resolve_memory_format(prepared.model, config.memory_format)
    prepared.model.to(memory_format=memory_format)
    teacher.to(memory_format=memory_format)
    run: dict[str, Any] = {}
    deadline = None
    with (
        _only_trained_need_grad(prepared.model, [p for g in groups for p in g["params"]]),
        _Objective(prepared, teacher, calibration, config, memory_format) as objective,
    ):
        if config.time_budget_s is not None:  # the iters that fit, and the deadline no step starts after
            config, run, deadline = sized_config(prepared, objective, calibration, config, options, started)
            groups, schedules = param_groups(prepared, config)  # the schedules of the sized iters
        history = _run_steps(prepared, objective, calibration, groups, schedules, config, options, run, deadline)
        for model in (prepared.model, teacher):  # both come back in the default format
            model.to(memory_format=torch.contiguous_format)
        # Identical on every rank whatever the backend's reduction order: rank 0's result for all.
        distributed.broadcast_module(prepared.model)
    if run:
        run["time_budget"]["learned_s"] = round(budget.clock() - started, 3)
    return History(history, run=run)


def _record_run_end(run: dict[str, Any], config: FCPTSConfig, steps: int, iters: int, resized: dict) -> None:
    """Into the report's ``run``: a re-size (the new iters and its facts), and a stop at the deadline."""
    if resized:  # the run's own step times re-sized it
        facts = run.setdefault("time_budget", {"budget_s": config.time_budget_s, "iters_cap": config.iters})
        run["iters"], facts["resized"] = iters, resized
    if steps < iters:  # the deadline stopped it (a resume's history holds the earlier steps)
        run.setdefault("time_budget", {"budget_s": config.time_budget_s})["stopped_at_step"] = steps


def _run_steps(
    prepared: Prepared,
    objective: _Objective,
    calibration: Calibration,
    groups: list[dict[str, Any]],
    schedules: list[Schedule],
    config: FCPTSConfig,
    options: RunOptions,
    run: dict[str, Any],
    deadline: float | None = None,
) -> list[dict[str, float]]:
    """The learning steps of a :class:`_Loop` (from its checkpoint with ``options.resume``); the history.

    ``run``: what the time budget's sizing recorded (its ``iters_cap``, the iters it sized
    ``config.iters`` down from, goes into the checkpoints); a re-size and a stop at the deadline
    are added to it. ``deadline``: a :func:`~fcpts.method.budget.clock` reading past which no step starts (a warning
    says where learning stopped); with one, the run is re-sized once from its own step times
    (:class:`~fcpts.method.sizing.Resize`)."""
    if config.iters == 0:  # a time budget spent before learning
        return []
    iters_cap = run["time_budget"]["iters_cap"] if run else None
    loop = _Loop.create(prepared, groups, schedules, config, options, iters_cap)
    if config.bandwidth_update == "once":  # the bandwidths of the weights learning starts from (a resume's too)
        prepared.fix_bandwidths()
    loop.resume()
    stream = calibration.stream(start_step=loop.first_step, replacement=config.sampling == "replacement")
    resize = None if deadline is None else Resize(deadline, iters_cap or config.iters)
    with _progress(loop, options) as bar:
        step = loop.first_step
        while step < loop.config.iters:
            if past_deadline(deadline, calibration.device):
                warnings.warn(
                    f"the time budget of {config.time_budget_s:g} s ran out: learning stopped after {step} of "
                    f"{loop.config.iters} steps (the steps turned slower than the first ones timed)",
                    stacklevel=4,
                )
                break
            iters = None if resize is None else resize.iters(step, loop.config.iters, calibration.device)
            if iters is not None:
                loop.resize(iters)
                bar.total = iters
            if loop.holds_masks_at(step):  # allocation learned: the remaining steps only reconstruct
                prepared.hold_masks()
            # The weights changed in the last step: every learning layer's KDE bandwidth at once,
            # before the forward pass's surrogate masks and the bridge read them.
            prepared.refresh_bandwidths()
            inputs, index, share = rank_shard(*next(stream))
            loop.step(step, objective(inputs, index), share)
            step += 1
            bar.update()
    _record_run_end(run, config, len(loop.history), loop.config.iters, {} if resize is None else resize.facts)
    return loop.history


def _set_up(prepared: Prepared, teacher: nn.Module, config: FCPTSConfig) -> None:
    """Both models in eval mode, the teacher without gradients, the thresholds learning or held."""
    teacher.eval().requires_grad_(False)
    prepared.model.eval()  # BatchNorm uses the dense running statistics; the kept weights adapt to them
    for p in prepared.threshold_parameters():
        p.requires_grad_(config.learn_thresholds)
    if not config.learn_thresholds:
        # A fixed allocation: hold the initial masks, so that the kept weights learning cannot move
        # weights across the (fixed) thresholds. Before a resume restores the learned weights, so
        # a resumed run freezes the same masks.
        prepared.freeze_masks()


def _check_run(config: FCPTSConfig, options: RunOptions) -> None:
    """Refuse to overwrite another run's checkpoint, and a global batch smaller than the process group."""
    if options.checkpoint_every and not options.resume and has_checkpoint(options.checkpoint_dir):  # type: ignore[arg-type]
        raise FcptsError(
            f"{options.checkpoint_dir} already holds a checkpoint: resume it (--resume) or choose another directory"
        )
    world = distributed.world_size()
    if config.batch_size < world:
        raise FcptsError(f"batch_size {config.batch_size} (the global batch) is smaller than the {world} processes")


@contextlib.contextmanager
def _only_trained_need_grad(model: nn.Module, trained: list[nn.Parameter]) -> Iterator[None]:
    """Inside, only the ``trained`` parameters of ``model`` require a gradient; the flags come back on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    trained_ids = {id(p) for p in trained}
    for p, _ in flags:
        p.requires_grad_(id(p) in trained_ids)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _progress(loop: _Loop, options: RunOptions) -> tqdm:
    """A progress bar over the loop's steps on the main rank if ``options.progress`` (updated by hand:
    a re-size changes its total)."""
    show = options.progress and distributed.is_main()
    # disable=None: tqdm hides the bar when stderr is not a terminal (CI logs, pipes).
    disable = None if show else True
    return tqdm(desc="fcpts", initial=loop.first_step, total=loop.config.iters, disable=disable, leave=False)
