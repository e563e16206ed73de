"""Calibration statistics of layer inputs, collected by forward hooks (the orchestration part).

Every prunable layer is seen as a matrix product ``Y = X Wᵀ`` with ``X`` (rows, in·kh·kw): a
Linear's inputs flattened over all leading dims, a Conv2d's inputs unfolded (``F.unfold``) so each
row is one receptive field in ``weight.flatten(1)`` column order. From ``X`` come Wanda's column
norms ``‖X_j‖₂`` and the Gram matrices of SparseGPT (``XᵀX``) and POT (``X̃ᵀX̃``, ``X̃ᵀX``).

A Conv1d/Conv2d with ``groups > 1`` (depthwise, grouped) is ``groups`` independent problems: the
output channels of group ``g`` see only the input channels of group ``g``, so each group has its
own ``X_g`` (rows, in/groups·kh·kw) and its own norms (``(groups, cols)``) and Gram matrices
(``(groups, cols, cols)``), read from :class:`~.grouped_input.GroupedInput` (any padding, stride
and dilation; a Conv1d is a Conv2d of height 1). Conv3d is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FcptsError
from .calibration import call_model
from .grouped_input import GroupedInput, group_columns
from .lag_gram import LagSums
from .replay import Replay, StopForward, run_until_stop


def input_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as the matrix ``X`` (rows, in·kh·kw) with ``layer(x) = X Wᵀ + b`` (reshaped).

    A grouped conv gives ``(groups, rows, in/groups·kh·kw)``: group ``g``'s output channels are
    ``X[g] W_gᵀ`` (``W_g``: its rows of ``weight.flatten(1)``).

    >>> conv = nn.Conv2d(2, 3, 3, padding=1)
    >>> input_columns(conv, torch.zeros(4, 2, 5, 5)).shape
    torch.Size([100, 18])
    >>> grouped = nn.Conv2d(4, 8, 3, groups=2, padding="same", padding_mode="reflect")
    >>> input_columns(grouped, torch.zeros(1, 4, 5, 5)).shape
    torch.Size([2, 25, 18])
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d) and _pointwise(module) and x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # (B·H·W, C): unfold's rows, a view in channels_last
    if isinstance(module, nn.Conv2d) and module.groups == 1 and _numeric_zero_padding(module):
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (B, cols, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        cols = group_columns(module, x)
        return cols[0] if module.groups == 1 else cols
    if isinstance(module, nn.Conv3d):
        raise FcptsError("activation-based methods support Linear, Conv1d and Conv2d layers, not Conv3d")
    raise FcptsError(f"activation-based methods support Linear and Conv2d layers, not {type(module).__name__}")


def conv_groups(module: nn.Module) -> int:
    """How many independent problems a layer's columns form: a Conv1d/Conv2d's ``groups``, else 1."""
    return module.groups if isinstance(module, (nn.Conv1d, nn.Conv2d)) else 1


def _pointwise(module: nn.Conv2d) -> bool:
    """A 1×1 conv, stride 1, no padding, one group: ``X`` is the input's channels at each position."""
    return (
        module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.groups == 1
        and module.padding in ((0, 0), "valid")
    )


def _numeric_zero_padding(module: nn.Module) -> bool:
    return module.padding_mode == "zeros" and not isinstance(module.padding, str)


def real_tokens(inputs: Any) -> torch.Tensor | None:
    """The real tokens (B, T) of a tokenizer batch (``attention_mask != 0``); None if every row counts.

    Padding tokens are not calibration data: a Linear's input rows at padded positions are left
    out of its norms and Gram matrices, as if the sequences had not been padded (the papers
    calibrate on unpadded sequences).

    >>> real_tokens({"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])})
    tensor([[ True,  True, False],
            [ True,  True,  True]])
    """
    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or bool((mask != 0).all()):
        return None
    return mask != 0


