"""Pure mask math: the hard threshold mask, thresholds for a sparsity, and the exact global cut.

A layer's mask is ``|W| > t``: weights at or below the threshold are zero. Sparsity ``s`` of a
layer with ``n`` weights means ``round(s * n)`` zeros.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch


def hard_mask(weight: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """The keep-mask ``|W| > t`` (bool, same shape as ``weight``).

    >>> hard_mask(torch.tensor([0.1, -0.5, 0.3, -0.05]), 0.2).tolist()
    [False, True, True, False]
    """
    return weight.abs() > threshold


def threshold_for_sparsity(weight: torch.Tensor, sparsity: float) -> float:
    """A positive threshold whose mask ``|W| > t`` zeroes ``round(sparsity * numel)`` weights.

    The threshold sits halfway between the largest pruned and the smallest kept magnitude, so a
    small move in either direction does not change the mask. Ties in ``|W|`` can make the exact
    count unreachable with a single threshold; :func:`exact_global_masks` breaks them.

    >>> threshold_for_sparsity(torch.tensor([0.5, -0.125, 0.375, 0.25]), 0.5)
    0.3125
    """
    values = weight.detach().abs().flatten().float().sort().values  # (n,)
    n = values.numel()
    k = round(sparsity * n)
    if k <= 0:
        # Keep all: just below the smallest magnitude, and positive (a threshold is always > 0).
        return max(values[0].item() / 2, torch.finfo(torch.float32).tiny)
    if k >= n:
        return values[-1].item() * 1.001 + torch.finfo(torch.float32).tiny
    t = (values[k - 1].item() + values[k].item()) / 2
    return max(t, torch.finfo(torch.float32).tiny)


def exact_global_masks(
    weights: Sequence[torch.Tensor], thresholds: Sequence[torch.Tensor | float], num_zeros: int
) -> list[torch.Tensor]:
    """Keep-masks with exactly ``num_zeros`` zeros in all, the smallest correction of the thresholds.

    Each weight gets the score ``|w| / t_l`` (its layer's threshold); the mask ``|W_l| > t_l`` is
    ``score > 1``. Pruning the ``num_zeros`` lowest scores is the same as scaling every threshold
    by one common factor ``c`` (``|W_l| > c * t_l``), with ``c`` as close to 1 as the count
    allows: each layer keeps the learned threshold's relative position, and the global count
    becomes exact. Ties at the cut are broken by a stable sort (layer order, then flat index),
    so the result is deterministic. Weights that are already exactly zero score 0 and go first.

    Memory: one float32 score per weight (all layers concatenated).

    >>> w = [torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])]
    >>> exact_global_masks(w, [0.35], num_zeros=3)[0].int().tolist()
    [[0, 0, 0, 1, 1, 1, 1, 1]]
    """
    scores = [w.detach().abs().flatten().float().cpu() / float(t) for w, t in zip(weights, thresholds, strict=True)]
    return global_cut(scores, weights, num_zeros)


def global_cut(scores: Sequence[torch.Tensor], like: Sequence[torch.Tensor], num_zeros: int) -> list[torch.Tensor]:
    """Keep-masks shaped and placed like the tensors ``like`` that prune the ``num_zeros`` lowest ``scores``.

    ``scores``: one tensor per layer, as many elements as its ``like`` (flattened in order); the
    cut is :func:`lowest_scores`' (stable: ties to the earlier layer, then the lower index). Both
    :func:`exact_global_masks` (scores ``|w| / t_l``) and FCPTS's finalize (the same scores, with
    frozen masks ranked in place) rest on it.

    >>> like = [torch.zeros(1, 2), torch.zeros(2)]
    >>> [k.tolist() for k in global_cut([torch.tensor([0.3, 0.1]), torch.tensor([0.1, 0.2])], like, 2)]
    [[[True, False]], [False, True]]
    """
    total = sum(s.numel() for s in scores)
    if not 0 <= num_zeros <= total:
        raise ValueError(f"num_zeros={num_zeros} outside [0, {total}]")
    pruned = lowest_scores([s.flatten().cpu() for s in scores], num_zeros)
    return [(~p).view(t.shape).to(t.device) for p, t in zip(pruned, like, strict=True)]


def warn_unless_exact(weights: Sequence[torch.Tensor], num_zeros: int, stacklevel: int = 3) -> None:
    """Warn if the (pruned) ``weights`` hold another number of zeros than ``num_zeros``.

    The exact cut prunes exactly ``num_zeros`` weights, but weights that already were zero stay
    zero: a model with more exact zeros than the target ends above it.
    """
    zeros = sum(int((w == 0).sum()) for w in weights)
    if zeros != num_zeros:
        warnings.warn(
            f"{zeros} zeros instead of the target {num_zeros}: the model already had more exact zeros than the target",
            stacklevel=stacklevel,
        )


def lowest_scores(scores: Sequence[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Flags (one flat bool tensor per layer) of the ``count`` globally lowest ``scores``.

    A stable sort over all layers concatenated: ties go to the earlier layer, then the lower index.

    >>> [f.tolist() for f in lowest_scores([torch.tensor([0.3, 0.1]), torch.tensor([0.1, 0.2])], 2)]
    [[False, True], [True, False]]
    """
    flat = torch.cat(list(scores))  # (N,)
    flags = torch.zeros(flat.numel(), dtype=torch.bool)
    flags[torch.sort(flat, stable=True).indices[:count]] = True
    return list(torch.split(flags, [s.numel() for s in scores]))


