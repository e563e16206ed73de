"""Wanda (Sun et al. 2023) and OWL-Wanda (Yin et al. 2024): one-shot pruning by an importance score.

``wanda``: prune the lowest ``|W_ij|·‖X_j‖₂`` per output row, every layer at the allocation's
sparsity (uniform in the paper; ``owl-wanda``: the OWL allocation), with the layer counts rounded
so that the whole model holds exactly ``round(S*·N)`` zeros. With a ``pattern`` N:M every group of
M consecutive input weights loses its N lowest-scoring weights instead.

The scores are those of the dense model: every layer's ``‖X_j‖₂`` from one pass over the
calibration data, as the reference code for image classifiers (DeiT, ConvNeXt) collects them.
``sequential=True`` takes the reference code's procedure for language models instead (the one the
paper describes: a layer's metric is computed on the activations updated by the pruning before it): the
layers are pruned one after the other in forward order, each scored on the inputs of the model whose
earlier layers are already pruned (:mod:`fcpts.core.sequential`). Padding tokens are not counted
either way (:func:`fcpts.core.activations.real_tokens`). A non-uniform allocation (OWL) is computed
from the dense model's scores.

On all-MiniLM-L6-v2 at 0.5 (591 fortunes) the two give 0.8644 and 0.8624 mean cosine (the language-
model reference code, block by block: 0.8622), the sequential one in about 3× the time (layer after
layer, one partial forward of a block per group of layers that read the same input); on the reference CNN
(BatchNorm: the inputs of a partly pruned model are measured before recalibration) 86.4% and 77.6%
top-1 at 0.5, 68.0% and 11.7% at 0.8; on the reference ViT 61.6% and 59.0% at 0.5.
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
    # True: each layer's input norms on the model pruned up to it, layer after layer (the language-model
    # reference code); False: all from one pass of the dense model (the image-classifier reference code).
    sequential: bool = False
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
