"""The learning loop of FCPTS: :func:`learn` minimises ``L_rec + λ·L_c`` over thresholds and kept weights.

:func:`learn` reads top-down: it sets the models up (:func:`_set_up`), builds Adam's two groups
(:func:`_param_groups`: thresholds at a constant rate, kept weights with a cosine decay or a
constant rate), and runs the steps of a :class:`_Loop` (optimizer, schedule, history, checkpoints) on the losses of
an :class:`_Objective` (the teacher's outputs, cached where they fit, the reconstruction and
feature losses, the control loss on the bridged global sparsity). At ``freeze_masks_at`` the masks
are held at finalize's exact count (:meth:`~fcpts.method.prepare.Prepared.hold_masks`). In a
process group each rank computes on its shard of the global batch (:func:`_rank_shard`) and the
gradients are summed over the ranks (:mod:`fcpts.core.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..api import History, RunOptions
from ..core import distributed
from ..core.calibration import Calibration, batch_size_of, shard
from ..core.memory_format import resolve_memory_format
from ..errors import FcptsError
from . import budget
from .checkpoint import checkpoint_config, has_checkpoint
from .config import FCPTSConfig
from .objective import _Objective
from .prepare import Prepared, exact_keep_masks
from .steps import Schedule, _Loop


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
    ``started`` (a :func:`fcpts.method.budget.clock` reading; default: now) within the budget;
    the history's ``run`` records the chosen ``iters`` and the timings (:mod:`fcpts.method.budget`).

    **Data parallel.** Inside an initialised process group (``torchrun``, or your own
    ``init_process_group``), ``config.batch_size`` is the *global* batch: every rank reads the same
    global batch and computes on its own contiguous shard of it (``batch_size / world_size``
    samples; shard sizes differ by at most one), and each rank's gradients, weighted by its share of
    the batch, are summed over the ranks before every step (:mod:`fcpts.core.distributed`). Every rank
    thus takes the step one process takes on the whole batch (equal up to float rounding: the sums
    run in another order) and all ranks end with identical thresholds and weights. The data and the
    model must be the same on every rank; rank 0's weights are broadcast at the start and the end.

    **Checkpoints.** With ``options.checkpoint_every = N`` the training state (step, student with
    thresholds, optimizer, scheduler, RNG, history) goes to ``options.checkpoint_dir`` every N steps
    (by rank 0); ``options.resume`` continues from it and reaches the same result, bit for bit, as
    an uninterrupted run with the same options (:mod:`fcpts.method.checkpoint`).
    """
    options = RunOptions() if options is None else options
    started = budget.clock() if started is None else started
    _set_up(prepared, teacher, config)
    groups, schedules = _param_groups(prepared, config)
    if not groups or config.iters == 0:
        return History()
    _check_run(config, options)
    # Every rank starts from rank 0's model (one built without a fixed seed differs between processes).
    distributed.broadcast_module(prepared.model)
    distributed.broadcast_module(teacher)
    memory_format = resolve_memory_format(prepared.model, config.memory_format)
    prepared.model.to(memory_format=memory_format)
    teacher.to(memory_format=memory_format)
    trained = [p for g in groups for p in g["params"]]
    run: dict[str, Any] = {}
    with (
        _only_trained_need_grad(prepared.model, trained),
        _Objective(prepared, teacher, calibration, config, memory_format) as objective,
    ):
        deadline = None
        if config.time_budget_s is not None:
            config, run, deadline = _sized_config(prepared, objective, calibration, config, options, started)
            groups, schedules = _param_groups(prepared, config)  # the schedules of the sized iters
        cap = run["time_budget"]["iters_cap"] if run else None
        history = _run_steps(prepared, objective, calibration, groups, schedules, config, options, cap, deadline)
        if len(history) < config.iters:  # the deadline stopped it (a resume's history holds the earlier steps)
            run.setdefault("time_budget", {"budget_s": config.time_budget_s})["stopped_at_step"] = len(history)
        for model in (prepared.model, teacher):  # both come back in the default format
            model.to(memory_format=torch.contiguous_format)
        # Identical on every rank whatever the backend's reduction order: rank 0's result for all.
        distributed.broadcast_module(prepared.model)
    if run:
        run["time_budget"]["learned_s"] = round(budget.clock() - started, 3)
    return History(history, run=run)


