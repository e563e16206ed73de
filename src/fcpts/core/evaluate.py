"""Evaluation helpers: top-1 accuracy, batched inference, sparsity of the prunable layers."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .calibration import call_model, rows, to_device
from .layers import LayerFilter, default_layer_filter, prunable_layers
from .memory_format import held_in, resolve_memory_format


def output_logits(output: object) -> torch.Tensor:
    """The tensor a forward returned: itself, ``.logits``, ``["logits"]``, or the first item or field.

    Covers dicts, Hugging Face ``ModelOutput`` (a dict: ``last_hidden_state`` comes first),
    dataclasses (e.g. :class:`fcpts.zoo.SentenceEmbeddingOutput`) and tuples.

    >>> output_logits({"last_hidden_state": torch.ones(1, 2)}).shape
    torch.Size([1, 2])
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"] if "logits" in output else output_logits(next(iter(output.values())))
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output_logits(output[0])
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        values = [getattr(output, f.name) for f in dataclasses.fields(output)]
        return output_logits(next(v for v in values if v is not None))
    raise TypeError(f"cannot find a logits tensor in a model output of type {type(output).__name__}")


def is_logits_output(output: object) -> bool:
    """True for a classifier's output (a bare tensor, or one with ``logits``); False for embeddings.

    A dict, ``ModelOutput`` or dataclass without ``logits`` (``last_hidden_state``,
    ``sentence_embedding``) holds embeddings, which a KL divergence over softmax does not fit.

    >>> is_logits_output(torch.zeros(2, 3)), is_logits_output({"logits": 1}), is_logits_output({"x": 1})
    (True, True, False)
    """
    if isinstance(output, torch.Tensor):
        return True
    if isinstance(output, dict):
        return "logits" in output
    if hasattr(output, "logits"):
        return True
    if isinstance(output, (tuple, list)) and output:
        return is_logits_output(output[0])
    return False


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor], batch_size: int = 1000) -> torch.Tensor:
    """Logits (or embeddings) of ``model`` on ``x`` (N, ...) in batches, on the model's device; on CPU.

    ``x`` may be a dict of tensors (N, ...) passed as keyword arguments (tokenizer outputs). A
    convolutional model runs in channels_last (:func:`~fcpts.core.memory_format.resolve_memory_format`):
    the same outputs up to float rounding, about twice as fast on a CPU.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    try:
        with held_in(model, resolve_memory_format(model)):
            return torch.cat(
                [
                    output_logits(call_model(model, to_device(rows(x, slice(i, i + batch_size)), device))).cpu()
                    for i in range(0, n, batch_size)
                ]
            )
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on images ``x`` (N, C, H, W) with labels ``y`` (N,).

    >>> from fcpts.models.reference import ReferenceCNN
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
