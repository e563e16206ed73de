"""Scores, per-layer counts and pruning flags shared by the score-based methods (Wanda, SparseGPT,
POT, fcpts's input-based scores): which layers are prunable, each layer's importance scores, the
zeros per layer under an allocation (summing to exactly ``round(S*·N)``), the flags to prune
(per output row or per layer, or N:M), and applying them: all layers at once on the dense model's
inputs (:func:`prune_flags`; layer after layer on the already-pruned model: :mod:`.sequential`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .activations import input_norms
from .allocation import allocate
from .calibration import Calibration
from .importance import get_importance
from .layers import require_prunable_layers
from .masks import layer_counts, row_balanced_flags, target_zeros
from .patterns import divides, nm_prune_flags, parse_pattern

if TYPE_CHECKING:  # the configs' type only: core/ imports nothing above it at run time
    from ..api import PruneConfig


def pattern_of(config: PruneConfig) -> tuple[int, int] | None:
    """``(N, M)`` of the config's pattern, or None for unstructured sparsity."""
    pattern = getattr(config, "pattern", None)
    return None if pattern is None else parse_pattern(pattern)


def prunable(model: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    """The config's prunable layers of ``model`` by name, in module order (one clear error if none)."""
    return dict(require_prunable_layers(model, config.layer_filter))


def layer_scores(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Calibration, importance: str
) -> list[torch.Tensor]:
    """Every layer's importance scores (weight-shaped), with the calibration input norms if the score needs them."""
    entry = get_importance(importance)
    norms: dict[str, Any] = {}
    if entry.needs_inputs:
        norms = input_norms(model, layers, calibration.epoch())
    return [entry.score(m.weight.detach(), norms.get(n)) for n, m in layers.items()]


def allocation_counts(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Calibration, config: Any
) -> list[int]:
    """Zeros per layer: ``config.allocation`` over ``config.importance`` scores, summing to ``round(S*·N)``.

    The uniform allocation reads no scores (no calibration pass): every layer at the target.
    """
    if config.allocation == "uniform":
        numels = [m.weight.numel() for m in layers.values()]
        return layer_counts(
            [config.target_sparsity] * len(numels), numels, target_zeros(config.target_sparsity, sum(numels))
        )
    scores = layer_scores(model, layers, calibration, config.importance)
    sparsities = allocate(config.allocation, scores, config.target_sparsity)
    numels = [s.numel() for s in scores]
    return layer_counts(sparsities, numels, target_zeros(config.target_sparsity, sum(numels)))


def prune_flags(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Calibration, config: Any, per_row: bool = True
) -> list[torch.Tensor]:
    """Which weights to prune, per layer: N:M by score, or the allocation's exact counts by score.

    Unstructured: each layer's count goes to its lowest scores per output row (``per_row``, Wanda)
    or in the whole layer. N:M: layers whose input size does not divide by M stay dense. Weights
    that are zero already go first (:func:`zeros_first`): else, tied at score 0 with the weights of
    an input that is always zero, some could be kept and add zeros beyond the count.
    """
    scores = layer_scores(model, layers, calibration, config.importance)
    pattern = pattern_of(config)
    if pattern is not None:
        return pattern_flags(zeros_first(scores, layers), *pattern)
    sparsities = allocate(config.allocation, scores, config.target_sparsity)
    scores = zeros_first(scores, layers)
    numels = [s.numel() for s in scores]
    counts = layer_counts(sparsities, numels, target_zeros(config.target_sparsity, sum(numels)))
    return [count_flags(s, k, per_row) for s, k in zip(scores, counts, strict=True)]


def count_flags(score: torch.Tensor, count: int, per_row: bool) -> torch.Tensor:
    """Flags of the ``count`` lowest scores of one layer: per output row (Wanda) or in the whole layer.

    >>> count_flags(torch.tensor([[3.0, 1.0], [0.1, 0.2]]), 2, per_row=False).int().tolist()
    [[0, 0], [1, 1]]
    """
    if per_row:
        return row_balanced_flags(score, count)
    flags = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    flags[torch.sort(score.flatten(), stable=True).indices[:count]] = True
    return flags.view(score.shape)


def zeros_first(scores: list[torch.Tensor], layers: dict[str, nn.Module]) -> list[torch.Tensor]:
    """The scores (≥ 0) with every weight that is exactly zero already at -1: pruned before any other.

    >>> fc = nn.Linear(3, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = fc.weight.copy_(torch.tensor([[1.0, 2.0, 0.0]]))
    >>> zeros_first([torch.tensor([[0.0, 0.5, 0.0]])], {"fc": fc})[0].tolist()
    [[0.0, 0.5, -1.0]]
    """
    return [
        torch.where(module.weight.detach().reshape(s.shape).to(s.device) == 0, -1.0, s)
        for s, module in zip(scores, layers.values(), strict=True)
    ]


def pattern_flags(scores: list[torch.Tensor], n: int, m: int) -> list[torch.Tensor]:
    """N:M prune flags by score for every layer; none for a layer whose input size does not divide by M."""
    return [nm_prune_flags(s, n, m) if divides(s, m) else torch.zeros_like(s, dtype=torch.bool) for s in scores]


@torch.no_grad()
def apply_flags(layers: dict[str, nn.Module], flags: list[torch.Tensor]) -> None:
    """Zero the flagged weights of every layer (in place)."""
    for module, f in zip(layers.values(), flags, strict=True):
        module.weight.masked_fill_(f.to(module.weight.device), 0.0)
