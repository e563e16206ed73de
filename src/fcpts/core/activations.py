"""Calibration statistics of layer inputs, collected by forward hooks (the orchestration part).

Every prunable layer is seen as a matrix product ``Y = X Wᵀ`` with ``X`` (rows, in·kh·kw): a
Linear's inputs flattened over all leading dims, a Conv2d's inputs unfolded (``F.unfold``) so each
row is one receptive field in ``weight.flatten(1)`` column order. From ``X`` come Wanda's column
norms ``‖X_j‖₂`` and the Gram matrices of SparseGPT (``XᵀX``) and POT (``X̃ᵀX̃``, ``X̃ᵀX``).

A Conv1d/Conv2d with ``groups > 1`` (depthwise, grouped) is ``groups`` independent problems: the
output channels of group ``g`` see only the input channels of group ``g``, so each group has its
own ``X_g`` (rows, in/groups·kh·kw) and its own norms (``(groups, cols)``) and Gram matrices
(``(groups, cols, cols)``). Its columns are built block of groups by block (and block of samples
by block, at most :data:`CHUNK_ELEMENTS` values at a time), never for the whole layer at once.
Any padding is honoured (numeric or ``'same'``/``'valid'``, modes zeros/reflect/replicate/circular:
``F.pad`` before the unfold, as ``nn.Conv2d`` does), with stride and dilation; a Conv1d is a Conv2d
of height 1. Conv3d is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FcptsError
from .calibration import call_model
from .replay import Replay, StopForward, run_until_stop

#: The most values one block of a grouped conv's unfolded input holds (float32: 64 MiB).
CHUNK_ELEMENTS = 2**24


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


def _as_conv2d(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """``x`` as a 4-d batch and the conv's ``(kernel, dilation, stride, F.pad widths, F.pad mode)`` in 2-d.

    A Conv1d is a Conv2d of height 1; an unbatched input gets a batch of one.
    """
    if x.dim() == len(module.kernel_size) + 1:
        x = x.unsqueeze(0)
    pad = list(module._reversed_padding_repeated_twice)  # F.pad order: last dim first; 'same' may be uneven
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    if isinstance(module, nn.Conv1d):
        pad += [0, 0]  # no padding along the height of 1
        return x.unsqueeze(2), ((1, *module.kernel_size), (1, *module.dilation), (1, *module.stride), pad, mode)
    return x, (module.kernel_size, module.dilation, module.stride, pad, mode)


def group_columns(
    module: nn.Module, x: torch.Tensor, first: int = 0, last: int | None = None, samples: slice = slice(None)
) -> torch.Tensor:
    """``X_g`` (groups last-first, rows, in/groups·kh·kw) of groups ``first..last-1`` of a Conv1d/Conv2d.

    ``samples`` picks the batch entries; ``group_columns(conv, x)[g] @ W_gᵀ`` is group ``g``'s output
    channels of ``conv(x)`` (without bias), rows in (sample, position) order.
    """
    cols = _unfolded(module, x, first, module.groups if last is None else last, samples)  # (B, n, cols, L)
    b, n, _, positions = cols.shape
    return cols.permute(1, 0, 3, 2).reshape(n, b * positions, -1)


def _unfolded(module: nn.Module, x: torch.Tensor, first: int, last: int, samples: slice) -> torch.Tensor:
    """The columns of groups ``first..last-1`` as unfolded, (B, groups, cols, positions)."""
    x, (kernel, dilation, stride, pad, mode) = _as_conv2d(module, x)
    width = module.in_channels // module.groups
    x = x[samples, first * width : last * width]
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    cols = F.unfold(x, kernel, dilation, 0, stride)  # (B, n·cols, L)
    return cols.view(cols.shape[0], last - first, -1, cols.shape[2])


class GroupedInput:
    """A grouped conv's input, handed to the sinks instead of its columns: they read it block by block."""

    def __init__(self, module: nn.Module, x: torch.Tensor) -> None:
        self.module, self.x = module, x.float().contiguous()  # unfold reads NCHW faster than channels_last
        x4, (kernel, dilation, stride, pad, _) = _as_conv2d(module, x)
        size = [x4.shape[2] + pad[2] + pad[3], x4.shape[3] + pad[0] + pad[1]]
        self.samples = x4.shape[0]
        positions = 1
        for n, k, d, s in zip(size, kernel, dilation, stride, strict=True):
            positions *= (n - d * (k - 1) - 1) // s + 1
        self.rows = self.samples * positions  # per group
        self.cols = module.weight[0].numel()
        per_sample = positions * self.cols  # one group's values for one sample
        self.group_block = max(1, CHUNK_ELEMENTS // (self.samples * per_sample))
        self.sample_block = self.samples if self.group_block > 1 else max(1, CHUNK_ELEMENTS // per_sample)

    def blocks(self, other: GroupedInput | None = None) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
        """``(first, last, U, U_other)``: a block of groups and samples unfolded, (B, n, cols, positions)."""
        groups = self.module.groups
        for first in range(0, groups, self.group_block):
            last = min(groups, first + self.group_block)
            for start in range(0, self.samples, self.sample_block):
                samples = slice(start, start + self.sample_block)
                u = _unfolded(self.module, self.x, first, last, samples)
                yield first, last, u, None if other is None else _unfolded(other.module, other.x, first, last, samples)

    def squares(self) -> torch.Tensor:
        """``Σ X_g²`` per group and column: (groups, cols)."""
        sq = torch.zeros(self.module.groups, self.cols, device=self.x.device)
        for first, last, u, _ in self.blocks():
            sq[first:last] += torch.linalg.vector_norm(u, dim=(0, 3)).square()  # no squared copy of the block
        return sq

    def accumulate(self, g: torch.Tensor, c: torch.Tensor | None, other: GroupedInput | None) -> int:
        """Add ``X_gᵀX_g`` to ``g`` (and ``X_gᵀX'_g`` of ``other``'s columns to ``c``) per group; the rows."""
        for first, last, u, u_other in self.blocks(other if c is not None else None):
            b, n, cols, positions = u.shape
            flat = u.reshape(b * n, cols, positions)  # one (cols, positions) matrix per sample and group
            g[first:last] += (flat @ flat.transpose(1, 2)).view(b, n, cols, cols).sum(0)
            if c is not None and u_other is not None:
                flat_other = u_other.reshape(b * n, cols, positions)
                c[first:last] += (flat @ flat_other.transpose(1, 2)).view(b, n, cols, cols).sum(0)
        return self.rows


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
    rows = 0
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
            rows += _accumulate(g, c, seen["student"], seen.get("dense"))
    finally:
        tap.close()
        if ref_tap is not None:
            ref_tap.close()
    return g, c, rows


def _accumulate(g: torch.Tensor, c: torch.Tensor | None, x: Any, dense: Any) -> int:
    """Add ``X̃ᵀX̃`` to ``g`` and ``X̃ᵀX`` to ``c`` (when given) for one batch; its rows (per group)."""
    if isinstance(x, GroupedInput):
        return x.accumulate(g, c, dense)
    g += x.T @ x
    if c is not None:
        c += x.T @ dense
    return x.shape[0]