class _Inputs:
    """Forward pre-hooks that hand each named layer's input matrix to ``sink(name, X)``.

    ``tokens`` (set per batch: :func:`real_tokens`) drops the padded rows of a Linear's (B, T, ...) input.
    """

    def __init__(self, layers: dict[str, nn.Module], sink: Any) -> None:
        self.tokens: torch.Tensor | None = None
        self.handles = [m.register_forward_pre_hook(self._hook(n, m, sink)) for n, m in layers.items()]

    def _hook(self, name: str, module: nn.Module, sink: Any) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if conv_groups(module) > 1:
                sink(name, GroupedInput(module, args[0].detach()))
                return
            x = args[0].detach()
            tokens = self.tokens
            if tokens is not None and isinstance(module, nn.Linear) and x.shape[:2] == tokens.shape:
                x = x[tokens.to(x.device)]  # (real tokens, ..., in): the rows in the same order, less the padding
            sink(name, input_columns(module, x).float())

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

    def sink(name: str, x: torch.Tensor | GroupedInput) -> None:
        sq = x.squares() if isinstance(x, GroupedInput) else (x * x).sum(0)  # (cols,); (groups, cols) grouped
        squares[name] = squares[name] + sq if name in squares else sq

    tap = _Inputs(layers, sink)
    try:
        for inputs in batches:
            tap.tokens = real_tokens(inputs)
            call_model(model, inputs)
    finally:
        tap.close()
    missing = [n for n in layers if n not in squares]
    if missing:
        raise FcptsError(f"layers never called on the calibration data: {', '.join(missing)}")
    return {n: squares[n].sqrt() for n in layers}


@torch.no_grad()
def gram(
    model: nn.Module, name: str, batches: Iterable[Any] | Replay, reference: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """``(X̃ᵀX̃, X̃ᵀX or None, rows)`` of layer ``name`` over the calibration batches.

    ``X̃`` is the layer's input in ``model``; ``X`` the same layer's input in ``reference`` (the
    dense model) on the same batch, when given. Both are (cols, cols), float32, summed over rows;
    (groups, cols, cols) for a grouped conv, one per group (``rows``: per group). ``batches`` may
    be a :class:`~fcpts.core.replay.Replay` of ``model`` (and ``reference``): layer after layer in
    forward order it runs only the part of the model the layer is in, with the same result.
    """
    # Before the hooks below: moving a Replay's cache runs forwards of its own. Plain batches stream.
    feeds = batches.feeds(name) if isinstance(batches, Replay) else ((model, b, reference, b, b) for b in batches)
    seen: dict[str, Any] = {}  # a tensor, or a GroupedInput

    def keep(key: str) -> Any:
        def sink(n: str, x: torch.Tensor | GroupedInput) -> None:
            seen[key] = x
            raise StopForward  # the layers after this one are not needed

        return sink

    layer = model.get_submodule(name)
    tap = _Inputs({name: layer}, keep("student"))
    ref_tap = None if reference is None else _Inputs({name: reference.get_submodule(name)}, keep("dense"))
    cols = layer.weight[0].numel()
    shape = (cols, cols) if conv_groups(layer) == 1 else (conv_groups(layer), cols, cols)
    g = torch.zeros(shape, device=layer.weight.device)
    c = torch.zeros(shape, device=layer.weight.device) if reference is not None else None
    rows, lags = 0, {}  # lags: a depthwise layer's lag sums (see _accumulate)
    try:
        for root, x, ref_root, ref_x, batch in feeds:
            seen.clear()
            tap.tokens = real_tokens(batch)
            if ref_tap is not None:
                ref_tap.tokens = tap.tokens
            run_until_stop(root, x)
            if "student" not in seen:
                raise FcptsError(f"layer {name!r} was never called on the calibration data")
            if ref_root is not None:
                run_until_stop(ref_root, ref_x)
            rows += _accumulate(g, c, seen["student"], seen.get("dense"), lags)
    finally:
        tap.close()
        if ref_tap is not None:
            ref_tap.close()
    if "g" in lags:
        g += lags["g"].gram()
    if "c" in lags and c is not None:
        c += lags["c"].gram()
    return g, c, rows


def _accumulate(g: torch.Tensor, c: torch.Tensor | None, x: Any, dense: Any, lags: dict[str, LagSums]) -> int:
    """Add ``X̃ᵀX̃`` to ``g`` and ``X̃ᵀX`` to ``c`` (when given) for one batch; its rows (per group).

    A depthwise input whose :meth:`GroupedInput.lag_sums` holds goes into ``lags`` (``"g"``, then
    ``"c"``), whose sums :func:`gram` adds at the end.
    """
    if isinstance(x, GroupedInput) and x.lag_sums():
        xp = x.padded()
        _lag_sums(lags, "g", x, True).add(xp)
        if c is not None:
            _lag_sums(lags, "c", x, False).add(xp, dense.padded())
        return x.rows
    if isinstance(x, GroupedInput):
        return x.accumulate(g, c, dense)
    g += x.T @ x
    if c is not None:
        c += x.T @ dense
    return x.shape[0]


def _lag_sums(lags: dict[str, LagSums], key: str, x: GroupedInput, symmetric: bool) -> LagSums:
    if key not in lags:
        lags[key] = x.new_lag_sums(symmetric)
    return lags[key]
