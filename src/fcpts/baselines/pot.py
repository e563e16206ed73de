"""POT-style layer-wise calibration (Lazarevich et al. 2021): prune, then refit each layer's kept weights.

Every layer is pruned at once by an importance score under an allocation (exact global count, or
N:M; :func:`fcpts.core.scoring.prune_flags`). Then, layer by layer in forward order, the kept
weights are refitted to the dense layer's outputs (:mod:`fcpts.core.refit`). The paper fits the
same objective with Adam; the closed form reaches its minimum.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from ..api import PruneConfig, RunOptions, register_method
from ..core.batchnorm import recalibrate_batchnorm
from ..core.calibration import Calibration
from ..core.importance import get_importance
from ..core.refit import refit_layers
from ..core.scoring import apply_flags, prunable, prune_flags
from ..errors import FcptsError


@dataclass
class POTConfig(PruneConfig):
    """POT options: the pruning score and allocation, and the ridge dampening of the refit.

    >>> POTConfig(target_sparsity=0.5).method
    'pot'
    """

    importance: str = "magnitude"
    allocation: str = "uniform"
    per_row: bool = False  # prune by score within the whole layer (True: within each output row)
    damp: float = 0.01
    recalibrate_bn: bool = False

    method = "pot"

    def __post_init__(self) -> None:
        super().__post_init__()
        get_importance(self.importance)
        if not self.damp > 0:
            raise FcptsError(f"damp must be > 0, got {self.damp!r}")


@register_method("pot", POTConfig, "POT-style: prune by score, refit kept weights to the dense layer outputs")
def run_pot(
    model: nn.Module, calibration: Calibration, config: POTConfig, options: RunOptions
) -> list[dict[str, float]]:
    """Prune all layers by score, then refit each layer's kept weights in forward order."""
    dense = copy.deepcopy(model).eval()
    layers = prunable(model, config)
    flags = prune_flags(model, layers, calibration, config, config.per_row)
    apply_flags(layers, flags)
    keeps = {name: (module.weight, ~f) for (name, module), f in zip(layers.items(), flags, strict=True)}
    refit_layers(model, dense, keeps, calibration, config.damp)
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return []
