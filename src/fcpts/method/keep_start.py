"""Never below the start: after a one-shot ``init``, fcpts returns that start if learning did not improve on it.

A one-shot start (``init="pot"``, ``"sparsegpt"``...) is already a fitted solution. Learning from it
can end worse, e.g. on an ImageNet CNN calibrated on few images a kept-weight rate that suits a
magnitude start undoes POT's refit (README, Benchmark). With ``FCPTSConfig.keep_start`` (the
default) :func:`keep_better` compares the start and the learned model by the run's own
reconstruction loss (``config.loss``, ``config.temperature``) against the dense teacher on the first
:data:`CHECK_SAMPLES` calibration rows, and keeps the lower. The check reads the calibration data,
not held-out data: it catches a run that learning made worse on its own objective, not overfitting.
Its cost is three no-grad passes over those rows (teacher, start, learned).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..core import distributed
from ..core.calibration import Calibration, batch_size_of, call_model
from ..core.memory_format import in_format, resolve_memory_format
from .config import FCPTSConfig
from .losses import RECONSTRUCTION_LOSSES, apply_loss, resolve_loss

#: Calibration rows the start and the learned model are compared on.
CHECK_SAMPLES = 256


@torch.no_grad()
def reconstruction_losses(
    models: list[nn.Module], teacher: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> list[float]:
    """Each model's mean reconstruction loss against ``teacher`` on the first :data:`CHECK_SAMPLES` rows.

    The loss is the one learning minimised (``config.loss``, or the one ``"auto"`` picks from the
    first output), weighted by batch size; every model runs in eval mode.

    >>> from fcpts.core.calibration import Calibration
    >>> net, x = nn.Linear(3, 4), torch.randn(8, 3)
    >>> reconstruction_losses([net], net, Calibration(x, 4), FCPTSConfig(target_sparsity=0.5))
    [0.0]
    """
    memory_format = resolve_memory_format(teacher, config.memory_format)
    modes = [m.training for m in (*models, teacher)]
    for m in (*models, teacher):
        m.eval()
    sums, rows, loss = [0.0] * len(models), 0, None
    try:
        for inputs in calibration.epoch():
            if rows >= CHECK_SAMPLES:
                break
            inputs = in_format(inputs, memory_format)
            target = call_model(teacher, inputs)
            if loss is None:
                loss = RECONSTRUCTION_LOSSES[resolve_loss(config.loss, target)]
            n = batch_size_of(inputs)
            for i, model in enumerate(models):
                sums[i] += n * float(apply_loss(loss, call_model(model, inputs), target, config.temperature))
            rows += n
    finally:
        for m, mode in zip((*models, teacher), modes, strict=True):
            m.train(mode)
    return [s / max(rows, 1) for s in sums]


def keep_better(
    model: nn.Module, start: nn.Module, teacher: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> dict[str, Any]:
    """Put ``start``'s weights into the learned ``model`` if its reconstruction loss is lower; what was found.

    Both are plain models with the same parameters (the learned one finalized); a tie keeps the
    learned one. Returns ``{"start_loss", "learned_loss", "kept"}`` for the report, and warns
    when the start is kept.
    """
    start_loss, learned_loss = reconstruction_losses([start, model], teacher, calibration, config)
    kept = "start" if start_loss < learned_loss else "learned"
    if kept == "start":
        warnings.warn(
            f"learning ended with a higher reconstruction loss on the calibration data than the {config.init} "
            f"start ({learned_loss:.4g} > {start_loss:.4g}): the {config.init} result is returned "
            "(--no-keep-start returns the learned one)",
            stacklevel=3,
        )
        with torch.no_grad():
            model.load_state_dict(start.state_dict())
    distributed.broadcast_module(model)  # in a process group every rank returns rank 0's choice
    return {"start_loss": round(start_loss, 6), "learned_loss": round(learned_loss, 6), "kept": kept}
