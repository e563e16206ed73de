"""Gram matrices of a depthwise convolution's inputs from lag products, without unfolding the inputs.

A depthwise conv (one input channel per group) has one small Gram matrix per channel ``c``: with
``x`` its padded input (N, C, H, W), ``o_a`` the offset of kernel tap ``a`` (dilation × (row, col))
and ``s`` the stride, summed over the samples ``n`` and the output positions ``p``:

    G[c, a, b] = Σ_n Σ_p x[n, c, s·p + o_a] · y[n, c, s·p + o_b]          (y = x: XᵀX; y dense: X̃ᵀX)

Unfolded (``F.unfold``), that is K = kh·kw copies of the input and K² multiply-adds per position
(625 for a 5×5 kernel). With the lag ``d = o_b − o_a`` each entry is instead the sum of one
*lag-product plane* ``P_d[c, q] = Σ_n x[n, c, q] · y[n, c, q + d]`` over the strided rectangle
``q = o_a + s·p``, and there are only (2kh−1)(2kw−1) lags (81 for 5×5; XᵀX is symmetric, so it
needs the 41 with ``d ≥ 0``). :class:`LagSums` adds each batch's planes in the C++ kernel
(``csrc/lag_gram.cpp``: one pass per lag over each channel's planes, which stay in cache) and reads
the K² rectangles once, at the end. On EfficientNet-Lite1's depthwise layers (64 samples, 2 cores,
both matrices as POT reads them) that is 3.0-6.7× faster than unfolding at stride 1 and 1.8-2.3× at
stride 2, whose planes are summed at every position though a quarter of them is read
(benchmarks/bench_gram.py).

Planes are summed in float32 and rectangles in float64; the result is float32, within 1e-6
relative of a float64 unfold in the tests. Without the kernel (:mod:`.native`) callers unfold.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from . import native

SOURCE = Path(__file__).with_name("csrc") / "lag_gram.cpp"
_I64, _P = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "fcpts_lag_products": [_P, _P, _I64, _I64, _I64, _I64, _P, _I64, _P, ctypes.c_int],
    "fcpts_lag_sums": [_P, _I64, _I64, _I64, _I64, _P, _I64, _I64, _I64, _I64, _I64, _P, ctypes.c_int],
}


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The lag-product kernel, built on first call; None where it cannot be (:func:`.native.load`)."""
    return native.load(SOURCE, _SIGNATURES, "unfolded inputs")


Pair = tuple[int, int, tuple[int, int]]  # (tap a, tap b, lag o_b − o_a)


class LagSums:
    """``Σ u_a(x) u_b(y)`` per channel over batches of a depthwise conv's padded inputs (see the module).

    ``kernel``, ``dilation``, ``stride`` are 2-d; ``symmetric``: ``y`` is ``x`` (XᵀX);
    ``diagonal``: only XᵀX's diagonal, each tap's sum of squares (Wanda's input norms; one lag).
    Taps are in ``weight.flatten(1)`` order (row-major over the kernel).

    >>> sums = LagSums((1, 2), (1, 1), (1, 1), symmetric=True)
    >>> sums.add(torch.tensor([[[[1.0, 2.0, 3.0]]]]))  # one sample, one channel, 1×3 plane
    >>> sums.gram().tolist()  # taps at columns (0, 1): positions read [1, 2] and [2, 3]
    [[[5.0, 8.0], [8.0, 13.0]]]
    """

    def __init__(
        self,
        kernel: tuple[int, int],
        dilation: tuple[int, int],
        stride: tuple[int, int],
        symmetric: bool,
        diagonal: bool = False,
    ) -> None:
        self.kernel, self.dilation, self.stride = kernel, dilation, stride
        self.symmetric = symmetric or diagonal
        self.offsets = [(i * dilation[0], j * dilation[1]) for i in range(kernel[0]) for j in range(kernel[1])]
        pairs = [(a, b, _lag(oa, ob)) for a, oa in enumerate(self.offsets) for b, ob in enumerate(self.offsets)]
        if diagonal:
            pairs = [p for p in pairs if p[0] == p[1]]
        self.pairs: list[Pair] = [p for p in pairs if not self.symmetric or p[2] >= (0, 0)]  # G[b, a] = G[a, b]
        self.lags = sorted({lag for _, _, lag in self.pairs})
        self.lag_offsets = torch.tensor(self.lags, dtype=torch.int64)  # (L, 2): what the kernel reads
        self.planes: torch.Tensor | None = None  # (C, lags, H, W) float32: this plane size's running sums
        self.total: torch.Tensor | None = None  # (C, K, K) float64: the sums of earlier plane sizes

    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Add one batch: ``x`` (and ``y``, unless symmetric) padded, (N, C, H, W) float32 contiguous, on the CPU."""
        lib = library()
        assert lib is not None and x.dtype == torch.float32 and x.is_contiguous()
        y = x if y is None else y
        n, c, h, w = x.shape
        if self.planes is not None and self.planes.shape[2:] != (h, w):  # another image size: new planes
            self._flush()
        if self.planes is None:
            self.planes = torch.zeros(c, len(self.lags), h, w)
        lib.fcpts_lag_products(x.data_ptr(), y.data_ptr(), n, c, h, w, self.lag_offsets.data_ptr(), len(self.lags),
                               self.planes.data_ptr(), torch.get_num_threads())  # fmt: skip

    def gram(self) -> torch.Tensor:
        """The (C, K, K) float32 sums of every batch added."""
        self._flush()
        assert self.total is not None, "no batch added"
        return self.total.float()

    def _flush(self) -> None:
        """Move the planes' rectangle sums into ``total`` (float64)."""
        if self.planes is None:
            return
        sums = self._rectangles(self.planes)  # (C, pairs)
        k = len(self.offsets)
        g = torch.zeros(sums.shape[0], k, k, dtype=torch.float64)
        a, b = (torch.tensor(v) for v in zip(*((p[0], p[1]) for p in self.pairs), strict=True))
        g[:, a, b] = sums
        if self.symmetric:  # the pairs held d ≥ 0: mirror them (the diagonal, d = 0, once)
            g = g + g.transpose(1, 2) - torch.diag_embed(torch.diagonal(g, dim1=1, dim2=2))
        self.total = g if self.total is None else self.total + g
        self.planes = None

    def _rectangles(self, planes: torch.Tensor) -> torch.Tensor:
        """(C, pairs) float64: each pair's plane summed over its strided rectangle of output positions."""
        lib = library()
        assert lib is not None
        c, _, h, w = planes.shape
        (kh, kw), (dh, dw), (sh, sw) = self.kernel, self.dilation, self.stride
        out_h, out_w = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        index = {lag: i for i, lag in enumerate(self.lags)}
        items = torch.tensor([(index[lag], *self.offsets[a]) for a, _, lag in self.pairs], dtype=torch.int64)
        out = torch.zeros(c, len(self.pairs), dtype=torch.float64)
        lib.fcpts_lag_sums(planes.data_ptr(), c, len(self.lags), h, w, items.data_ptr(), len(self.pairs),
                           out_h, out_w, sh, sw, out.data_ptr(), torch.get_num_threads())  # fmt: skip
        return out


def _lag(oa: tuple[int, int], ob: tuple[int, int]) -> tuple[int, int]:
    return ob[0] - oa[0], ob[1] - oa[1]
