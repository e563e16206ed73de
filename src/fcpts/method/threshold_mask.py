"""One learnable threshold per layer: the parametrization ``W ↦ W ⊙ 1[score(W) > t]``.

:class:`ThresholdMask` is what :func:`~fcpts.method.prepare.prepare` registers on every prunable
layer's ``weight``: the threshold (stored as ``log t``), what it applies to (``|W|`` or another
importance score), the layer's bridged sparsity (:mod:`.bridge`, on the layer's
:class:`~.kde_sample.KdeSample`), the surrogate gradient (:mod:`.surrogate`), holding a mask
fixed, and the ranking finalize cuts. :func:`validate_mask_options` checks the options it takes,
for it and for :class:`~fcpts.method.config.FCPTSConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..errors import FcptsError
from .bridge import BANDWIDTH_RULES, DENSITIES, bridged_sparsity
from .kde_sample import KdeSample
from .surrogate import ste_masked, surrogate_masked

#: How the reconstruction loss reaches the thresholds: not at all, through a sigmoid surrogate, or
#: through a straight-through mask that also lets the pruned weights near ``t`` learn (:func:`ste_masked`).
THRESHOLD_GRADS = ("none", "surrogate", "ste")


#: ``score_fn(weight) -> scores`` (weight-shaped, ≥ 0, no gradient): what a threshold applies to.
LayerScore = Callable[[torch.Tensor], torch.Tensor]


def validate_mask_options(threshold_grad: str, density: str, bandwidth: str | float) -> None:
    """One :class:`FcptsError` for an unknown ``threshold_grad``, ``density`` or ``bandwidth`` rule (or h ≤ 0).

    >>> validate_mask_options("surrogate", "kde", 0.0)
    Traceback (most recent call last):
    ...
    fcpts.errors.FcptsError: bandwidth must be a rule name or a number > 0, got 0.0
    """
    if threshold_grad not in THRESHOLD_GRADS:
        raise FcptsError(f"threshold_grad must be one of {THRESHOLD_GRADS}, got {threshold_grad!r}")
    DENSITIES.get(density)  # an unknown density: one error naming the choices
    if isinstance(bandwidth, str) and bandwidth not in BANDWIDTH_RULES:
        raise FcptsError(
            f"unknown bandwidth rule {bandwidth!r}; choose from {', '.join(BANDWIDTH_RULES.names())} or a number"
        )
    if not isinstance(bandwidth, str) and not bandwidth > 0:
        raise FcptsError(f"bandwidth must be a rule name or a number > 0, got {bandwidth!r}")


class ThresholdMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ 1[|W| > t]`` with a learnable threshold ``t = exp(log_threshold)``.

    The threshold is stored as its logarithm, so it is always positive and one learning rate
    moves layers of very different weight scales by the same relative amount.

    ``threshold_grad="surrogate"`` lets the reconstruction loss reach ``t``: the forward value is
    the hard mask, the backward pass uses ``σ((|W| - t) / h)`` (``h``: the layer's KDE bandwidth).
    With ``"none"`` the mask is a constant to autograd, as in the paper's published code, and only
    the control loss moves ``t``. The weights' gradient is masked either way: a pruned weight
    keeps its value and comes back only if the threshold drops below it. ``"ste"`` is the
    straight-through mask (:func:`~fcpts.method.surrogate.ste_masked`): a sigmoid of width
    ``0.05·t`` gives ``t`` its gradient and the pruned weights near ``t`` one too, so they can grow back.

    :meth:`freeze` holds the current mask fixed, :meth:`hold` a given one (``frozen_keep``): the
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
        validate_mask_options(threshold_grad, density, bandwidth_rule)
        self.score_fn = score_fn
        self.density = density
        self.threshold_grad = threshold_grad
        self.log_threshold = nn.Parameter(torch.tensor(math.log(threshold), device=weight.device))
        self.kde = KdeSample(weight.numel(), kde_samples, bandwidth_rule, generator, weight.device)
        self.frozen_keep: torch.Tensor | None = None  # weight-shaped bool while the mask is held

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    @property
    def is_frozen(self) -> bool:
        """Whether the mask is held fixed (:meth:`freeze`, :meth:`hold`): ``t`` no longer decides."""
        return self.frozen_keep is not None

    def score(self, weight: torch.Tensor) -> torch.Tensor:
        """What the threshold applies to: ``|W|``, or ``score_fn(W)`` (weight-shaped, detached)."""
        return weight.detach().abs() if self.score_fn is None else self.score_fn(weight.detach())

    def bandwidth_of(self, weight: torch.Tensor) -> torch.Tensor:
        """The KDE bandwidth of ``weight``'s scores (scalar), cached until the weights change."""
        return self.kde.bandwidth(weight, self.score)

    @torch.no_grad()
    def freeze(self, weight: torch.Tensor) -> None:
        """From now on the mask is ``score > t`` for the current ``weight``, whatever the weights become."""
        self.hold(self.score(weight) > self.threshold)

    def hold(self, keep: torch.Tensor) -> None:
        """From now on the mask is ``keep`` (weight-shaped bool, moved to the threshold's device)."""
        self.frozen_keep = keep.to(self.log_threshold.device)

    def ranking_score(self, weight: torch.Tensor) -> torch.Tensor:
        """``score / t`` (weight-shaped, float32): above 1 exactly where the mask keeps a weight.

        :func:`~fcpts.method.prepare.finalize` cuts all layers' scores at one global rank. A frozen
        mask's kept weights score above 1 and its pruned ones at most 1 even where learning moved
        them across ``t``.
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
        if self.threshold_grad == "ste" and torch.is_grad_enabled() and (t.requires_grad or weight.requires_grad):
            return ste_masked(weight, score, t)  # value: the hard mask; W and t: σ((score − t)/(0.05 t))
        if self.threshold_grad == "surrogate" and torch.is_grad_enabled() and t.requires_grad:
            # value: the hard mask; t's gradient: σ((score − t)/h)
            return surrogate_masked(weight, score, t, self.bandwidth_of(weight))
        return weight * (score > t.detach()).to(weight.dtype)

    def sparsity(self, weight: torch.Tensor) -> torch.Tensor:
        """This layer's exact sparsity at ``t``, differentiable in ``log_threshold`` via the density."""
        if self.frozen_keep is not None:  # a constant: the threshold no longer decides
            return 1.0 - self.frozen_keep.float().mean()
        score = self.score(weight)
        samples, h = self.kde.values(score), self.bandwidth_of(weight)
        return bridged_sparsity(score, self.threshold, samples, h, DENSITIES[self.density].cdf)
