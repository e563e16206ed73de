"""One-shot magnitude baselines: an allocation rule, ``|W| > t_l`` per layer, exact global count,
then BatchNorm recalibration on the calibration data (standard for magnitude pruning).

On :mod:`fcpts.core` only: the allocation gives each layer a sparsity, :func:`threshold_for_sparsity`
its threshold, and :func:`exact_global_masks` the masks with exactly ``round(S* · N)`` zeros (the
same masks FCPTS's finalize gives an unlearned ``prepare`` with this allocation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..api import PruneConfig, RunOptions, register_method
from ..core.allocation import allocate
from ..core.batchnorm import recalibrate_batchnorm
from ..core.calibration import Calibration
from ..core.checks import check_finite_weights
from ..core.masks import exact_global_masks, target_zeros, threshold_for_sparsity, warn_unless_exact
from ..core.scoring import apply_flags, block_flags, block_size_of, pattern_flags, pattern_of, prunable, zeros_first


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

    With ``config.pattern`` N:M: the N smallest ``|w|`` of every M consecutive input weights (any
    allocation). 1×B: the allocation's per-layer sparsities, each layer's count of whole blocks
    pruned by lowest ``Σ|w|`` over the block (:func:`~fcpts.core.scoring.block_flags`).
    """
    layers = prunable(model, config)
    block = block_size_of(config)
    if pattern_of(config) is not None:
        apply_flags(layers, pattern_flags([m.weight.detach().abs() for m in layers.values()], *pattern_of(config)))
    elif block is not None:
        weights = [m.weight.detach() for m in layers.values()]
        sparsities = allocate(config.allocation, weights, config.target_sparsity)
        scores = zeros_first([w.abs() for w in weights], layers)
        apply_flags(layers, block_flags(scores, sparsities, config.target_sparsity, block))
        zeros = block * target_zeros(config.target_sparsity, _numel(layers) // block)
        warn_unless_exact([m.weight for m in layers.values()], zeros)
    else:
        apply_flags(layers, [~keep for keep in magnitude_masks(layers, config)])
        warn_unless_exact([m.weight for m in layers.values()], target_zeros(config.target_sparsity, _numel(layers)))
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return []


@torch.no_grad()
def magnitude_masks(layers: dict[str, nn.Module], config: MagnitudeConfig) -> list[torch.Tensor]:
    """Keep-masks: ``|W_l| > t_l`` at the allocation's sparsities, one global cut to the exact count.

    Each threshold is taken as the float32 ``exp(log t_l)`` FCPTS's threshold parameter holds (on
    the weight's device): the cut ranks ``|w| / t_l`` across layers, and with tied magnitudes a
    threshold that sits on a weight (``|w| / t_l = 1`` exactly) would order the ties otherwise.
    So the masks are those of ``fcpts.finalize(fcpts.prepare(model, S*, init=allocation))``, bit
    for bit, ties included.
    """
    check_finite_weights(layers.items())
    weights = [m.weight.detach() for m in layers.values()]
    sparsities = allocate(config.allocation, weights, config.target_sparsity)
    thresholds = [_stored(threshold_for_sparsity(w, s), w.device) for w, s in zip(weights, sparsities, strict=True)]
    return exact_global_masks(weights, thresholds, target_zeros(config.target_sparsity, _numel(layers)))


def _stored(t: float, device: torch.device) -> float:
    """``t`` as FCPTS's threshold parameter stores and reads it: ``exp(float32(log t))``."""
    return torch.tensor(math.log(t), device=device).exp().item()


def _numel(layers: dict[str, nn.Module]) -> int:
    return sum(m.weight.numel() for m in layers.values())
