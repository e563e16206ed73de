"""SparseGPT: the closed-form OBS update, N:M and block size."""

from __future__ import annotations

import torch

from fcpts.baselines.sparsegpt import sparsegpt_prune


def test_sparsegpt_update_equals_the_closed_form_obs_solution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    h = 2 * x.T @ x / 64
    w = torch.randn(3, 6, generator=g, dtype=torch.float64) + 2.0
    w[:, :2] = 1e-3  # the two lowest-saliency columns: pruned in every row
    damp = 0.01
    pruned = sparsegpt_prune(w, h, zeros=6, blocksize=128, damp=damp)

    # Closed-form OBS for the fixed mask P = {0, 1}: δ = −H⁻¹[:, P] (H⁻¹[P, P])⁻¹ w_P for every row.
    hd = h + damp * torch.diagonal(h).mean() * torch.eye(6, dtype=torch.float64)
    hinv = torch.linalg.inv(hd)
    p = [0, 1]
    expected = w - (hinv[:, p] @ torch.linalg.solve(hinv[p][:, p], w[:, p].T)).T
    assert (pruned[:, :2] == 0).all()
    torch.testing.assert_close(pruned, expected, rtol=1e-9, atol=1e-12)


def test_sparsegpt_nm_and_blocksize():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 16, generator=g)
    w = torch.randn(5, 16, generator=g)
    for blocksize in (8, 6, 128):  # 6: rounded down to 4, so no group straddles two blocks
        out = sparsegpt_prune(w, 2 * x.T @ x / 40, blocksize=blocksize, pattern=(2, 4))
        assert ((out.view(5, 4, 4) == 0).sum(-1) == 2).all()
        kept = out != 0
        assert not torch.equal(out[kept], w[kept])  # the kept weights were updated
    exact = sparsegpt_prune(w, 2 * x.T @ x / 40, zeros=33, blocksize=5)
    assert int((exact == 0).sum()) == 33
