"""Importance scores: which weights matter, one non-negative score per weight (pure tensor math).

A score function takes a layer's weight (out, in, ...) and the layer's input column norms
``‖X_j‖₂`` (a tensor of ``in·kh·kw`` values, or None when the score needs no data) and returns a
score of the weight's shape; low scores are pruned first. Scores register by name with
:func:`register_importance`; the one-shot methods, SparseGPT's allocation, POT and fcpts's
thresholds (``FCPTSConfig.importance``) all take them by that name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import FcptsError
from ..registry import Registry

ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class Importance:
    name: str
    score: ScoreFn
    needs_inputs: bool  # True: needs the calibration inputs' column norms (collected by fcpts.activations)


#: Importance name → :class:`Importance`.
IMPORTANCES: Registry[Importance] = Registry("importance")


def register_importance(name: str, needs_inputs: bool = False) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: make ``score(weight, input_norms) -> scores`` available as importance ``name``."""

    def decorate(fn: ScoreFn) -> ScoreFn:
        IMPORTANCES.register(name, Importance(name, fn, needs_inputs))
        return fn

    return decorate


def get_importance(name: str) -> Importance:
    """The registered importance called ``name`` (one clear error otherwise).

    >>> get_importance("wanda").needs_inputs
    True
    """
    return IMPORTANCES.get(name)


@register_importance("magnitude")
def magnitude(weight: torch.Tensor, input_norms: torch.Tensor | None = None) -> torch.Tensor:
    """``|W|`` (the paper's score).

    >>> magnitude(torch.tensor([[-2.0, 1.0]])).tolist()
    [[2.0, 1.0]]
    """
    return weight.detach().abs()


@register_importance("wanda", needs_inputs=True)
def wanda(weight: torch.Tensor, input_norms: torch.Tensor | None) -> torch.Tensor:
    """Wanda (Sun et al. 2023): ``|W_ij| · ‖X_j‖₂``, the weight times its input column's norm.

    For a Conv the column ``j`` is one (in_channel, kh, kw) position of the unfolded input, so
    ``input_norms`` has ``in·kh·kw`` entries in ``weight.flatten(1)`` order.

    A grouped conv's norms are (groups, cols): the rows of group ``g`` take row ``g``.

    >>> wanda(torch.tensor([[1.0, -1.0, 2.0]]), torch.tensor([3.0, 1.0, 0.5])).tolist()
    [[3.0, 1.0, 1.0]]
    >>> wanda(torch.ones(2, 1, 1), torch.tensor([[3.0], [4.0]])).flatten().tolist()
    [3.0, 4.0]
    """
    if input_norms is None:
        raise FcptsError("the wanda importance needs calibration input norms")
    cols = weight[0].numel()
    if input_norms.dim() == 2:  # a grouped conv: one row of norms per group
        groups = input_norms.shape[0]
        if input_norms.shape[1] != cols or weight.shape[0] % groups:
            raise FcptsError(f"input norms of shape {tuple(input_norms.shape)} for a weight of {tuple(weight.shape)}")
        per_row = input_norms.to(weight.device, weight.dtype).repeat_interleave(weight.shape[0] // groups, 0)
        return weight.detach().abs() * per_row.reshape(weight.shape)
    if input_norms.numel() != cols:
        raise FcptsError(f"{input_norms.numel()} input norms for a layer with {cols} input columns")
    # (out, cols) * (1, cols), back to the weight's shape.
    scale = input_norms.to(weight.device, weight.dtype).reshape(1, *weight.shape[1:])
    return weight.detach().abs() * scale