def _run_steps(
    prepared: Prepared,
    objective: _Objective,
    calibration: Calibration,
    groups: list[dict[str, Any]],
    schedules: list[Schedule],
    config: FCPTSConfig,
    options: RunOptions,
    iters_cap: int | None = None,
    deadline: float | None = None,
) -> list[dict[str, float]]:
    """The learning steps of a :class:`_Loop` (from its checkpoint with ``options.resume``); the history.

    ``iters_cap``: the iters a time budget sized ``config.iters`` down from (its checkpoints record it).
    ``deadline``: a :func:`~fcpts.method.budget.clock` reading past which no step starts (a warning
    says where learning stopped)."""
    if config.iters == 0:  # a time budget spent before learning
        return []
    loop = _Loop.create(prepared, groups, schedules, config, options, iters_cap)
    if config.bandwidth_update == "once":  # the bandwidths of the weights learning starts from (a resume's too)
        prepared.fix_bandwidths()
    loop.resume()
    stream = calibration.stream(start_step=loop.first_step, replacement=config.sampling == "replacement")
    for step in _steps(loop.first_step, config, options):
        if _past(deadline, calibration.device):
            warnings.warn(
                f"the time budget of {config.time_budget_s:g} s ran out: learning stopped after {step} of "
                f"{config.iters} steps (the steps turned slower than the first ones timed)",
                stacklevel=4,
            )
            break
        if step == loop.freeze_step:  # allocation learned: the remaining steps only reconstruct
            prepared.hold_masks()
        # The weights changed in the last step: every learning layer's KDE bandwidth at once,
        # before the forward pass's surrogate masks and the bridge read them.
        prepared.refresh_bandwidths()
        inputs, index, share = _rank_shard(*next(stream))
        loop.step(step, objective(inputs, index), share)
    return loop.history


def _past(deadline: float | None, device: torch.device) -> bool:
    """Whether rank 0's clock is past ``deadline`` (None: never); every rank takes rank 0's answer."""
    if deadline is None:
        return False
    past = torch.tensor([int(budget.clock() > deadline)], device=device)
    distributed.broadcast_tensors([past])  # one decision, or some ranks would wait on the others' collectives
    return bool(past.item())


def _sized_config(
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
    step_s, finalize_s, probes = _probe_times(prepared, objective, calibration, config, options)
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


def _probe_times(
    prepared: Prepared, objective: _Objective, calibration: Calibration, config: FCPTSConfig, options: RunOptions
) -> tuple[float, float, int]:
    """The median step time, one finalize's mask cut, and the probe steps taken; the state is put back."""
    state = {k: v.detach().clone() for k, v in prepared.model.state_dict().items()}
    rng = torch.get_rng_state()
    groups, schedules = _param_groups(prepared, config)
    quiet = dataclasses.replace(options, checkpoint_dir=None, checkpoint_every=None, resume=False, progress=False)
    probe = _Loop.create(prepared, groups, schedules, config, quiet)
    stream = calibration.stream()
    times = []
    for step in range(budget.WARMUP_STEPS + budget.MEASURED_STEPS):
        start = budget.clock()
        prepared.refresh_bandwidths()
        inputs, index, share = _rank_shard(*next(stream))
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


def _param_groups(prepared: Prepared, config: FCPTSConfig) -> tuple[list[dict[str, Any]], list[Schedule]]:
    """Adam's parameter groups and their learning-rate factors: thresholds, then the kept weights.

    Thresholds keep a constant rate to track the target to the end; the weights (every other
    parameter of the student that requires a gradient, unless ``lr_weight`` is 0) decay (cosine) to
    0, or keep theirs with ``lr_schedule="constant"``.
    """
    thresholds = prepared.threshold_parameters()
    threshold_ids = {id(p) for p in thresholds}
    weights = [p for p in prepared.model.parameters() if p.requires_grad and id(p) not in threshold_ids]
    if config.lr_weight <= 0:
        weights = []
    groups: list[dict[str, Any]] = []
    schedules: list[Schedule] = []
    if config.learn_thresholds:
        groups.append({"params": thresholds, "lr": config.lr_threshold})
        schedules.append(lambda i: 1.0)
    if weights:
        groups.append({"params": weights, "lr": config.lr_weight})
        if config.lr_schedule == "constant":
            schedules.append(lambda i: 1.0)
        else:
            schedules.append(lambda i: 0.5 * (1 + math.cos(math.pi * i / config.iters)))
    return groups, schedules


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


def _steps(first_step: int, config: FCPTSConfig, options: RunOptions) -> Iterable[int]:
    """Steps ``first_step .. iters - 1``, behind a progress bar on the main rank if ``options.progress``."""
    show = options.progress and distributed.is_main()
    # disable=None: tqdm hides the bar when stderr is not a terminal (CI logs, pipes).
    disable = None if show else True
    return tqdm(
        range(first_step, config.iters),
        desc="fcpts",
        initial=first_step,
        total=config.iters,
        disable=disable,
        leave=False,
    )


def _rank_shard(inputs: Any, index: torch.Tensor | None) -> tuple[Any, torch.Tensor | None, float]:
    """This rank's contiguous shard of a global batch (its row indices too), and its share of the batch."""
    rank, world = distributed.rank(), distributed.world_size()
    total = batch_size_of(inputs)
    if world > 1:
        if total < world:
            raise FcptsError(f"a calibration batch of {total} samples cannot be split over {world} processes")
        inputs, index = shard(inputs, rank, world), shard(index, rank, world)
    return inputs, index, batch_size_of(inputs) / total
