"""Allocation rules: how a global sparsity target is split into per-layer sparsities.

Each rule maps the prunable weights and the global target ``S*`` to one sparsity per layer such
that ``Σ n_l s_l ≈ S* · Σ n_l``. They initialise FCPTS's thresholds and define the one-shot
magnitude baselines; :func:`fcpts.masks.exact_global_masks` then makes the count exact.
Rules register themselves with :func:`register_allocation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..registry import Registry
from .masks import lowest_scores, target_zeros

AllocationRule = Callable[[Sequence[torch.Tensor], float], list[float]]

#: Allocation rule name → ``rule(weights or scores, target) -> per-layer sparsities``.
ALLOCATIONS: Registry[AllocationRule] = Registry("allocation")


def register_allocation(name: str) -> Callable[[AllocationRule], AllocationRule]:
    """Decorator: make an allocation rule available by ``name`` (e.g. ``--init NAME``)."""

    return ALLOCATIONS.register(name)


def allocate(name: str, weights: Sequence[torch.Tensor], target: float) -> list[float]:
    """Per-layer sparsities from the rule called ``name``.

    >>> allocate("uniform", [torch.ones(4), torch.ones(8)], 0.5)
    [0.5, 0.5]
    """
    return ALLOCATIONS.get(name)(weights, target)


@register_allocation("uniform")
def uniform(weights: Sequence[torch.Tensor], target: float) -> list[float]:
    """Every layer at the global target."""
    return [target] * len(weights)


@register_allocation("erk")
def erk(weights: Sequence[torch.Tensor], target: float) -> list[float]:
    """Erdős–Rényi-Kernel (Evci et al., RigL): density ∝ (Σ dims) / (Π dims), capped at 1.

    A conv of shape (out, in, kh, kw) scores ``(out + in + kh + kw) / (out·in·kh·kw)``; small
    layers would exceed density 1, so they are made dense one by one (largest score first) and
    the rest rescaled until every density is ≤ 1.

    >>> [round(s, 3) for s in erk([torch.ones(4, 4), torch.ones(100, 100)], 0.9)]
    [0.0, 0.901]
    """
    numels = [w.numel() for w in weights]
    raw = [sum(w.shape) / w.numel() for w in weights]
    budget = (1.0 - target) * sum(numels)  # weights to keep in all
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(weights)) if i not in dense]
        kept_dense = sum(numels[i] for i in dense)
        denom = sum(raw[i] * numels[i] for i in rest)
        eps = (budget - kept_dense) / denom if denom > 0 else 0.0
        over = [i for i in rest if eps * raw[i] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda i: raw[i]))
    return [0.0 if i in dense else min(1.0, max(0.0, 1.0 - eps * raw[i])) for i in range(len(weights))]


@register_allocation("global")
def global_magnitude(weights: Sequence[torch.Tensor], target: float) -> list[float]:
    """One magnitude threshold over all layers: each layer's share of the globally smallest ``|w|``.

    >>> global_magnitude([torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])], 0.5)
    [1.0, 0.0]
    """
    return _global_cut([w.detach().abs().flatten().float().cpu() for w in weights], target)


@register_allocation("lamp")
def lamp(weights: Sequence[torch.Tensor], target: float) -> list[float]:
    """LAMP (Lee et al., ICLR 2021): prune the globally lowest layer-adaptive magnitude scores.

    Within a layer sorted by ascending ``|w|``, weight ``u`` scores ``w_u² / Σ_{v ≥ u} w_v²``: its
    share of the squared norm that remains once the weights below it are gone. The largest weight
    of every layer scores 1, so no layer is pruned away entirely unless the target demands it.

    >>> lamp([torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])], 0.5)
    [0.5, 0.5]
    """
    scores = []
    for w in weights:
        sq = w.detach().flatten().double().cpu() ** 2  # (n,)
        sq_sorted, order = torch.sort(sq, stable=True)
        tail = torch.flip(torch.cumsum(torch.flip(sq_sorted, (0,)), 0), (0,))  # Σ_{v ≥ u} w_v²
        score = torch.empty_like(sq)
        score[order] = sq_sorted / tail.clamp_min(torch.finfo(torch.float64).tiny)
        scores.append(score)
    return _global_cut(scores, target)


def _global_cut(scores: Sequence[torch.Tensor], target: float) -> list[float]:
    """Each layer's share of the ``round(target · N)`` globally lowest ``scores`` (one flat tensor a layer)."""
    count = target_zeros(target, sum(s.numel() for s in scores))
    return [flags.float().mean().item() for flags in lowest_scores(scores, count)]


def achieved(sparsities: Sequence[float], weights: Sequence[torch.Tensor]) -> float:
    """The global sparsity a per-layer allocation amounts to: ``Σ n_l s_l / Σ n_l``.

    >>> achieved([1.0, 0.0], [torch.ones(1), torch.ones(3)])
    0.25
    """
    n = [w.numel() for w in weights]
    return math.fsum(s * k for s, k in zip(sparsities, n, strict=True)) / sum(n)


#: OWL's defaults (Yin et al. 2023): outlier = score above M × the layer's mean; sparsity spread ±λ.
OWL_M = 5.0
OWL_LAMBDA = 0.08


@register_allocation("owl")
def owl(scores: Sequence[torch.Tensor], target: float, m: float = OWL_M, lam: float = OWL_LAMBDA) -> list[float]:
    """OWL (outlier-weighted layer-wise sparsity, Yin et al. 2023) over importance ``scores``.

    Layer ``l``'s outlier ratio ``D_l`` is the fraction of its scores above ``m · mean``; the
    layers are mapped linearly onto ``[target − λ, target + λ]``, most outliers → least sparse,
    then shifted by one common constant (clamped to [0, 1], found by bisection) so that
    ``Σ n_l s_l = target · Σ n_l``. Given plain weights it works on ``|W|``; the methods pass Wanda
    scores (the paper's setting).

    >>> s = owl([torch.tensor([1.0] * 9 + [100.0]), torch.ones(10)], 0.5)
    >>> [round(v, 6) for v in s], achieved(s, [torch.ones(10), torch.ones(10)])
    ([0.42, 0.58], 0.5)
    """
    ratios = []
    for s in scores:
        flat = s.detach().abs().flatten().double()
        ratios.append((flat > m * flat.mean()).double().mean().item())
    lo, hi = min(ratios), max(ratios)
    spread = [(r - lo) / (hi - lo) if hi > lo else 0.5 for r in ratios]
    base = [target + lam - 2 * lam * d for d in spread]  # most outliers → target − λ
    numels = [s.numel() for s in scores]
    total = sum(numels)

    def at(shift: float) -> list[float]:
        return [min(1.0, max(0.0, b + shift)) for b in base]

    a, b = -1.0 - lam, 1.0 + lam  # achieved(at(a)) = 0 ≤ target ≤ 1 = achieved(at(b))
    for _ in range(200):
        mid = (a + b) / 2
        if math.fsum(s * n for s, n in zip(at(mid), numels, strict=True)) < target * total:
            a = mid
        else:
            b = mid
    return at(b)
