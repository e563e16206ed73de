"""One learning run's state (:class:`_Loop`): Adam over the trained parameters and its schedule, the
loss history, one optimizer step (gradients summed over the ranks, a non-finite loss stopped),
resuming from a checkpoint and writing one (rank 0 writes; every rank learns whether it worked);
Adam's parameter groups and their schedules (:func:`param_groups`), and a rank's shard of the
global batch (:func:`rank_shard`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..api import DEFAULT_CHECKPOINT_EVERY, RunOptions
from ..core import distributed
from ..core.calibration import batch_size_of, shard
from ..errors import FcptsError
from .checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from .config import FCPTSConfig
from .objective import _Losses
from .prepare import Prepared

#: A learning-rate factor of the step: ``schedule(step) -> factor``.
Schedule = Callable[[int], float]


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
    iters_cap: int | None = None  # a time budget sized the run down from this many iters (None: not sized)

    @classmethod
    def create(
        cls,
        prepared: Prepared,
        groups: list[dict[str, Any]],
        schedules: list[Schedule],
        config: FCPTSConfig,
        options: RunOptions,
        iters_cap: int | None = None,
    ) -> _Loop:
        optimizer = torch.optim.Adam(groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
        trained = [p for g in groups for p in g["params"]]
        every = 0 if options.checkpoint_dir is None else options.checkpoint_every or DEFAULT_CHECKPOINT_EVERY
        return cls(prepared, config, options, optimizer, scheduler, trained, every=every, iters_cap=iters_cap)

    def saved_config(self) -> dict[str, Any]:
        """The config a checkpoint records and a resume must match: a sized run's also names its cap."""
        config = self.config.to_dict()
        if self.iters_cap is not None:
            config["time_budget_iters_cap"] = self.iters_cap
        return config

    @property
    def freeze_step(self) -> int | None:
        """The step that holds the masks (None with fixed masks; at ``iters`` or beyond: never reached)."""
        config = self.config
        return math.ceil(config.freeze_masks_at * config.iters) if config.learn_thresholds else None

    def holds_masks_at(self, step: int) -> bool:
        """Whether ``step`` is where the masks are to be held: the freeze step or past it (a re-size may
        have moved it behind), with the masks not held yet."""
        freeze = self.freeze_step
        return freeze is not None and step >= freeze and self.prepared.frozen_masks() is None

    def resize(self, iters: int) -> None:
        """Run ``iters`` steps in all (a time budget's re-size): from the next step on, the schedules and
        the freeze step of that length; checkpoints record it, and the cap it may not pass."""
        self.iters_cap = self.iters_cap or self.config.iters
        self.config = dataclasses.replace(self.config, iters=iters)
        _, schedules = param_groups(self.prepared, self.config)
        self.scheduler.lr_lambdas = schedules
        step = self.scheduler.last_epoch  # the next step's rates, from the new schedules
        for group, base, schedule in zip(self.optimizer.param_groups, self.scheduler.base_lrs, schedules, strict=True):
            group["lr"] = base * schedule(step)

    def resume(self) -> None:
        """With ``options.resume``: the checkpoint's step, history, states and held masks."""
        if not self.options.resume:
            return
        directory = self.options.checkpoint_dir
        state = load_checkpoint(directory, self.saved_config(), self.options.fingerprint)  # type: ignore[arg-type]
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
            self.saved_config(),
            self.prepared.frozen_masks(),
            fingerprint=self.options.fingerprint,
            every=self.every,
        )


def param_groups(prepared: Prepared, config: FCPTSConfig) -> tuple[list[dict[str, Any]], list[Schedule]]:
    """Adam's parameter groups and their learning-rate factors: thresholds, then the kept weights.

    Thresholds keep a constant rate to track the target to the end; the weights (every other
    parameter of the student that requires a gradient, unless ``lr_weight`` is 0) decay (cosine) to
    0, or keep theirs with ``lr_schedule="constant"``.
    """
    thresholds = prepared.threshold_parameters()
    threshold_ids = {id(p) for p in thresholds}
    weights = [p for p in prepared.model.parameters() if p.requires_grad and id(p) not in threshold_ids]
    if config.kept_weight_rate <= 0:
        weights = []
    groups: list[dict[str, Any]] = []
    schedules: list[Schedule] = []
    if config.learn_thresholds:
        groups.append({"params": thresholds, "lr": config.lr_threshold})
        schedules.append(lambda i: 1.0)
    if weights:
        groups.append({"params": weights, "lr": config.kept_weight_rate})
        if config.lr_schedule == "constant":
            schedules.append(lambda i: 1.0)
        else:
            schedules.append(lambda i: 0.5 * (1 + math.cos(math.pi * i / config.iters)))
    return groups, schedules


def rank_shard(inputs: Any, index: torch.Tensor | None) -> tuple[Any, torch.Tensor | None, float]:
    """This rank's contiguous shard of a global batch (its row indices too), and its share of the batch."""
    rank, world = distributed.rank(), distributed.world_size()
    total = batch_size_of(inputs)
    if world > 1:
        if total < world:
            raise FcptsError(f"a calibration batch of {total} samples cannot be split over {world} processes")
        inputs, index = shard(inputs, rank, world), shard(index, rank, world)
    return inputs, index, batch_size_of(inputs) / total
