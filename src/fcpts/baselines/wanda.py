"""Wanda (Sun et al. 2023) and OWL-Wanda (Yin et al. 2024): one-shot pruning by an importance score.

``wanda``: prune the lowest ``|W_ij|·‖X_j‖₂`` per output row, every layer at the allocation's
sparsity (uniform in the paper; ``owl-wanda``: the OWL allocation), with the layer counts rounded
so that the whole model holds exactly ``round(S*·N)`` zeros. With a ``pattern`` N:M every group of
M consecutive input weights loses its N lowest-scoring weights instead.

As in the paper ("after pruning a preceding layer, the subsequent layer receives updated input
activations"), the layers are pruned one after the other in forward order, and each layer's
``‖X_j‖₂`` is measured on the model whose earlier layers are already pruned (``sequential``;
False: every layer's norms from one pass of the dense model, as the reference code for image
classifiers does). Padding tokens are not counted (:func:`fcpts.core.activations.real_tokens`).
A non-uniform allocation (OWL) is computed from the dense model's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..api import PruneConfig, RunOptions, register_method
from ..core.batchnorm import recalibrate_batchnorm
from ..core.calibration import Calibration
from ..core.importance import get_importance
from ..core.scoring import apply_flags, prunable, prune_flags
from ..core.sequential import prune_in_order


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
    # Each layer's input norms on the model pruned up to it (the paper's procedure), or all from the dense model
    # (one pass). MiniLM at 0.5 on 591 fortunes: 0.8622 mean cosine sequential, 0.8644 from the dense model.
    sequential: bool = True
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
    if config.sequential and get_importance(config.importance).needs_inputs:
        prune_in_order(model, layers, calibration, config, config.per_row)
    else:  # scores that read no inputs do not change as earlier layers are pruned: one pass
        apply_flags(layers, prune_flags(model, layers, calibration, config, config.per_row))
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return []
