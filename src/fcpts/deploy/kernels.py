"""Sparse kernels for pruned layers, registered with :func:`register_kernel`; :mod:`.sparse_inference`
chooses among them per layer by timing.

* ``csr``: ``torch.sparse.mm`` with the weight in CSR for ``nn.Linear`` (``W @ xᵀ``) and for
  ``nn.Conv2d`` through im2col (``F.unfold``); a Conv2d with ``groups > 1``, a padding mode other
  than zeros or a string padding stays dense, as do Conv1d/Conv3d.
* ``semi-structured``: PyTorch's 2:4 semi-structured sparse weight
  (``torch.sparse.to_sparse_semi_structured``) for ``nn.Linear`` whose weight is on CUDA, float16 or
  bfloat16, with at least 2 zeros in every group of 4 along the input dimension. Only offered on a
  CUDA device; **not yet run**: no GPU was available where this was written.
* ``cpu-sparse``: fcpts' own C++/OpenMP kernel (:mod:`.cpu_sparse`, built at first use) for float32
  ``nn.Linear`` and pointwise (1×1, groups 1) ``nn.Conv2d`` on the CPU; channels_last convs run as
  one GEMM over the pixels. Not offered where no C++ compiler is found.
* ``cpu-block``: the same kernel on 1×4 / 1×8 block-CSR (:mod:`.blocks`), for a weight whose
  nonzeros form aligned blocks along the input dimension (``--pattern 1x4`` / ``1x8``); below
  16 activation rows it vectorizes along the block instead of along the rows.

The converted modules keep their CSR arrays as ordinary dense tensors (buffers ``crow_indices``
and ``col_indices``, int32 when the sizes allow; frozen parameters ``values`` and ``bias``) and
build the CSR view in ``forward`` (a few µs): ``state_dict``, ``torch.save``, ``copy.deepcopy``
and ``.to()`` work as for any module (a CSR tensor itself cannot be deep-copied).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry


def _csr_arrays(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(crow_indices, col_indices, values)`` of a 2-D weight (out, in) in CSR."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.detach().to_sparse_csr()
    crow, col = csr.crow_indices(), csr.col_indices()
    if max(weight.shape[1], csr.values().numel()) < 2**31:
        # int32 indices: half the index bytes, and torch's CPU CSR matmul measured ~10-20% faster at batch 1.
        crow, col = crow.to(torch.int32), col.to(torch.int32)
    return crow.clone(), col.clone(), csr.values().clone()


class _CSRWeight(nn.Module):
    """A (rows, cols) weight kept as CSR arrays in buffers; :meth:`csr` is the sparse tensor view."""

    def __init__(self, weight2d: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.shape2d = tuple(weight2d.shape)
        crow, col, values = _csr_arrays(weight2d)
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        # values and bias stay parameters (frozen), as in the layer replaced: code that finds a model's
        # device or dtype from next(model.parameters()) keeps working on a fully converted model.
        self.values = nn.Parameter(values, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def csr(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            self.crow_indices, self.col_indices, self.values, self.shape2d, check_invariants=False
        )

    def dense_weight(self) -> torch.Tensor:
        """The dense (rows, cols) weight, zeros included."""
        return self.csr().to_dense()


class CSRLinear(_CSRWeight):
    """``nn.Linear`` with a CSR weight: ``y = (W_csr @ xᵀ)ᵀ + b`` for x (..., in) → (..., out)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.weight, linear.bias)
        self.out_features, self.in_features = self.shape2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        y = torch.sparse.mm(self.csr(), x2.t()).t()  # (out, N) → (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class CSRConv2d(_CSRWeight):
    """``nn.Conv2d`` (groups 1, zero padding) as im2col + CSR matmul.

    ``F.unfold`` turns x (B, C, H, W) into columns (B, C·kh·kw, L), L = Ho·Wo; the weight
    (O, C·kh·kw) in CSR multiplies all B·L columns at once: (O, B·L) → (B, O, Ho, Wo), made
    channels_last when the input is (as the dense conv's output would be).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.weight.flatten(1), conv.bias)
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        b, _, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (B, K, L)
        k, length = cols.shape[1], cols.shape[2]
        y = torch.sparse.mm(self.csr(), cols.transpose(0, 1).reshape(k, b * length))  # (O, B·L)
        y = y.view(self.out_channels, b, length).transpose(0, 1)  # (B, O, L)
        if self.bias is not None:
            y = y + self.bias[:, None]
        y = y.reshape(b, self.out_channels, ho, wo)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = y.contiguous(memory_format=torch.channels_last)  # the layout the dense conv would return
        return y[0] if unbatched else y


class SemiStructuredLinear(nn.Module):
    """``nn.Linear`` with a 2:4 semi-structured sparse weight (CUDA, float16/bfloat16 only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        self.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


#: ``builder(module) -> replacement or None`` (None: the kernel does not apply to this layer).
KernelBuilder = Callable[[nn.Module], "nn.Module | None"]


#: Kernel name → builder; :func:`plan` tries every registered kernel on every layer.
KERNELS: Registry[KernelBuilder] = Registry("sparse kernel")


def register_kernel(name: str) -> Callable[[KernelBuilder], KernelBuilder]:
    """Register a sparse kernel: a builder returning the replacement module, or None if it does not apply."""

    return KERNELS.register(name)


def _csr_conv_applies(conv: nn.Conv2d) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


@register_kernel("csr")
def _csr(module: nn.Module) -> nn.Module | None:
    if module.weight.device.type != "cpu" or not module.weight.is_floating_point():
        return None
    if type(module) is nn.Conv2d and _csr_conv_applies(module):
        return CSRConv2d(module)
    if type(module) is nn.Linear:  # not subclasses: e.g. MultiheadAttention reads its out_proj.weight directly
        return CSRLinear(module)
    return None


def is_2_of_4(weight: torch.Tensor) -> bool:
    """At least 2 zeros in every group of 4 consecutive weights along the input (last) dimension.

    >>> is_2_of_4(torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 3.0, 4.0]]))
    True
    >>> is_2_of_4(torch.tensor([[1.0, 5.0, 0.0, 2.0]]))
    False
    """
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


@register_kernel("cpu-sparse")
def _cpu_sparse(module: nn.Module) -> nn.Module | None:
    from .cpu_sparse import build

    return build(module)


@register_kernel("cpu-block")
def _cpu_block(module: nn.Module) -> nn.Module | None:
    from .cpu_sparse import build

    return build(module, blocked=True)


@register_kernel("semi-structured")
def _semi_structured(module: nn.Module) -> nn.Module | None:
    weight = module.weight
    if type(module) is not nn.Linear or weight.device.type != "cuda":  # cuSPARSELt / CUTLASS kernels only
        return None
    if weight.dtype not in (torch.float16, torch.bfloat16) or not is_2_of_4(weight):
        return None
    return SemiStructuredLinear(module)