def target_zeros(target_sparsity: float, total: int) -> int:
    """The exact number of zeros a global target means: ``round(target * total)``.

    >>> target_zeros(0.9, 1001)
    901
    """
    return round(target_sparsity * total)


def layer_counts(sparsities: Sequence[float], numels: Sequence[int], total_zeros: int) -> list[int]:
    """Integer zero counts per layer, near ``s_l · n_l``, that add up to exactly ``total_zeros``.

    Largest remainder: each layer gets ``floor(s_l · n_l)``, then the layers with the largest
    fractional parts (ties: the earlier layer) one more until the total is reached; a rounding
    gap of the allocation itself (``Σ s_l n_l ≠ total``) is spread the same way, never past
    ``0 ≤ k_l ≤ n_l``.

    >>> layer_counts([0.5, 0.5, 0.5], [3, 3, 3], 5)
    [2, 2, 1]
    """
    if not 0 <= total_zeros <= sum(numels):
        raise ValueError(f"total_zeros={total_zeros} outside [0, {sum(numels)}]")
    raw = [min(max(s, 0.0), 1.0) * n for s, n in zip(sparsities, numels, strict=True)]
    counts = [min(int(r), n) for r, n in zip(raw, numels, strict=True)]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    while sum(counts) != total_zeros:
        step = 1 if sum(counts) < total_zeros else -1
        for i in order if step == 1 else reversed(order):
            if sum(counts) == total_zeros:
                break
            if 0 <= counts[i] + step <= numels[i]:
                counts[i] += step
    return counts


def row_balanced_flags(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flags of ``count`` low scores of one layer, spread over its output rows as evenly as possible.

    Row ``r`` of ``scores`` (out, ...) gets ``count // out`` zeros, the first ``count % out`` rows
    one more; within a row the lowest scores go (stable sort: ties to the lower index). This is
    Wanda's per-output comparison group with an exact layer count. A negative score marks a weight
    that is zero already (:func:`~fcpts.core.scoring.zeros_first`): a row holding more of them than
    its share (a dead filter) keeps them all, and other rows prune as many fewer, one each from
    the last rows on, so the layer still ends with exactly ``count`` zeros.

    >>> row_balanced_flags(torch.tensor([[3.0, 1.0, 2.0], [0.1, 0.3, 0.2]]), 3).int().tolist()
    [[0, 1, 1], [1, 0, 0]]
    """
    rows = scores.detach().reshape(scores.shape[0], -1)  # (out, in)
    out, width = rows.shape
    if not 0 <= count <= rows.numel():
        raise ValueError(f"count={count} outside [0, {rows.numel()}]")
    per_row = torch.full((out,), count // out, device=rows.device)
    per_row[: count % out] += 1
    forced = (rows < 0).sum(1)  # (out,) zeros already there
    per_row = torch.maximum(per_row, forced)
    excess = int(per_row.sum()) - count
    while excess > 0:  # one zero fewer in each of the last rows that can spare one, round after round
        spare = (per_row > forced).nonzero().flatten().flip(0)[:excess]
        if len(spare) == 0:
            break  # more zeros already than the count: nothing to give back
        per_row[spare] -= 1
        excess -= len(spare)
    ranks = torch.empty_like(rows, dtype=torch.long)  # ranks[r, j]: position of weight j in row r's sorted order
    positions = torch.arange(width, device=rows.device).expand(out, width)
    ranks.scatter_(1, torch.sort(rows, dim=1, stable=True).indices, positions)
    return (ranks < per_row.unsqueeze(1)).view(scores.shape)
