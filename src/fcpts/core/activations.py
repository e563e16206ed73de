"""Calibration statistics of layer inputs, collected by forward hooks (the orchestration part).

Every prunable layer is seen as a matrix product ``Y = X Wᵀ`` with ``X`` (rows, in·kh·kw): a
Linear's inputs flattened over all leading dims, a Conv2d's inputs unfolded (``F.unfold``) so each
row is one receptive field in ``weight.flatten(1)`` column order. From ``X`` come Wanda's column
norms ``‖X_j‖₂`` and the Gram matrices of SparseGPT (``XᵀX``) and POT (``X̃ᵀX̃``, ``X̃ᵀX``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FcptsError
from .calibration import call_model


def input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as the matrix ``X`` (rows, in·kh·kw) with ``layer(x) = X Wᵀ + b`` (reshaped).

    >>> conv = nn.Conv2d(2, 3, 3, padding=1)
    >>> input_columns(conv, torch.zeros(4, 2, 5, 5)).shape
    torch.Size([100, 18])
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise FcptsError("activation-based methods support Conv2d with groups=1, numeric zero padding only")
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, cols, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise FcptsError(f"activation-based methods support Linear and Conv2d layers, not {type(module).__name__}")


class StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


class _Inputs:
    """Forward pre-hooks that hand each named layer's input matrix to ``sink(name, X)``."""

    def __init__(self, layers: dict[str, nn.Module], sink: Any) -> None:
        self.handles = [m.register_forward_pre_hook(self._hook(n, m, sink)) for n, m in layers.items()]

    @staticmethod
    def _hook(name: str, module: nn.Module, sink: Any) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            sink(name, input_columns(module, args[0].detach()).float())

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def input_norms(model: nn.Module, layers: dict[str, nn.Module], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """``‖X_j‖₂`` over all calibration rows, per input column, for every layer in ``layers`` (one pass).

    >>> fc = nn.Linear(2, 1)
    >>> input_norms(fc, {"": fc}, [torch.tensor([[3.0, 0.0], [4.0, 1.0]])])[""].tolist()
    [5.0, 1.0]
    """
    squares: dict[str, torch.Tensor] = {}

    def sink(name: str, x: torch.Tensor) -> None:
        sq = (x * x).sum(0)  # (cols,)
        squares[name] = squares[name] + sq if name in squares else sq

    tap = _Inputs(layers, sink)
    try:
        for inputs in batches:
            call_model(model, inputs)
    finally:
        tap.close()
    missing = [n for n in layers if n not in squares]
    if missing:
        raise FcptsError(f"layers never called on the calibration data: {', '.join(missing)}")
    return {n: squares[n].sqrt() for n in layers}


@torch.no_grad()
def gram(
    model: nn.Module, name: str, batches: Iterable[Any], reference: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(X̃ᵀX̃, X̃ᵀX or None, rows)`` of layer ``name`` over the calibration batches.

    ``X̃`` is the layer's input in ``model``; ``X`` the same layer's input in ``reference`` (the
    dense model) on the same batch, when given. Both are (cols, cols), float32, summed over rows.
    """
    layer = dict(model.named_modules())[name]
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str) -> Any:
        def sink(n: str, x: torch.Tensor) -> None:
            seen[key] = x
            raise StopForward  # the layers after this one are not needed

        return sink

    tap = _Inputs({name: layer}, keep("student"))
    ref_tap = None
    if reference is not None:
        ref_tap = _Inputs({name: dict(reference.named_modules())[name]}, keep("dense"))
    cols = layer.weight[0].numel()
    device = layer.weight.device
    g = torch.zeros(cols, cols, device=device)
    c = torch.zeros(cols, cols, device=device) if reference is not None else None
    rows = 0
    try:
        for inputs in batches:
            seen.clear()
            _run_until_stop(model, inputs)
            if "student" not in seen:
                raise FcptsError(f"layer {name!r} was never called on the calibration data")
            x_s = seen["student"]
            g += x_s.T @ x_s
            rows += x_s.shape[0]
            if reference is not None and c is not None:
                _run_until_stop(reference, inputs)
                c += x_s.T @ seen["dense"]
    finally:
        tap.close()
        if ref_tap is not None:
            ref_tap.close()
    return g, c, rows


def _run_until_stop(model: nn.Module, inputs: Any) -> None:
    with contextlib.suppress(StopForward):
        call_model(model, inputs)
