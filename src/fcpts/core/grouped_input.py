"""A grouped conv's input as independent problems, one per group, read block by block.

A Conv1d/Conv2d with ``groups > 1`` (depthwise, grouped) is ``groups`` independent problems: the
output channels of group ``g`` see only the input channels of group ``g``, so each group has its
own ``X_g`` (rows, in/groups·kh·kw). :class:`GroupedInput` builds the columns block of groups by
block (and block of samples by block, at most :data:`CHUNK_ELEMENTS` values at a time), never for
the whole layer at once; a depthwise conv's Gram matrices are read as lag sums instead
(:mod:`.lag_gram`) where its kernel is built. Any padding is honoured (numeric or
``'same'``/``'valid'``, modes zeros/reflect/replicate/circular: ``F.pad`` before the unfold, as
``nn.Conv2d`` does), with stride and dilation; a Conv1d is a Conv2d of height 1.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .lag_gram import LagSums, library

#: The most values one block of a grouped conv's unfolded input holds (float32: 64 MiB).
CHUNK_ELEMENTS = 2**24
#: The most values a depthwise conv's lag planes may hold (float32: 512 MiB each of XᵀX's and X̃ᵀX's),
#: else its inputs are unfolded (EfficientNet-Lite1's largest: 12M values at 120×120 and 32 channels).
PLANE_ELEMENTS = 2**27


def as_conv2d(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
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
    x, (kernel, dilation, stride, pad, mode) = as_conv2d(module, x)
    width = module.in_channels // module.groups
    x = x[samples, first * width : last * width]
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    cols = F.unfold(x, kernel, dilation, 0, stride)  # (B, n·cols, L)
    return cols.view(cols.shape[0], last - first, -1, cols.shape[2])


class GroupedInput:
    """A grouped conv's input, handed to the sinks instead of its columns: they read it block by block
    (a depthwise conv's Gram matrices: as lag sums, :mod:`.lag_gram`, where the kernel is built)."""

    def __init__(self, module: nn.Module, x: torch.Tensor) -> None:
        self.module, self.raw = module, x
        x4, (kernel, dilation, stride, pad, _) = as_conv2d(module, x)
        self.kernel, self.dilation, self.stride = kernel, dilation, stride  # 2-d (a Conv1d's: height 1)
        size = [x4.shape[2] + pad[2] + pad[3], x4.shape[3] + pad[0] + pad[1]]
        lags = (2 * kernel[0] - 1) * (2 * kernel[1] - 1)
        self.plane_elements = module.groups * lags * size[0] * size[1]  # a depthwise conv's lag planes at most
        self.samples = x4.shape[0]
        positions = 1
        for n, k, d, s in zip(size, kernel, dilation, stride, strict=True):
            positions *= (n - d * (k - 1) - 1) // s + 1
        self.rows = self.samples * positions  # per group
        self.cols = module.weight[0].numel()
        per_sample = positions * self.cols  # one group's values for one sample
        self.group_block = max(1, CHUNK_ELEMENTS // (self.samples * per_sample))
        self.sample_block = self.samples if self.group_block > 1 else max(1, CHUNK_ELEMENTS // per_sample)

    @functools.cached_property
    def x(self) -> torch.Tensor:
        return self.raw.float().contiguous()  # unfold reads NCHW faster than channels_last

    def lag_sums(self) -> bool:
        """Whether the Gram matrices are read as lag sums: a depthwise float32 CPU input whose lag planes
        fit in :data:`PLANE_ELEMENTS` (not a detector's 800×800 images), the kernel built."""
        depthwise = self.module.in_channels == self.module.groups and self.plane_elements <= PLANE_ELEMENTS
        return depthwise and self.raw.device.type == "cpu" and self.raw.dtype == torch.float32 and bool(library())

    def new_lag_sums(self, symmetric: bool, diagonal: bool = False) -> LagSums:
        """An empty :class:`~.lag_gram.LagSums` for this conv's kernel, dilation and stride."""
        return LagSums(self.kernel, self.dilation, self.stride, symmetric, diagonal)

    def padded(self) -> torch.Tensor:
        """The input padded as the conv pads it, (N, C, H, W) float32 contiguous (a Conv1d's: H = 1)."""
        x, (_, _, _, pad, mode) = as_conv2d(self.module, self.raw)
        if mode != "constant":
            return F.pad(x.contiguous(), pad, mode=mode)
        out = x.new_zeros(x.shape[0], x.shape[1], x.shape[2] + pad[2] + pad[3], x.shape[3] + pad[0] + pad[1])
        out[:, :, pad[2] : out.shape[2] - pad[3], pad[0] : out.shape[3] - pad[1]] = x  # one copy, NCHW from any layout
        return out

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
        if self.lag_sums():
            sums = self.new_lag_sums(symmetric=True, diagonal=True)
            sums.add(self.padded())
            return torch.diagonal(sums.gram(), dim1=1, dim2=2)
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
