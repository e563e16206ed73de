"""The fused surrogate mask: the hard mask ``W ⊙ 1[score > t]`` in value, a sigmoid's slope for ``t``.

With ``threshold_grad="surrogate"`` (:class:`~fcpts.method.threshold_mask.ThresholdMask`) this is
how the reconstruction loss reaches a layer's threshold: the forward pass uses the exact mask, the
backward pass takes ``t``'s gradient from ``W ⊙ σ((score − t) / h)`` (``h``: the layer's KDE
bandwidth). One autograd node per layer instead of a graph of elementwise ops.
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
