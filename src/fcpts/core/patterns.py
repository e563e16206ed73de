"""N:M semi-structured sparsity: exactly ``N`` zeros in every group of ``M`` consecutive input weights.

A layer is seen as a matrix (out, in·kh·kw) (``weight.flatten(1)``); groups run along each row. A
layer whose input size does not divide by ``M`` cannot hold the pattern (:func:`divides` says which):
the methods leave it dense, so the global sparsity is exactly ``N/M`` of the weights of the layers
that do divide.
"""

from __future__ import annotations

import torch

from ..errors import FcptsError


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"N:M"`` → ``(N, M)`` with ``0 < N < M``.

    >>> parse_pattern("2:4")
    (2, 4)
    """
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except ValueError:
        raise FcptsError(f"pattern must be N:M with integers 0 < N < M (e.g. 2:4), got {pattern!r}") from None
    if not 0 < n < m:
        raise FcptsError(f"pattern must be N:M with integers 0 < N < M (e.g. 2:4), got {pattern!r}")
    return n, m


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
