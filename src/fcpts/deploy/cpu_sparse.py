"""The ``cpu-sparse`` kernel: a small C++/OpenMP sparse × dense matmul, built with the system's C++
compiler at first use and cached, called through :mod:`ctypes`.

**Format.** The weight ``W`` (out × in; a 1×1 Conv2d's ``(O, C)``) is kept as CSR: int32
``row_ptr`` (out + 1) and ``col_indices`` (one per stored weight), float32 ``values``. Each stored
``w = W[m, k]`` costs 8 bytes (4 for dense): smaller than dense above 50% zeros. The ``cpu-block``
kernel (``block`` 4 or 8) keeps a weight whose nonzeros form aligned 1×B blocks as block-CSR
(:mod:`.blocks`: one column index per block, ``4 + 4/B`` bytes per stored weight).

**Kernel** (``csrc/spmm.cpp``). Output-stationary over the SIMD lanes of the activation's *row*
dimension (tokens, pixels, batch): a tile of ``T = 16·V`` activation rows (V = 1, 2 or 4 groups of
16 floats: one AVX-512 register each, or two AVX2 ones, by the number of rows; at most 4 native
vectors, so V ≤ 2 on AVX2) is transposed into a
thread-local (in × T) buffer that stays in L2, and every stored weight does
``acc[m, 0:T] += w · xᵀ[k, 0:T]``, V 16-float FMAs on one broadcast value (a block: B of them
from one column index); 16 finished output rows are transposed back into ``y`` with the bias.
Blocks with fewer than ``DOT_BELOW[B]`` row-major rows run along the block instead: one 8-float
FMA per 1×8 block (per two 1×4 blocks), the weight vector loaded once for up to 8 rows. The work items
(batch, row tile, output-row chunk) are spread over ``torch.get_num_threads()`` OpenMP threads;
with fewer tiles than threads (1-31 rows) the output rows are split instead. A contiguous NCHW
1×1-conv input is already transposed ((C, H·W) per image): it is read in place, no packing.

**Build.** At first use, cached (:mod:`fcpts.core.native`). No compiler, a failed build, or
``FCPTS_CPU_KERNEL=0``: :func:`library` returns None, the kernel is not offered, and a module
already converted (e.g. loaded from a file written elsewhere) runs ``torch.sparse.mm`` on the same
CSR arrays — the pure-PyTorch fallback. The fallback also serves inputs the native kernel does not
take (not float32, not on the CPU, or needing gradients).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from torch import nn

from ..core import native
from .blocks import bcsr_arrays, bcsr_to_csr, block_size
from .kernels import _csr_arrays

SOURCE = Path(__file__).with_name("csrc") / "spmm.cpp"
_ARGS = [ctypes.c_void_p, *[ctypes.c_int64] * 5, *[ctypes.c_void_p] * 3, ctypes.c_int64]
_ARGS += [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
#: The entry points called take the block size (1: CSR) and, row-major, ``DOT_BELOW`` after it.
_BLOCK_ARGS = {
    "fcpts_bspmm_rowmajor": [*_ARGS, ctypes.c_int, ctypes.c_int64],
    "fcpts_bspmm_colmajor": [*_ARGS, ctypes.c_int],
}
#: Block size → row count below which row-major input runs the few-rows kernel (vectors along the
#: block; scalar for CSR, never faster here) instead of the row-lane one: measured in
#: benchmarks/bench_blocks.py.
DOT_BELOW = {1: 0, 4: 8, 8: 16}


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The native kernel, built and loaded on first call; None where it cannot be (see the module doc)."""
    return native.load(SOURCE, _BLOCK_ARGS, "dense/torch CSR")


