"""Wanda (Sun et al. 2023) and OWL-Wanda (Yin et al. 2024): one-shot pruning by an importance score.

``wanda``: prune the lowest ``|W_ij|·‖X_j‖₂`` per output row, every layer at the allocation's
sparsity (uniform in the paper; ``owl-wanda``: the OWL allocation), with the layer counts rounded
so that the whole model holds exactly ``round(S*·N)`` zeros. With a ``pattern`` N:M every group of
M consecutive input weights loses its N lowest-scoring weights instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..api import PruneConfig, RunOptions, register_method
from ..core.batchnorm import recalibrate_batchnorm
from ..core.calibration import Calibration
from ..core.importance import get_importance
from ..core.scoring import apply_flags, prunable, prune_flags


@dataclass
class ScoreConfig(PruneConfig):
    """One-shot pruning by an importance score under an allocation (``wanda``: Wanda scores, uniform).

    The method is ``owl-wanda`` under the OWL allocation, else ``wanda`` (whatever ``importance``).

    >>> ScoreConfig(target_sparsity=0.5).method, ScoreConfig(target_sparsity=0.5, allocation="owl").method
    ('wanda', 'owl-wanda')
    """

    importance: str = "wanda"
    allocation: str = "uniform"
    per_row: bool = True  # compare weights within each output row (Wanda) or within the whole layer
    recalibrate_bn: bool = True  # like the magnitude baselines: BatchNorm statistics of the pruned model

    @property  # type: ignore[override]
    def method(self) -> str:
        return "owl-wanda" if self.allocation == "owl" else "wanda"

    def __post_init__(self) -> None:
        super().__post_init__()
        get_importance(self.importance)


@register_method("wanda", ScoreConfig, "Wanda: |W|·‖X‖ per output row, every layer at the target")
@register_method("owl-wanda", ScoreConfig, "Wanda scores under the OWL allocation", allocation="owl")
def run_score(
    model: nn.Module, calibration: Calibration, config: ScoreConfig, options: RunOptions
) -> list[dict[str, float]]:
    """Prune the lowest scores (exact global count, or N:M), then recalibrate BatchNorm."""
    layers = prunable(model, config)
    apply_flags(layers, prune_flags(model, layers, calibration, config, config.per_row))
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return []
