"""Scores, per-layer counts and pruning flags shared by the score-based methods (Wanda, SparseGPT,
POT, fcpts's input-based scores): which layers are prunable, each layer's importance scores, the
zeros per layer under an allocation (summing to exactly ``round(S*·N)``), the flags to prune
(per output row or per layer, or N:M), and applying them: all layers at once on the dense model's
inputs (:func:`prune_flags`; layer after layer on the already-pruned model: :mod:`.sequential`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import FcptsError
from .activations import input_norms
from .allocation import allocate
from .calibration import Calibration
from .importance import get_importance
from .layers import LayerFilter, require_prunable_layers
from .masks import layer_counts, row_balanced_flags, target_zeros
from .patterns import block_expand, block_of, block_view, divides, nm_prune_flags, parse_pattern

if TYPE_CHECKING:  # the configs' type only: core/ imports nothing above it at run time
    from ..api import PruneConfig


def pattern_of(config: PruneConfig) -> tuple[int, int] | None:
    """``(N, M)`` of the config's N:M pattern, or None (unstructured, or 1×B blocks: :func:`block_size_of`)."""
    pattern = getattr(config, "pattern", None)
    return None if pattern is None or block_of(pattern) is not None else parse_pattern(pattern)


def block_size_of(config: PruneConfig) -> int | None:
    """``B`` of the config's ``1xB`` block pattern, or None."""
    return block_of(getattr(config, "pattern", None))


def layer_filter_of(config: PruneConfig) -> LayerFilter:
    """The config's layer filter; under a ``1xB`` pattern only the layers whose input size divides
    by ``B`` (the others stay dense, and the target applies to the layers that divide)."""
    block = block_size_of(config)
    if block is None:
        return config.layer_filter

    def blockable(name: str, module: nn.Module) -> bool:
        return config.layer_filter(name, module) and divides(module.weight, block)

    return blockable


def prunable(model: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    """The config's prunable layers of ``model`` by name (:func:`layer_filter_of`), in module order
    (one clear error if none)."""
    layers = dict(require_prunable_layers(model, config.layer_filter))
    block = block_size_of(config)
    if block is not None:  # the config's filter found layers: say why none of them is kept
        keep = layer_filter_of(config)
        layers = {name: m for name, m in layers.items() if keep(name, m)}
        if not layers:
            raise FcptsError(f"pattern {config.pattern}: no prunable layer's input size is a multiple of {block}")
    return layers


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
    block = block_size_of(config) or 1  # 1×B blocks: counts of whole blocks, times B
    units = [m.weight.numel() // block for m in layers.values()]
    if config.allocation == "uniform":
        sparsities = [config.target_sparsity] * len(units)
    else:
        scores = layer_scores(model, layers, calibration, config.importance)
        sparsities = allocate(config.allocation, scores, config.target_sparsity)
    return [k * block for k in layer_counts(sparsities, units, target_zeros(config.target_sparsity, sum(units)))]


def prune_flags(
    model: nn.Module, layers: dict[str, nn.Module], calibration: Calibration, config: Any, per_row: bool = True
) -> list[torch.Tensor]:
    """Which weights to prune, per layer: N:M by score, or the allocation's exact counts by score.

    Unstructured: each layer's count goes to its lowest scores per output row (``per_row``, Wanda)
    or in the whole layer. N:M: layers whose input size does not divide by M stay dense. 1×B:
    :func:`block_flags` (the layers are :func:`prunable`'s, whose input sizes divide by B). Weights
    that are zero already go first (:func:`zeros_first`): else, tied at score 0 with the weights of
    an input that is always zero, some could be kept and add zeros beyond the count.
    """
    scores = layer_scores(model, layers, calibration, config.importance)
    pattern = pattern_of(config)
    if pattern is not None:
        return pattern_flags(zeros_first(scores, layers), *pattern)
    sparsities = allocate(config.allocation, scores, config.target_sparsity)
    scores = zeros_first(scores, layers)
    block = block_size_of(config)
    if block is not None:
        return block_flags(scores, sparsities, config.target_sparsity, block, per_row)
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


def block_flags(
    scores: Sequence[torch.Tensor], sparsities: Sequence[float], target: float, block: int, per_row: bool = False
) -> list[torch.Tensor]:
    """Prune flags of whole aligned 1×``block`` blocks: ``B · round(target · N / B)`` weights in all.

    ``scores``: weight-shaped, ≥ 0, -1 for a weight that is zero already (:func:`zeros_first`). A
    block scores the sum of its weights' scores (-1 when all of them are zero already: it goes
    first); layer ``l`` prunes the count of blocks nearest ``sparsities[l]`` of its blocks (the
    counts adding up exactly), its lowest-scoring blocks per output row (``per_row``) or in the layer.

    >>> s = torch.tensor([[0.1, 0.2, 5.0, 6.0], [3.0, 4.0, 0.3, 0.1]])
    >>> block_flags([s], [0.5], 0.5, 2)[0].int().tolist()
    [[1, 1, 0, 0], [0, 0, 1, 1]]
    """
    blocks = [block_view(s.clamp(min=0), block) for s in scores]  # (out, in/B) each
    blocks = [torch.where(block_view(s < 0, block) == block, -1.0, b) for s, b in zip(scores, blocks, strict=True)]
    units = [b.numel() for b in blocks]
    counts = layer_counts(sparsities, units, target_zeros(target, sum(units)))
    return [
        block_expand(count_flags(b, k, per_row), block, s.shape) for s, b, k in zip(scores, blocks, counts, strict=True)
    ]


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
