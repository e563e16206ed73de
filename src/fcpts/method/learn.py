"""The learning loop of FCPTS: :func:`learn` minimises ``L_rec + λ·L_c`` over thresholds and kept weights.

:func:`learn` reads top-down: it sets the models up (:func:`_set_up`), builds Adam's two groups
(:func:`_param_groups`: thresholds at a constant rate, kept weights with a cosine decay), and
runs the steps of a :class:`_Loop` (optimizer, schedule, history, checkpoints) on the losses of
an :class:`_Objective` (the teacher's outputs, cached where they fit, the reconstruction and
feature losses, the control loss on the bridged global sparsity). At ``freeze_masks_at`` the masks
are held at finalize's exact count (:meth:`~fcpts.method.prepare.Prepared.hold_masks`). In a
process group each rank computes on its shard of the global batch (:func:`_rank_shard`) and the
gradients are summed over the ranks (:mod:`fcpts.core.distributed`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..api import DEFAULT_CHECKPOINT_EVERY, RunOptions
from ..core import distributed
from ..core.calibration import Calibration, batch_size_of, call_model, shard
from ..core.checks import check_finite
from ..core.evaluate import output_logits
from ..errors import FcptsError
from .checkpoint import has_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from .config import FCPTSConfig
from .losses import RECONSTRUCTION_LOSSES, check_loss_fits, control_loss, resolve_loss
from .prepare import Prepared


class _FeatureTap:
    """Forward hooks that record the outputs of the named modules of one model (removed on close)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise FcptsError(f"feature_modules not found in the model: {', '.join(missing)}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output_logits(output)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


#: Largest teacher-output cache, in bytes, :func:`learn` keeps for tensor calibration data; above
#: it the teacher runs on every batch instead, so memory does not grow with N × output size.
#: 256 MiB holds 4096 samples of a 16k-way float32 output.
TEACHER_CACHE_BYTES = 256 * 2**20


#: How a non-finite teacher output is named in the error (the dense model is the teacher).
TEACHER_OUTPUTS = "the dense model's output on the calibration data"


@torch.no_grad()
def cache_teacher_outputs(
    teacher: nn.Module, calibration: Calibration, batch_size: int, budget_bytes: int
) -> torch.Tensor | None:
    """The teacher's outputs on every row of a tensor calibration set, on its device; None to stream.

    One sample gives the output size; the cache (preallocated: no list + concatenate peak) is
    built only if ``N × output size`` fits ``budget_bytes``.
    """
    x, device = calibration.tensor, calibration.device
    if x is None:
        return None
    probe = call_model(teacher, x[:1].to(device))
    if getattr(probe, "fcpts_loss", None) is not None:  # outputs for a whole-output loss (a detector's): streamed
        return None
    probe = output_logits(probe)  # (1, C...)
    if len(x) * probe[0].numel() * probe.element_size() > budget_bytes:
        return None
    cached = torch.empty((len(x), *probe.shape[1:]), dtype=probe.dtype, device=device)
    for i in range(0, len(x), batch_size):
        cached[i : i + batch_size] = output_logits(call_model(teacher, x[i : i + batch_size].to(device)))
    check_finite(cached, TEACHER_OUTPUTS)
    return cached


def learn(
    prepared: Prepared,
    teacher: nn.Module,
    calibration: Calibration,
    config: FCPTSConfig,
    options: RunOptions | None = None,
) -> list[dict[str, float]]:
    """Minimise ``L_rec + L_c`` over thresholds and kept weights; returns the per-step loss history.

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
    _set_up(prepared, teacher, config)
    groups, schedules = _param_groups(prepared, config)
    if not groups or config.iters == 0:
        return []
    _check_run(config, options)
    # Every rank starts from rank 0's model (one built without a fixed seed differs between processes).
    distributed.broadcast_module(prepared.model)
    distributed.broadcast_module(teacher)
    loop = _Loop.create(prepared, groups, schedules, config, options)
    with (
        _only_trained_need_grad(prepared.model, loop.trained),
        _Objective(prepared, teacher, calibration, config) as objective,
    ):
        loop.resume()
        stream = calibration.stream(start_step=loop.first_step)
        for step in _steps(loop.first_step, config, options):
            if step == loop.freeze_step:  # allocation learned: the remaining steps only reconstruct
                prepared.hold_masks()
            # The weights changed in the last step: every learning layer's KDE bandwidth at once,
            # before the forward pass's surrogate masks and the bridge read them.
            prepared.refresh_bandwidths()
            inputs, index, share = _rank_shard(*next(stream))
            loop.step(step, objective(inputs, index), share)
        # Identical on every rank whatever the backend's reduction order: rank 0's result for all.
        distributed.broadcast_module(prepared.model)
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


Schedule = Callable[[int], float]


def _param_groups(prepared: Prepared, config: FCPTSConfig) -> tuple[list[dict[str, Any]], list[Schedule]]:
    """Adam's parameter groups and their learning-rate factors: thresholds, then the kept weights.

    Thresholds keep a constant rate to track the target to the end; the weights (every other
    parameter of the student that requires a gradient, unless ``lr_weight`` is 0) decay (cosine) to 0.
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


@dataclass
class _Losses:
    """One step's losses on this rank's shard: the total, its reconstruction and feature parts, and ``S(t)``."""

    total: torch.Tensor
    rec: torch.Tensor
    feature: torch.Tensor
    sparsity: torch.Tensor

    def logged(self, step: int, share: float) -> dict[str, float]:
        """The history entry: the global batch's losses (weighted sum over ranks, as for the gradients)."""
        stats = torch.stack([self.total.detach(), self.rec.detach(), self.feature.detach()]).float() * share
        loss, rec, feature = distributed.all_reduce_sum_(stats).tolist()
        return {"step": step, "loss": loss, "rec": rec, "feature": feature, "sparsity": self.sparsity.item()}


class _Objective:
    """``L = L_rec + feature_weight · L_feat + λ · L_c`` on a batch; a context manager that removes its hooks.

    Without feature matching, the teacher's outputs on a tensor calibration set are computed once
    (N, C) instead of once per step (a quarter of the step time on the reference CNN), while they
    fit :data:`TEACHER_CACHE_BYTES`; otherwise (and for streamed data) once per batch. The
    reconstruction loss is chosen from the student's first output (``"auto"``: logits or embeddings).
    """

    def __init__(self, prepared: Prepared, teacher: nn.Module, calibration: Calibration, config: FCPTSConfig) -> None:
        self.prepared, self.teacher, self.config = prepared, teacher, config
        self.teacher_tap = _FeatureTap(teacher, config.feature_modules)
        self.student_tap = _FeatureTap(prepared.model, config.feature_modules)
        self.reconstruction: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
        self.cached = None  # (only without feature matching: then the taps hold no hook)
        if calibration.tensor is not None and not config.feature_modules:
            self.cached = cache_teacher_outputs(teacher, calibration, config.batch_size, TEACHER_CACHE_BYTES)

    def __enter__(self) -> _Objective:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.teacher_tap.close()
        self.student_tap.close()

    def target(self, inputs: Any, index: torch.Tensor | None, whole: bool = False) -> Any:
        """The teacher's outputs on the batch: cached rows, or a forward pass (checked finite); all with ``whole``."""
        if self.cached is not None and index is not None:
            return self.cached[index.to(self.cached.device)]
        with torch.no_grad():
            raw = call_model(self.teacher, inputs)
        target = raw if whole else output_logits(raw)
        for t in target.values() if whole else (target,):
            check_finite(t, TEACHER_OUTPUTS)
        return target

    def __call__(self, inputs: Any, index: torch.Tensor | None) -> _Losses:
        config = self.config
        output = call_model(self.prepared.model, inputs)
        if self.reconstruction is None:
            loss = resolve_loss(config.loss, output)
            check_loss_fits(loss, output)
            self.reconstruction = RECONSTRUCTION_LOSSES[loss]
        whole = getattr(self.reconstruction, "whole_output", False)  # e.g. a detector's dict of raw outputs
        target = self.target(inputs, index, whole)
        rec = self.reconstruction(output if whole else output_logits(output), target, config.temperature)
        student, teacher = self.student_tap.outputs, self.teacher_tap.outputs
        feat = sum(
            (F.mse_loss(student[n].float(), teacher[n].float()) for n in config.feature_modules),
            torch.zeros((), device=rec.device),
        )
        sparsity = self.prepared.global_sparsity()
        ctrl = control_loss(sparsity, config.target_sparsity, config.control_loss)
        total = rec + config.feature_weight * feat + config.control_weight * ctrl
        return _Losses(total, rec, feat, sparsity)


@dataclass
class _Loop:
    """The state of one learning run: the optimizer over the trained parameters, its schedule and the history."""

    prepared: Prepared
    config: FCPTSConfig
    options: RunOptions
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    trained: list[nn.Parameter]
    history: list[dict[str, float]] = field(default_factory=list)
    first_step: int = 0
    every: int = 0  # steps between checkpoints (0: none)

    @classmethod
    def create(
        cls,
        prepared: Prepared,
        groups: list[dict[str, Any]],
        schedules: list[Schedule],
        config: FCPTSConfig,
        options: RunOptions,
    ) -> _Loop:
        optimizer = torch.optim.Adam(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
        trained = [p for g in groups for p in g["params"]]
        every = 0 if options.checkpoint_dir is None else options.checkpoint_every or DEFAULT_CHECKPOINT_EVERY
        return cls(prepared, config, options, optimizer, scheduler, trained, every=every)

    @property
    def freeze_step(self) -> int | None:
        """The step that holds the masks (None with fixed masks; at ``iters`` or beyond: never reached)."""
        config = self.config
        return math.ceil(config.freeze_masks_at * config.iters) if config.learn_thresholds else None

    def resume(self) -> None:
        """With ``options.resume``: the checkpoint's step, history, states and held masks."""
        if not self.options.resume:
            return
        directory = self.options.checkpoint_dir
        state = load_checkpoint(directory, self.config.to_dict(), self.options.fingerprint)  # type: ignore[arg-type]
        if int(state["step"]) > self.config.iters:
            raise FcptsError(
                f"the checkpoint in {directory} is at step {state['step']}, past --iters {self.config.iters}"
            )
        self.first_step, self.history = restore_checkpoint(state, self.prepared.model, self.optimizer, self.scheduler)
        if self.options.checkpoint_every is None and state.get("every"):  # keep the checkpoint's own interval
            self.every = int(state["every"])
        if state.get("frozen_masks") is not None:  # frozen before the checkpoint: the masks of then
            self.prepared.hold_masks(state["frozen_masks"])

    def step(self, step: int, losses: _Losses, share: float) -> None:
        """Backward, the gradients summed over the ranks, one optimizer and schedule step; log; checkpoint."""
        self.optimizer.zero_grad(set_to_none=True)
        if losses.total.requires_grad:  # nothing to train once held masks meet lr_weight 0
            losses.total.backward()
        distributed.all_reduce_gradients(self.trained, share)
        self.optimizer.step()
        self.scheduler.step()
        entry = losses.logged(step, share)  # the global batch's losses: the same on every rank
        self.history.append(entry)
        if not math.isfinite(entry["loss"]):
            raise FcptsError(
                f"the loss became non-finite ({entry['loss']}) at step {step} (reconstruction {entry['rec']}): "
                "stopped, nothing written; try a lower --lr-weight or --lr-threshold"
            )
        if self.every and (step + 1) % self.every == 0:
            # Rank 0 writes; every rank learns whether that worked before the next collective.
            with distributed.all_or_none():
                if distributed.is_main():
                    self.save(step + 1)

    def save(self, steps_done: int) -> None:
        save_checkpoint(
            self.options.checkpoint_dir,  # type: ignore[arg-type]
            steps_done,
            self.prepared.model,
            self.optimizer,
            self.scheduler,
            self.history,
            self.config.to_dict(),
            self.prepared.frozen_masks(),
            fingerprint=self.options.fingerprint,
            every=self.every,
        )
