"""Evaluation helpers: top-1 accuracy, batched inference, sparsity of the prunable layers."""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerFilter, default_layer_filter, prunable_layers


def output_logits(output: object) -> torch.Tensor:
    """The tensor a classifier's forward returned: itself, ``.logits``, ``["logits"]`` or the first item."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"] if "logits" in output else next(iter(output.values()))
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output_logits(output[0])
    raise TypeError(f"cannot find a logits tensor in a model output of type {type(output).__name__}")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` on ``x`` (N, ...) in batches, on the model's device; returned on CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [output_logits(model(x[i : i + batch_size].to(device))).cpu() for i in range(0, len(x), batch_size)]
        )
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on images ``x`` (N, C, H, W) with labels ``y`` (N,).

    >>> from fcpts.models import ReferenceCNN
    >>> 0.0 <= accuracy(ReferenceCNN(), torch.rand(4, 1, 28, 28), torch.arange(4)) <= 1.0
    True
    """
    return (predict(model, x, batch_size).argmax(1) == y).float().mean().item()


def layer_sparsity(model: nn.Module, layer_filter: LayerFilter = default_layer_filter) -> dict[str, tuple[int, int]]:
    """``{layer name: (zeros, numel)}`` of the weights of every prunable layer."""
    return {name: (int((m.weight == 0).sum()), m.weight.numel()) for name, m in prunable_layers(model, layer_filter)}


def global_sparsity(model: nn.Module, layer_filter: LayerFilter = default_layer_filter) -> float:
    """Fraction of zeros among all prunable weights.

    >>> global_sparsity(nn.Linear(4, 2)) == 0.0
    True
    """
    counts = layer_sparsity(model, layer_filter).values()
    return sum(z for z, _ in counts) / max(1, sum(n for _, n in counts))
