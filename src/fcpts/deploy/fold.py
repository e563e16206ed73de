"""Fold eval-mode BatchNorm into the convolution or linear layer before it.

A BatchNorm in eval mode is a per-channel affine map ``y = (x - μ) · γ / √(σ² + ε) + β``; after a
layer ``x = W·a + b`` whose output feeds only it, it is the same layer with ``W' = s·W`` (each output
channel's row scaled by ``s = γ / √(σ² + ε)``) and ``b' = s·(b - μ) + β``. Scaling a row keeps its
zeros, so a pruned layer stays exactly as sparse; the BatchNorm disappears (one pass over the
activation fewer, and one activation fewer held in memory). timm's ``BatchNormAct2d`` (a
``BatchNorm2d`` with ``drop`` and ``act`` children) keeps its dropout and activation.

The pairs come from one forward pass of an example input (a hook sees the BatchNorm receive the very
tensor the layer returned); the folded model's output is then checked against the original's, and
if they differ (the layer's output also went elsewhere, e.g. a shortcut) nothing is folded. A
torchvision detector is checked on its raw head outputs (:mod:`fcpts.models.detection`): its boxes
after score threshold and NMS can change in number with the last bit of a score.

>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
>>> _ = net[1].running_mean.uniform_(-1, 1), net[1].running_var.uniform_(0.5, 2)
>>> x = torch.randn(2, 3, 9, 9)
>>> folded = copy.deepcopy(net)
>>> fold_batchnorm(folded, x)
[('0', '1')]
>>> type(folded[1]).__name__
'Identity'
>>> torch.allclose(folded(x), net(x), rtol=1e-5, atol=1e-5)
True
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from ..core.evaluate import output_logits
from ..models.detection import HeadOutputs, wrap

#: Layers whose output channels are dim 0 of the weight and dim 1 (Linear: the last) of the output.
FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _normalisation_only(bn: nn.Module) -> nn.Module | None:
    """What stays of ``bn`` once its normalisation is folded away; None: not a BatchNorm we can fold."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None or bn.running_var is None:
        return None  # no running statistics: normalised by each batch's own, not a fixed affine map
    if type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nn.Identity()
    children = dict(bn.named_children())
    if set(children) == {"drop", "act"}:  # timm's BatchNormAct2d: x → bn → drop → act
        return nn.Sequential(children["drop"], children["act"])
    return None  # another subclass: its forward may do more than normalise


def _pairs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """(layer, batchnorm) names where the BatchNorm's input is the layer's output, each called once."""
    layers = {m: n for n, m in model.named_modules() if isinstance(m, FOLDABLE)}
    norms = {m: n for n, m in model.named_modules() if _normalisation_only(m) is not None}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) → (layer, output): held so ids stay unique
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []

    def after_layer(module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        calls[layers[module]] = calls.get(layers[module], 0) + 1
        produced[id(out)] = (layers[module], out)

    def before_norm(module: nn.Module, args: tuple) -> None:
        calls[norms[module]] = calls.get(norms[module], 0) + 1
        source = produced.get(id(args[0]))
        if source is not None and source[1] is args[0]:
            pairs.append((source[0], norms[module]))

    hooks = [m.register_forward_hook(after_layer) for m in layers] + [
        m.register_forward_pre_hook(before_norm) for m in norms
    ]
    try:
        with torch.no_grad():
            output_logits(model(example_input[:1]))  # the pairing does not depend on the batch size
    finally:
        for hook in hooks:
            hook.remove()
    return [(layer, bn) for layer, bn in pairs if calls[layer] == 1 and calls[bn] == 1]


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """``layer``'s weight (out, ...) and bias (out,) become those of ``bn ∘ layer`` (computed in float64)."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = torch.ones_like(var) if bn.weight is None else bn.weight.double()
    beta = torch.zeros_like(var) if bn.bias is None else bn.bias.double()
    scale = gamma / torch.sqrt(var + bn.eps)  # (out,)
    weight = layer.weight
    shape = (-1,) + (1,) * (weight.dim() - 1)
    weight.copy_((weight.double() * scale.view(shape)).to(weight.dtype))
    bias = torch.zeros_like(var) if layer.bias is None else layer.bias.double()
    folded = ((bias - mean) * scale + beta).to(weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(folded, requires_grad=weight.requires_grad)
    else:
        layer.bias.copy_(folded)


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
        return False  # a Linear's channels are its last dim: only BatchNorm1d on (N, C) matches them
    return bn.num_features == channels and not torch.isinf(bn.running_var + bn.eps).any()


@torch.no_grad()
def _checked_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The output tensors folding must keep: a detector's raw head outputs and feature maps, else the logits."""
    out = wrap(model)(x)
    return list(out.values()) if isinstance(out, HeadOutputs) else [output_logits(out)]


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor, rtol: float = 1e-4) -> list[tuple[str, str]]:
    """Fold, in place, every eval-mode BatchNorm fed only by the layer before it; returns the (layer, bn) pairs.

    ``model`` must be in eval mode (a training-mode BatchNorm normalises by batch statistics). The
    folded model's output on ``example_input`` must match the original's within ``rtol`` of its
    largest magnitude, else the model is restored and nothing is folded (with a warning).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    found = _pairs(model, example_input)
    pairs = [(a, b) for a, b in found if _foldable(model.get_submodule(a), model.get_submodule(b))]
    if not pairs:
        return []
    expected = _checked_outputs(model, example_input[:1])
    saved = {a: copy.deepcopy(model.get_submodule(a)) for a, _ in pairs}
    saved |= {b: model.get_submodule(b) for _, b in pairs}
    for layer, bn in pairs:
        _fold_into(model.get_submodule(layer), model.get_submodule(bn))
        _set(model, bn, _normalisation_only(model.get_submodule(bn)))
    got = _checked_outputs(model, example_input[:1])
    if any((g - e).abs().max() > rtol * e.abs().max() + 1e-6 for g, e in zip(got, expected, strict=True)):
        for name, module in saved.items():
            _set(model, name, module)
        warnings.warn("fcpts: folding BatchNorm changed the model's output; left unfolded", stacklevel=2)
        return []
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


__all__ = ["fold_batchnorm"]
