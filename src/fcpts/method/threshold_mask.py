"""The mask lifecycle: ``prepare`` puts a learnable threshold on every prunable layer, ``finalize``
takes it off and leaves a plain ``nn.Module`` with exactly the target number of zeros.

While prepared, each chosen layer's ``weight`` is a :mod:`torch.nn.utils.parametrize`
parametrization: the stored tensor (``parametrizations.weight.original``) holds the dense, still
learnable weights, and reading ``module.weight`` gives ``W * (|W| > t)``. Nothing else of the
model changes. :func:`finalize` removes the parametrization (the module gets its own class back)
and writes the masked weights into the plain ``weight`` parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .bridge import DENSITIES, bandwidth, bridged_sparsity

#: How the reconstruction loss reaches the thresholds: not at all, or through a sigmoid surrogate.
THRESHOLD_GRADS = ("none", "surrogate")


#: ``score_fn(weight) -> scores`` (weight-shaped, ≥ 0, no gradient): what a threshold applies to.
LayerScore = Callable[[torch.Tensor], torch.Tensor]


class ThresholdMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ 1[|W| > t]`` with a learnable threshold ``t = exp(log_threshold)``.

    The threshold is stored as its logarithm, so it is always positive and one learning rate
    moves layers of very different weight scales by the same relative amount.

    ``threshold_grad="surrogate"`` lets the reconstruction loss reach ``t``: the forward value is
    the hard mask, the backward pass uses ``σ((|W| - t) / h)`` (``h``: the layer's KDE bandwidth).
    With ``"none"`` the mask is a constant to autograd, as in the paper's published code, and only
    the control loss moves ``t``. The weights' gradient is masked either way: a pruned weight
    keeps its value and comes back only if the threshold drops below it.

    :meth:`freeze` holds the current mask fixed (a fixed allocation with reconstruction): the
    threshold no longer decides, and kept weights stay kept even where learning shrinks them.

    ``score_fn`` replaces ``|W|`` by another importance score of the current weights (e.g. Wanda's
    ``|W|·‖X‖``): the mask is then ``score > t`` and the KDE bridge runs on the scores.

    >>> m = ThresholdMask(torch.tensor([[0.1, -0.5, 0.3, -0.05]]), threshold=0.2)
    >>> m(torch.tensor([[0.1, -0.5, 0.3, -0.05]])).tolist()
    [[0.0, -0.5, 0.30000001192092896, -0.0]]
    """

    def __init__(
        self,
        weight: torch.Tensor,
        threshold: float,
        kde_samples: int = 4096,
        bandwidth_rule: str | float = "silverman",
        threshold_grad: str = "surrogate",
        generator: torch.Generator | None = None,
        density: str = "kde",
        score_fn: LayerScore | None = None,
    ) -> None:
        super().__init__()
        self.score_fn = score_fn
        if threshold_grad not in THRESHOLD_GRADS:
            raise ValueError(f"threshold_grad must be one of {THRESHOLD_GRADS}, got {threshold_grad!r}")
        DENSITIES.get(density)  # an unknown density: one error naming the choices
        self.density = density
        self.log_threshold = nn.Parameter(torch.tensor(math.log(threshold), device=weight.device))
        n = weight.numel()
        index = torch.randperm(n, generator=generator)[: min(n, kde_samples)]  # (m,) fixed KDE subsample
        self.register_buffer("kde_index", index.to(weight.device), persistent=False)
        self.bandwidth_rule = bandwidth_rule
        self.threshold_grad = threshold_grad
        self._bandwidth_key: tuple[int, int] | None = None
        self._bandwidth = torch.ones(())
        self.frozen_keep: torch.Tensor | None = None  # weight-shaped bool, set by freeze()

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def score(self, weight: torch.Tensor) -> torch.Tensor:
        """What the threshold applies to: ``|W|``, or ``score_fn(W)`` (weight-shaped, detached)."""
        return weight.detach().abs() if self.score_fn is None else self.score_fn(weight.detach())

    def kde_values(self, score: torch.Tensor) -> torch.Tensor:
        """The KDE subsample (m,) of a weight-shaped ``score``, as float32 magnitudes."""
        return score.flatten()[self.kde_index].abs().float()

    def _samples(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kde_values(self.score(weight)), self.bandwidth_of(weight)  # (m,), scalar

    def bandwidth_of(self, weight: torch.Tensor) -> torch.Tensor:
        """The KDE bandwidth of ``weight``'s scores (scalar), cached until the weights change.

        It (a quantile: a sort of m values) is needed twice per step, by the surrogate and by the
        bridge; in-place optimizer steps bump the tensor's version counter, which invalidates it.
        :meth:`Prepared.refresh_bandwidths` fills it for all layers at once.
        """
        if not self.bandwidth_current(weight):
            self.set_bandwidth(weight, bandwidth(self.kde_values(self.score(weight)), self.bandwidth_rule))
        return self._bandwidth

    def bandwidth_current(self, weight: torch.Tensor) -> bool:
        """Whether the cached bandwidth belongs to ``weight`` as it is now."""
        return self._bandwidth_key == (weight.data_ptr(), weight._version)

    def set_bandwidth(self, weight: torch.Tensor, h: torch.Tensor) -> None:
        """Cache ``h`` (scalar) as the bandwidth of ``weight`` at its current version."""
        self._bandwidth, self._bandwidth_key = h, (weight.data_ptr(), weight._version)

    @torch.no_grad()
    def freeze(self, weight: torch.Tensor) -> None:
        """From now on the mask is ``score > t`` for the current ``weight``, whatever the weights become."""
        self.frozen_keep = self.score(weight) > self.threshold

    def ranking_score(self, weight: torch.Tensor) -> torch.Tensor:
        """``score / t`` (weight-shaped, float32): above 1 exactly where the mask keeps a weight.

        :func:`finalize` cuts all layers' scores at one global rank. A frozen mask's kept weights
        score above 1 and its pruned ones at most 1 even where learning moved them across ``t``.
        """
        score = self.score(weight).float() / self.threshold.detach().float()
        if self.frozen_keep is None:
            return score
        above_one = torch.nextafter(torch.ones(()), torch.full((), 2.0))
        return torch.where(self.frozen_keep, score.clamp(min=above_one), score.clamp(max=1.0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        t = self.threshold
        if self.frozen_keep is not None:
            return weight * self.frozen_keep.to(weight.dtype)
        score = self.score(weight)
        if self.threshold_grad == "surrogate" and torch.is_grad_enabled() and t.requires_grad:
            _, h = self._samples(weight)
            return surrogate_masked(weight, score, t, h)  # value: hard mask; t's gradient: σ((score − t)/h)
        return weight * (score > t.detach()).to(weight.dtype)

    def sparsity(self, weight: torch.Tensor) -> torch.Tensor:
        """This layer's exact sparsity at ``t``, differentiable in ``log_threshold`` via the density."""
        if self.frozen_keep is not None:  # a constant: the threshold no longer decides
            return 1.0 - self.frozen_keep.float().mean()
        samples, h = self._samples(weight)
        return bridged_sparsity(self.score(weight), self.threshold, samples, h, DENSITIES[self.density].cdf)


class _SurrogateMasked(torch.autograd.Function):
    """``W ⊙ 1[score > t]``; backward: the mask for ``W``, a sigmoid surrogate's slope for ``t``."""

    @staticmethod
    def forward(ctx, weight, score, t, h):  # type: ignore[no-untyped-def]
        keep = score > t  # (weight-shaped) bool
        ctx.save_for_backward(weight, score, keep, t, h)
        return weight * keep

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        weight, score, keep, t, h = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_t = None
        if ctx.needs_input_grad[2]:
            soft = torch.sigmoid((score.float() - t) / h)  # σ(z), z = (score − t)/h
            # d out / d t = W · σ'(z) · (−1/h), summed against the incoming gradient.
            slope = torch.ops.aten.sigmoid_backward((grad * weight).float(), soft)
            grad_t = -(slope.sum() / h)
        return grad_weight, None, grad_t, None


def surrogate_masked(weight: torch.Tensor, score: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``W ⊙ 1[score > t]`` whose gradient in ``t`` is that of ``W ⊙ σ((score − t) / h)``.

    The forward value is the hard mask; the weights' gradient is masked (a pruned weight gets
    none); ``t`` (scalar) gets the slope of the sigmoid surrogate of bandwidth ``h`` (scalar), so
    the reconstruction loss can move the threshold. One fused autograd node: the step's cost does
    not grow with a graph of elementwise ops per layer. ``score`` (weight-shaped, no gradient).

    >>> w = torch.tensor([0.1, -0.5, 0.3, -0.05])
    >>> t = torch.tensor(0.2, requires_grad=True)
    >>> out = surrogate_masked(w, w.abs(), t, torch.tensor(0.1))
    >>> out.tolist(), out.sum().backward(), round(t.grad.item(), 4)
    ([0.0, -0.5, 0.30000001192092896, -0.0], None, -0.486)
    """
    return _SurrogateMasked.apply(weight, score.detach(), t, h.detach())
