"""One-shot magnitude baselines: an allocation rule, ``|W| > t_l`` per layer, exact global count,
then BatchNorm recalibration on the calibration data (standard for magnitude pruning)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..api import PruneConfig, RunOptions, register_method
from ..core.batchnorm import recalibrate_batchnorm
from ..core.calibration import Calibration
from ..core.scoring import apply_flags, pattern_flags, pattern_of, prunable
from ..method.prepare import finalize, prepare


@dataclass
class MagnitudeConfig(PruneConfig):
    """Magnitude pruning with a fixed allocation rule: ``uniform``, ``erk``, ``global`` or ``lamp``.

    >>> MagnitudeConfig(target_sparsity=0.5, allocation="global").method
    'global-magnitude'
    """

    allocation: str = "uniform"
    recalibrate_bn: bool = True

    @property  # type: ignore[override]
    def method(self) -> str:
        return f"{self.allocation}-magnitude"


@register_method("uniform-magnitude", MagnitudeConfig, "every layer pruned to the target by |W|", allocation="uniform")
@register_method("global-magnitude", MagnitudeConfig, "one |W| threshold across all layers", allocation="global")
@register_method("erk-magnitude", MagnitudeConfig, "ERK per-layer sparsities, pruned by |W|", allocation="erk")
@register_method(
    "lamp-magnitude", MagnitudeConfig, "LAMP scores (|W|² over the layer's remaining norm)", allocation="lamp"
)
def run_magnitude(
    model: nn.Module, calibration: Calibration, config: MagnitudeConfig, options: RunOptions
) -> list[dict[str, float]]:
    """Prune by magnitude under a fixed allocation, finalize exactly, recalibrate BatchNorm.

    With ``config.pattern`` N:M: the N smallest ``|w|`` of every M consecutive input weights (any allocation).
    """
    if config.pattern is not None:
        layers = prunable(model, config)
        apply_flags(layers, pattern_flags([m.weight.detach().abs() for m in layers.values()], *pattern_of(config)))
    else:
        finalize(prepare(model, config.target_sparsity, config.allocation, config.layer_filter, seed=config.seed))
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return []
