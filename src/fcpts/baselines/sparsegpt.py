"""SparseGPT (Frantar & Alistarh, 2023): per-layer OBS pruning with weight updates, layer by layer.

Each layer is a matrix ``W`` (out, cols) with calibration inputs ``X`` (rows, cols) (Conv via
unfold, :mod:`fcpts.activations`). With ``H = 2XᵀX/n + damp·mean(diag)·I``, columns are visited
left to right in blocks of ``blocksize``: in each block the weights with the lowest
``w² / [U]_jj²`` (``U``: the upper Cholesky factor of ``H⁻¹``) are pruned, and every pruned weight's
error is spread onto the not-yet-visited columns of its row by the OBS update
``δ = −(w_j / U_jj) · U_j,j:``. Layers are pruned in forward order; each one's ``X`` comes from the
model whose earlier layers are already pruned, as in the paper.

Exact count: the layer's zero count (from an allocation, rounded so all layers together hold
exactly ``round(S*·N)``, :func:`fcpts.masks.layer_counts`) is split over the blocks in proportion
to their width, so the layer ends with exactly that many zeros. Unlike the reference code, columns
whose input is always zero are not forced to zero (that would add zeros beyond the count).

``--pattern 1xB``: the zeros are whole aligned runs of B consecutive columns of a row, chosen per
block of columns by the lowest sum of ``w² / [U]_jj²`` over the run (the counts, multiples of B,
add up to exactly ``B·round(S*·N/B)``); each pruned weight's error is then spread as above.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..api import PruneConfig, RunOptions, register_method
from ..core.activations import gram
from ..core.batchnorm import recalibrate_batchnorm
from ..core.calibration import Calibration
from ..core.masks import layer_counts
from ..core.patterns import block_expand, block_view, divides
from ..core.replay import Replay
from ..core.scoring import allocation_counts, block_size_of, count_flags, pattern_of, prunable
from ..errors import FcptsError


@dataclass
class SparseGPTConfig(PruneConfig):
    """SparseGPT options.

    >>> SparseGPTConfig(target_sparsity=0.5).blocksize
    128
    """

    allocation: str = "uniform"  # per-layer sparsities (uniform in the paper); any registered allocation
    importance: str = "magnitude"  # the score the allocation sees (e.g. "wanda" with allocation "owl")
    damp: float = 0.01  # relative dampening of H: damp · mean(diag H)
    blocksize: int = 128
    # BatchNorm statistics of the pruned model, as for the other one-shot methods: on the reference CNN at
    # 0.8 (1024 calibration images, first 2000 test images) it took SparseGPT from 18.5% to 25.9% top-1
    # (uniform allocation); under the global allocation with it: 92.9%.
    recalibrate_bn: bool = True

    method = "sparsegpt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.damp > 0:
            raise FcptsError(f"damp must be > 0, got {self.damp!r}")
        if self.blocksize < 1:
            raise FcptsError(f"blocksize must be ≥ 1, got {self.blocksize}")


def dampened(h: torch.Tensor, damp: float) -> torch.Tensor:
    """``H + damp · mean(diag H) · I``; a zero diagonal entry (a dead input) becomes 1 first.

    >>> dampened(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), 0.5).tolist()
    [[2.75, 0.0], [0.0, 1.75]]
    """
    h = h.clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    diag += damp * diag.mean()
    return h


def sparsegpt_prune(
    weight: torch.Tensor,
    h: torch.Tensor,
    zeros: int | None = None,
    blocksize: int = 128,
    damp: float = 0.01,
    pattern: tuple[int, int] | None = None,
    block: int = 1,
) -> torch.Tensor:
    """The pruned and updated weight (same shape) of one layer: ``zeros`` zeros, or N:M with ``pattern``.

    ``weight`` (out, ...) is viewed as (out, cols); ``h`` (cols, cols) is ``2XᵀX/n`` (undampened).
    With a pattern the block width is rounded down to a multiple of M. ``block`` B > 1: the zeros
    (a multiple of B) are whole aligned 1×B runs of a row, chosen at the start of each block of
    columns by the lowest ``Σ w²/[U]_jj²`` over the run; the block width is a multiple of B.
    Computed in float64 for a faithful OBS update on small layers; returned in the weight's dtype.

    A grouped conv's ``h`` is (groups, cols, cols): see :func:`sparsegpt_prune_grouped`.

    >>> w = sparsegpt_prune(torch.tensor([[1.0, 0.1, 2.0, -0.2]]), torch.eye(4), zeros=2)
    >>> w.tolist()
    [[1.0, 0.0, 2.0, 0.0]]
    """
    if h.dim() == 3:
        return sparsegpt_prune_grouped(weight, h, zeros, blocksize, damp, pattern, block)
    shape, dtype = weight.shape, weight.dtype
    w = weight.detach().reshape(shape[0], -1).double().clone()  # (out, cols)
    out, cols = w.shape
    hd = dampened(h.double(), damp)
    # U: upper Cholesky factor of H⁻¹; row j of U / U_jj is the OBS update for columns j: once j-1 are fixed.
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)), upper=True)
    # N:M groups (1×B runs) must not straddle blocks: round the block down to a multiple of M (B)
    unit = pattern[1] if pattern is not None else block
    blocksize = max(unit, blocksize - blocksize % unit)
    starts = list(range(0, cols, blocksize))
    widths = [min(blocksize, cols - s) for s in starts]
    if pattern is None:
        per_block = _per_block(zeros, w.numel(), [out * b for b in widths], block)
    for b, (i1, width) in enumerate(zip(starts, widths, strict=True)):
        i2 = i1 + width
        w1 = w[:, i1:i2].clone()  # (out, width)
        u1 = u[i1:i2, i1:i2]
        d = torch.diagonal(u1)  # (width,)
        err = torch.zeros_like(w1)
        pruned = torch.zeros_like(w1, dtype=torch.bool)
        if pattern is None:
            pruned = _lowest(w1**2 / d**2, per_block[b], block)
        for j in range(width):
            if pattern is not None and j % pattern[1] == 0:
                n, m = pattern
                score = w1[:, j : j + m] ** 2 / d[j : j + m] ** 2  # (out, m), with the updates so far
                pruned[:, j : j + m].scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :n], True)
            q = torch.where(pruned[:, j], torch.zeros_like(w1[:, j]), w1[:, j])
            e = (w1[:, j] - q) / d[j]  # (out,)
            w1[:, j:] -= e.unsqueeze(1) * u1[j, j:].unsqueeze(0)
            w1[:, j] = q
            err[:, j] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w.to(dtype).reshape(shape)


def sparsegpt_prune_grouped(
    weight: torch.Tensor,
    h: torch.Tensor,
    zeros: int | None = None,
    blocksize: int = 128,
    damp: float = 0.01,
    pattern: tuple[int, int] | None = None,
    block: int = 1,
) -> torch.Tensor:
    """:func:`sparsegpt_prune` of a grouped conv: ``h`` (groups, cols, cols), one Hessian per group.

    The rows (output channels) of group ``g`` are solved with their own ``H_g`` (dampened by its own
    diagonal mean); all groups go through the blocks together, and each block's zeros are chosen
    by ``w² / [U_g]_jj²`` across every row of every group, as across the rows of a plain layer.

    >>> w = torch.tensor([[[1.0, 0.1]], [[-0.2, 2.0]]])  # a depthwise conv 2→2, kernel 1×2
    >>> sparsegpt_prune_grouped(w, torch.eye(2).repeat(2, 1, 1), zeros=2).flatten().tolist()
    [1.0, 0.0, 0.0, 2.0]
    """
    shape, dtype = weight.shape, weight.dtype
    groups = h.shape[0]
    w = weight.detach().reshape(groups, shape[0] // groups, -1).double().clone()  # (groups, out/groups, cols)
    cols = w.shape[2]
    hd = torch.stack([dampened(hg, damp) for hg in h.double()])
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)), upper=True)  # (groups, cols, cols)
    unit = pattern[1] if pattern is not None else block
    blocksize = max(unit, blocksize - blocksize % unit)
    starts = list(range(0, cols, blocksize))
    widths = [min(blocksize, cols - s) for s in starts]
    if pattern is None:
        per_block = _per_block(zeros, w.numel(), [shape[0] * b for b in widths], block)
    for b, (i1, width) in enumerate(zip(starts, widths, strict=True)):
        i2 = i1 + width
        w1 = w[:, :, i1:i2].clone()  # (groups, out/groups, width)
        u1 = u[:, i1:i2, i1:i2]
        d = torch.diagonal(u1, dim1=1, dim2=2).unsqueeze(1)  # (groups, 1, width)
        err = torch.zeros_like(w1)
        pruned = torch.zeros_like(w1, dtype=torch.bool)
        if pattern is None:
            pruned = _lowest(w1**2 / d**2, per_block[b], block)
        for j in range(width):
            if pattern is not None and j % pattern[1] == 0:
                n, m = pattern
                score = w1[:, :, j : j + m] ** 2 / d[:, :, j : j + m] ** 2  # (groups, out/groups, m)
                pruned[:, :, j : j + m].scatter_(2, torch.sort(score, dim=2, stable=True).indices[..., :n], True)
            q = torch.where(pruned[:, :, j], torch.zeros_like(w1[:, :, j]), w1[:, :, j])
            e = (w1[:, :, j] - q) / d[:, :, j]  # (groups, out/groups)
            w1[:, :, j:] -= e.unsqueeze(2) * u1[:, j, j:].unsqueeze(1)
            w1[:, :, j] = q
            err[:, :, j] = e
        w[:, :, i1:i2] = w1
        w[:, :, i2:] -= err @ u[:, i1:i2, i2:]
    return w.to(dtype).reshape(shape)


def _per_block(zeros: int | None, numel: int, sizes: list[int], block: int) -> list[int]:
    """Zeros per block of columns (``sizes`` weights each), proportional, adding up to ``zeros``;
    multiples of ``block`` (``zeros`` must be one).

    >>> _per_block(8, 16, [8, 8], 2)
    [4, 4]
    """
    if zeros is None or not 0 <= zeros <= numel or zeros % block:
        raise FcptsError(f"zeros={zeros} outside [0, {numel}] or not a multiple of the block size {block}")
    units = [size // block for size in sizes]
    return [k * block for k in layer_counts([zeros / numel] * len(sizes), units, zeros // block)]


def _lowest(score: torch.Tensor, count: int, block: int) -> torch.Tensor:
    """Flags (``score``'s shape, (..., width)) of the ``count`` lowest scores, in whole aligned runs
    of ``block`` along the last dimension, ranked by their sum (stable: ties to the lower index).

    >>> _lowest(torch.tensor([[0.1, 0.2, 5.0, 0.0], [3.0, 4.0, 0.3, 0.1]]), 4, 2).int().tolist()
    [[1, 1, 0, 0], [0, 0, 1, 1]]
    """
    runs = block_view(score, block)  # (lead, width/B) sums, in the runs' row-major order
    return block_expand(count_flags(runs, count // block, per_row=False), block, score.shape)


@register_method("sparsegpt", SparseGPTConfig, "SparseGPT: OBS mask selection and weight update, layer by layer")
def run_sparsegpt(
    model: nn.Module, calibration: Calibration, config: SparseGPTConfig, options: RunOptions
) -> list[dict[str, float]]:
    """Prune every layer in forward order with :func:`sparsegpt_prune` on the already-pruned model's inputs."""
    layers = prunable(model, config)
    pattern, block = pattern_of(config), block_size_of(config) or 1
    counts = None if pattern is not None else allocation_counts(model, layers, calibration, config)
    replay = Replay(model, calibration.epoch)  # each layer's inputs on the model pruned up to it
    for i, (name, module) in enumerate(layers.items()):
        if pattern is not None and not divides(module.weight, pattern[1]):
            continue  # left dense: its input size does not divide by M
        g, _, rows = gram(model, name, replay)
        k = None if counts is None else counts[i]
        with torch.no_grad():
            module.weight.copy_(
                sparsegpt_prune(module.weight, 2 * g / rows, k, config.blocksize, config.damp, pattern, block)
            )
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return []
