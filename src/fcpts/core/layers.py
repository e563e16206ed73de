"""Which layers are prunable: a filter over ``(name, module)``, never a hard-coded attribute path."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import FcptsError

#: ``filter(name, module) -> bool``: True for a layer whose ``weight`` fcpts may prune.
LayerFilter = Callable[[str, nn.Module], bool]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def default_layer_filter(name: str, module: nn.Module) -> bool:
    """Conv1d/2d/3d and Linear layers (any subclass, e.g. ``NonDynamicallyQuantizableLinear``).

    >>> default_layer_filter("fc", nn.Linear(2, 2)), default_layer_filter("bn", nn.BatchNorm1d(2))
    (True, False)
    """
    return isinstance(module, PRUNABLE_TYPES)


def exclude(*names: str, base: LayerFilter = default_layer_filter) -> LayerFilter:
    """A filter that drops the layers whose name is in ``names`` (e.g. a classifier kept dense).

    >>> keep = exclude("0")
    >>> [n for n, _ in prunable_layers(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), keep)]
    ['1']
    """
    dropped = set(names)
    return lambda name, module: name not in dropped and base(name, module)


def prunable_layers(model: nn.Module, layer_filter: LayerFilter = default_layer_filter) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every layer the filter accepts that has a ``weight`` tensor, in order.

    A weight shared by several layers (tied weights, ``b.weight = a.weight``) is one tensor to prune:
    only its first layer is listed, so every count (allocation, bridge, finalize, report) sees each
    distinct weight once, and pruning it prunes every layer that shares it.

    >>> a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    >>> b.weight = a.weight
    >>> [name for name, _ in prunable_layers(nn.Sequential(a, b))]
    ['0']
    """
    seen: set[int] = set()
    layers = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or not layer_filter(name, module):
            continue
        key = id(_stored_weight(module))
        if key not in seen:
            seen.add(key)
            layers.append((name, module))
    return layers


def _stored_weight(module: nn.Module) -> object:
    """The tensor that holds a layer's weight: the parametrization's original while one is registered."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations.weight.original
    return module.weight


def require_prunable_layers(
    model: nn.Module, layer_filter: LayerFilter = default_layer_filter
) -> list[tuple[str, nn.Module]]:
    """:func:`prunable_layers`, with one clear error if the model has none."""
    layers = prunable_layers(model, layer_filter)
    if not layers:
        raise FcptsError("the model has no prunable layer (Conv1d/2d/3d or Linear accepted by the layer filter)")
    return layers