def _csr(weight2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR arrays of :func:`.kernels._csr_arrays` as the C kernel reads them: int32 indices, float32 values."""
    crow, col, values = _csr_arrays(weight2d.detach().to(torch.float32))
    return crow.to(torch.int32).contiguous(), col.to(torch.int32).contiguous(), values.contiguous()


class _SparseRows(nn.Module):
    """A (rows, cols) float32 weight as CSR arrays (``block`` 1) or 1×``block`` block-CSR arrays
    (:mod:`.blocks`): buffers ``row_ptr``, ``col_indices``, frozen parameter ``values``, and an
    optional bias: plain tensors, so ``state_dict``, ``torch.save``, ``copy.deepcopy`` and pickling
    work as for any module."""

    def __init__(self, weight2d: torch.Tensor, bias: torch.Tensor | None, block: int = 1) -> None:
        super().__init__()
        self.shape2d = tuple(weight2d.shape)
        self.block = block
        row_ptr, col, values = _csr(weight2d) if block == 1 else bcsr_arrays(weight2d, block)
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("col_indices", col)
        self.values = nn.Parameter(values, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)

    def csr(self) -> torch.Tensor:
        if self.block > 1:
            return bcsr_to_csr(self.row_ptr, self.col_indices, self.values, self.block, self.shape2d)
        return torch.sparse_csr_tensor(
            self.row_ptr, self.col_indices, self.values, self.shape2d, check_invariants=False
        )

    def dense_weight(self) -> torch.Tensor:
        """The dense (rows, cols) weight, zeros included."""
        return self.csr().to_dense()

    def _native(self, x: torch.Tensor) -> ctypes.CDLL | None:
        """The library if the native kernel takes this input, else None (the torch fallback runs)."""
        if x.dtype != torch.float32 or not x.is_cpu or not self.values.is_cpu:  # is_cpu: no device object per call
            return None
        if torch.is_grad_enabled() and (x.requires_grad or self.values.requires_grad):
            return None
        return library()

    def _call(self, lib: ctypes.CDLL, layout: str, x: torch.Tensor, y: torch.Tensor, dims: tuple[int, ...]) -> None:
        """The kernel for ``layout`` ("rowmajor" or "colmajor") on x → y; ``dims``: (batches, rows,
        cols, x row stride, x batch stride, y row stride, y batch stride)."""
        b, n, k, ldx, xbs, ldy, ybs = dims
        bias = 0 if self.bias is None else self.bias.data_ptr()
        rows = self.shape2d[0]
        extra = (self.block, DOT_BELOW[self.block]) if layout == "rowmajor" else (self.block,)
        fn = lib.fcpts_bspmm_rowmajor if layout == "rowmajor" else lib.fcpts_bspmm_colmajor
        fn(x.data_ptr(), b, n, k, ldx, xbs, self.row_ptr.data_ptr(), self.col_indices.data_ptr(),
           self.values.data_ptr(), rows, bias, y.data_ptr(), ldy, ybs, torch.get_num_threads(), *extra)  # fmt: skip

    def _fallback(self, x2: torch.Tensor) -> torch.Tensor:
        """(N, cols) → (N, rows) with torch.sparse.mm on the same CSR arrays."""
        y = torch.sparse.mm(self.csr().to(x2.dtype), x2.t()).t()
        return y if self.bias is None else y + self.bias.to(x2.dtype)


class CPUSparseLinear(_SparseRows):
    """``nn.Linear`` with a CSR weight run by the native kernel: x (..., in) → (..., out)."""

    def __init__(self, linear: nn.Linear, block: int = 1) -> None:
        super().__init__(linear.weight, linear.bias, block)
        self.out_features, self.in_features = self.shape2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        lib = self._native(x)
        if lib is None:
            y = self._fallback(x2)
        else:
            x2 = x2.contiguous()
            n = x2.shape[0]
            y = torch.empty(n, self.out_features, dtype=torch.float32)
            if n:
                dims = (1, n, self.in_features, self.in_features, 0, self.out_features, 0)
                self._call(lib, "rowmajor", x2, y, dims)
        return y.reshape(*x.shape[:-1], self.out_features)


class CPUSparseConv2d(_SparseRows):
    """A pointwise ``nn.Conv2d`` (1×1, groups 1, no padding, any stride) as a GEMM over the pixels.

    channels_last input (B, H, W, C in memory) is a (B·H·W, C) row-major matrix: one kernel call,
    output channels_last like the dense conv's. Contiguous NCHW input is (C, H·W) per image: the
    kernel's transposed layout, read in place; output NCHW.
    """

    def __init__(self, conv: nn.Conv2d, block: int = 1) -> None:
        super().__init__(conv.weight.flatten(1), conv.bias, block)
        self.out_channels, self.in_channels = self.shape2d
        self.stride = tuple(conv.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        sh, sw = self.stride
        if (sh, sw) != (1, 1):
            x = x[:, :, ::sh, ::sw]
        b, c, h, w = x.shape
        o = self.out_channels
        lib = self._native(x)
        if lib is None:
            x2 = x.permute(0, 2, 3, 1).reshape(-1, c)
            y = self._fallback(x2).reshape(b, h, w, o).permute(0, 3, 1, 2)
        elif channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.empty(b, o, h, w, dtype=torch.float32, memory_format=torch.channels_last)
            if y.numel():
                self._call(lib, "rowmajor", x, y, (1, b * h * w, c, c, 0, o, 0))
        else:
            x = x.contiguous()
            y = torch.empty(b, o, h, w, dtype=torch.float32)
            if y.numel():
                self._call(lib, "colmajor", x, y, (b, h * w, c, h * w, c * h * w, h * w, o * h * w))
        return y[0] if unbatched else y


def pointwise(conv: nn.Conv2d) -> bool:
    """A 1×1 Conv2d, groups 1, no padding: a GEMM over the pixels."""
    return (
        tuple(conv.kernel_size) == (1, 1)
        and conv.groups == 1
        and not isinstance(conv.padding, str)
        and tuple(conv.padding) == (0, 0)
    )


def build(module: nn.Module, blocked: bool = False) -> nn.Module | None:
    """The ``cpu-sparse`` replacement of a float32 CPU Linear or pointwise Conv2d; None otherwise.
    ``blocked``: the ``cpu-block`` one instead, for a weight whose nonzeros form aligned 1×4 or 1×8
    blocks (:func:`.blocks.block_size`); None for any other weight."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    if weight.numel() >= 2**31 or library() is None:
        return None
    kind = CPUSparseLinear if type(module) is nn.Linear else None  # not subclasses: e.g. MultiheadAttention
    if type(module) is nn.Conv2d and pointwise(module):  # reads its out_proj.weight directly
        kind = CPUSparseConv2d
    if kind is None:
        return None
    block = block_size(weight.flatten(1)) if blocked else 1
    return None if block is None else kind(module, block)


__all__ = ["CPUSparseConv2d", "CPUSparseLinear", "build", "library"]
