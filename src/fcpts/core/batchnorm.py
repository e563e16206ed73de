"""BatchNorm recalibration: re-estimate running statistics of a pruned model on calibration data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .calibration import call_model


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any]) -> int:
    """Reset BatchNorm running statistics and re-estimate them as exact averages over ``batches``.

    Only the BatchNorm layers switch to training mode (dropout and the rest stay in eval), and
    ``momentum=None`` makes the estimate a cumulative average, independent of batch order.
    Returns the number of BatchNorm layers recalibrated (0 for a LayerNorm-only model: no-op).

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> recalibrate_batchnorm(net, [torch.ones(4, 2)]), net.training
    (1, True)
    """
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for inputs in batches:
            call_model(model, inputs)
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return len(bns)
