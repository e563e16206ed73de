"""Structured patterns along the input dimension: ``"N:M"`` and ``"1xB"``.

``N:M`` semi-structured sparsity: exactly ``N`` zeros in every group of ``M`` consecutive input
weights. ``1xB`` blocks: weights are kept or pruned in aligned runs of ``B`` consecutive input
weights of one output row (the ``cpu-block`` kernel's format), at any target sparsity.

A layer is seen as a matrix (out, in·kh·kw) (``weight.flatten(1)``); groups and blocks run along
each row. A layer whose input size does not divide by ``M`` (``B``) cannot hold the pattern
(:func:`divides` says which): the methods leave it dense, so the global sparsity is exactly
``N/M`` (the target) of the weights of the layers that do divide.
"""

from __future__ import annotations

import torch

from ..errors import FcptsError

_FORMS = "N:M with integers 0 < N < M (e.g. 2:4) or 1xB with an integer B >= 2 (e.g. 1x4)"


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` → ``(N, M)`` with ``0 < N < M``.

    >>> parse_pattern("2:4")
    (2, 4)
    """
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except ValueError:
        raise FcptsError(f"pattern must be {_FORMS}, got {pattern!r}") from None
    if not 0 < n < m:
        raise FcptsError(f"pattern must be {_FORMS}, got {pattern!r}")
    return n, m


def block_of(pattern: str | None) -> int | None:
    """``B`` of a ``"1xB"`` block pattern; None for no pattern or an ``N:M`` one (checked either way).

    >>> block_of("1x8"), block_of("2:4"), block_of(None)
    (8, None, None)
    """
    if pattern is None:
        return None
    head, sep, tail = pattern.lower().partition("x")
    if not sep:
        parse_pattern(pattern)  # N:M, or one error naming both forms
        return None
    if head.strip() != "1" or not tail.strip().isdigit() or int(tail) < 2:
        raise FcptsError(f"pattern must be {_FORMS}, got {pattern!r}")
    return int(tail)


def divides(weight: torch.Tensor, m: int) -> bool:
    """Whether a layer's input size (``weight.flatten(1).shape[1]``) is a multiple of ``m``.

    >>> divides(torch.zeros(3, 8), 4), divides(torch.zeros(3, 1, 3, 3), 4)
    (True, False)
    """
    return weight.dim() >= 2 and weight[0].numel() % m == 0


def nm_prune_flags(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Flags (same shape as ``scores``) of the ``n`` lowest scores in every group of ``m`` along each row.

    ``scores`` (out, ...) is viewed as (out, in) and the groups are (out, in/m, m). Ties go to the
    lower index (stable sort), so exactly ``n`` weights of every group are flagged.

    >>> nm_prune_flags(torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.5, 0.6, 0.7, 0.1]]), 2, 4).int().tolist()
    [[0, 1, 0, 1, 1, 0, 0, 1]]
    """
    if not divides(scores, m):
        raise FcptsError(f"input size {scores[0].numel()} is not a multiple of M={m}")
    groups = scores.detach().reshape(scores.shape[0], -1, m)  # (out, in/m, m)
    order = torch.sort(groups, dim=-1, stable=True).indices[..., :n]
    flags = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return flags.view(scores.shape)


def block_view(scores: torch.Tensor, block: int) -> torch.Tensor:
    """A layer's weight-shaped ``scores`` (out, ...) summed over aligned 1×``block`` blocks: (out, in/B).

    >>> block_view(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 0.0]]), 2).tolist()
    [[3.0, 7.0], [1.0, 0.0]]
    """
    if not divides(scores, block):
        raise FcptsError(f"input size {scores[0].numel()} is not a multiple of B={block}")
    return scores.detach().reshape(scores.shape[0], -1, block).sum(-1)


def block_expand(flags: torch.Tensor, block: int, shape: torch.Size) -> torch.Tensor:
    """Per-block ``flags`` (out, in/B) as weight-shaped flags of ``shape`` (each block's ``B`` weights).

    >>> block_expand(torch.tensor([[True, False]]), 2, torch.Size([1, 4])).tolist()
    [[True, True, False, False]]
    """
    return flags.repeat_interleave(block, dim=-1).reshape(shape)


def block_spread(scores: torch.Tensor, block: int) -> torch.Tensor:
    """Weight-shaped ``scores`` with each weight's score replaced by its aligned 1×``block`` block's mean:
    a threshold on them keeps or prunes whole blocks (fcpts' per-block score).

    >>> block_spread(torch.tensor([[1.0, 3.0, 0.0, 4.0]]), 2).tolist()
    [[2.0, 2.0, 2.0, 2.0]]
    """
    means = block_view(scores, block) / block  # (out, in/B)
    return means.repeat_interleave(block, dim=-1).reshape(scores.shape)
