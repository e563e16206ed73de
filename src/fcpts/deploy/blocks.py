"""The 1×B block-CSR format of the ``cpu-block`` kernel: a weight whose nonzeros form aligned runs of
``B`` consecutive inputs of a row (what ``--pattern 1xB`` prunes to) stores one column index per run.

Arrays, for a (rows, cols) weight with ``cols % B == 0``: int32 ``row_ptr`` (rows + 1, counting
blocks), int32 ``col_indices`` (one per stored block: its first column, a multiple of ``B``) and
float32 ``values`` (``B`` per stored block, contiguous). A stored weight costs ``4 + 4/B`` bytes
(CSR: 8). A block is stored when any of its ``B`` weights is nonzero, so a weight that is not
blocked is stored with its zeros; :func:`block_size` only offers ``B`` where that padding is small.

>>> w = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
>>> row_ptr, col, values = bcsr_arrays(w, 4)
>>> row_ptr.tolist(), col.tolist(), values.tolist()
([0, 1], [4], [1.0, 2.0, 3.0, 4.0])
>>> torch.equal(bcsr_to_csr(row_ptr, col, values, 4, w.shape).to_dense(), w)
True
"""

from __future__ import annotations

import warnings

import torch

#: Block sizes the kernel takes, largest first.
BLOCKS = (8, 4)
#: :func:`block_size` offers ``B`` when storing whole blocks adds at most this fraction of zeros.
MAX_PADDING = 0.02


def block_size(weight2d: torch.Tensor, blocks: tuple[int, ...] = BLOCKS) -> int | None:
    """The largest ``B`` in ``blocks`` dividing the input size whose nonzero aligned 1×B blocks hold
    at most ``MAX_PADDING`` (relative) more weights than the nonzeros; None if there is none.

    >>> w = torch.zeros(4, 16)
    >>> w[:, 4:8] = 1.0  # one 1x4 block per row: not 1x8-blocked (half of each stored 1x8 would be zeros)
    >>> block_size(w), block_size(torch.ones(4, 16)), block_size(torch.eye(8))
    (4, 8, None)
    """
    if weight2d.dim() != 2:
        return None
    nonzero = weight2d.detach() != 0
    nnz = int(nonzero.sum())
    for b in blocks:
        if weight2d.shape[1] % b:
            continue
        stored = int(nonzero.reshape(weight2d.shape[0], -1, b).any(-1).sum()) * b
        if stored <= nnz * (1 + MAX_PADDING):
            return b
    return None


def bcsr_arrays(weight2d: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(row_ptr, col_indices, values)`` of a (rows, cols) weight in 1×``block`` block-CSR (see the module doc)."""
    w = weight2d.detach().to(torch.float32)
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // block, block)  # (rows, cols/B, B)
    kept = (blocks != 0).any(-1)  # (rows, cols/B)
    counts = kept.sum(1, dtype=torch.int64)
    row_ptr = torch.zeros(rows + 1, dtype=torch.int64)
    row_ptr[1:] = counts.cumsum(0)
    col = kept.nonzero()[:, 1] * block  # row-major order: row by row, columns ascending
    values = blocks[kept].reshape(-1)  # (stored blocks · B,)
    return row_ptr.to(torch.int32), col.to(torch.int32).contiguous(), values.contiguous()


def bcsr_to_csr(
    row_ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, block: int, shape: tuple[int, int]
) -> torch.Tensor:
    """The same weight as a torch CSR tensor (each block's ``B`` columns, padding zeros included)."""
    crow = row_ptr.to(torch.int64) * block
    cols = (col.to(torch.int64)[:, None] + torch.arange(block)).reshape(-1)  # (stored blocks · B,)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)
