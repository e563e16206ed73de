"""The fused masks: the hard mask ``W ⊙ 1[score > t]`` in value, a sigmoid's slope in the backward pass.

With ``threshold_grad="surrogate"`` (:class:`~fcpts.method.threshold_mask.ThresholdMask`) this is
how the reconstruction loss reaches a layer's threshold: the forward pass uses the exact mask, the
backward pass takes ``t``'s gradient from ``W ⊙ σ((score − t) / h)`` (``h``: the layer's KDE
bandwidth). With ``threshold_grad="ste"`` (:func:`ste_masked`) the mask is straight-through:
``W ⊙ (1[score > t] + σ − stopgrad(σ))`` with ``σ = σ((score − t) / (0.05·t))``, so the pruned
weights near ``t`` get a gradient as well and can grow back above it. One autograd node per layer
instead of a graph of elementwise ops.
"""

from __future__ import annotations

import torch


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


#: The straight-through sigmoid's width relative to the threshold: ``h = STE_WIDTH · t``.
STE_WIDTH = 0.05


class _SteMasked(torch.autograd.Function):
    """``W ⊙ 1[score > t]``; backward: that of ``W ⊙ (1[score > t] + σ − stopgrad(σ))``, σ of width 0.05·t."""

    @staticmethod
    def forward(ctx, weight, score, t):  # type: ignore[no-untyped-def]
        keep = score > t  # (weight-shaped) bool
        ctx.save_for_backward(weight, score, keep, t)
        return weight * keep

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        weight, score, keep, t = ctx.saved_tensors
        h = STE_WIDTH * t.detach()  # scalar
        soft = torch.sigmoid((score.float() - t) / h)  # σ(z), z = (score − t)/h = score/(0.05 t) − 20
        dsig = soft * (1 - soft)  # σ'(z), weight-shaped
        grad_weight = grad_t = None
        if ctx.needs_input_grad[0]:
            # d/dW [W·(keep + σ(z))] = keep + W·σ'(z)·(∂score/∂W)/h; a score ∝ |W| (magnitude, wanda)
            # has W·∂score/∂W = score, so the pruned weights get grad·score·σ'(z)/h.
            grad_weight = grad * (keep + (score.float() * dsig / h).to(grad.dtype))
        if ctx.needs_input_grad[2]:
            # dz/dt = −score/(h·t) (h moves with t): d out/d t = −W·σ'(z)·score/(h·t).
            grad_t = -((grad * weight).float() * dsig * score.float()).sum() / (h * t.detach())
        return grad_weight, None, grad_t


def ste_masked(weight: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``W ⊙ 1[score > t]`` differentiated as ``W ⊙ (1[score > t] + σ − stopgrad(σ))``, ``σ = σ((score − t)/(0.05·t))``.

    The straight-through mask: the forward value is the hard mask, but unlike
    :func:`surrogate_masked` the weights' gradient is not masked. A pruned weight just under
    ``t`` gets ``grad · score · σ'(z) / h`` (exact for ``score = |W|``; for a score proportional to
    ``|W|`` too), so learning can push it back over the threshold; far below ``t`` the slope
    vanishes. ``t`` (scalar) gets the sigmoid's slope, with ``h = 0.05·t`` moving with it.

    >>> w = torch.tensor([0.1, -0.5, 0.3, 0.19], requires_grad=True)
    >>> t = torch.tensor(0.2, requires_grad=True)
    >>> out = ste_masked(w, w.detach().abs(), t)
    >>> out.tolist(), out.sum().backward(), [round(g, 3) for g in w.grad.tolist()]
    ([0.0, -0.5, 0.30000001192092896, 0.0], None, [0.0, 1.0, 1.001, 3.736])
    """
    return _SteMasked.apply(weight, score.detach(), t)
