"""POT: the ridge refit is the least-squares solution."""

from __future__ import annotations

import torch
from torch import nn

import fcpts


def test_pot_refit_is_the_ridge_least_squares_solution():
    torch.manual_seed(0)
    fc = nn.Linear(6, 2, bias=False)
    x = torch.randn(32, 6)
    damp = 0.01
    result = fcpts.prune(fc, x, fcpts.make_config("pot", target_sparsity=0.5, damp=damp, batch_size=8))
    w, new = fc.weight.detach().double(), result.model.weight.detach().double()
    assert int((new == 0).sum()) == 6
    xd = x.double()
    g = xd.T @ xd
    lam = damp * torch.diagonal(g).mean()
    for r in range(2):
        k = (new[r] != 0).nonzero().squeeze(1)
        a = g[k][:, k] + lam * torch.eye(len(k), dtype=torch.float64)
        expected = torch.linalg.solve(a, xd[:, k].T @ (xd @ w[r]))
        torch.testing.assert_close(new[r, k], expected, rtol=1e-5, atol=1e-6)
    # Its mask is magnitude's (per layer), so only the refit changed the kept weights.
    assert ((new != 0) == (fc.weight.abs() > fc.weight.abs().flatten().sort().values[5])).all()


def test_pot_keeps_a_dead_layer_dense_instead_of_a_singular_solve():
    """A layer whose inputs are all zero (ReLUs that never fire, as in a randomly initialised SSDlite's
    extra layers) has G = 0, so λ = 0 too: its solves were singular. It has nothing to fit."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every ReLU output is 0 on inputs in [0, 1)
    result = fcpts.prune(net, torch.rand(16, 4), fcpts.make_config("pot", target_sparsity=0.5, batch_size=8))
    assert result.zeros == round(0.5 * result.numel)
    kept = result.model[2].weight != 0
    assert int(kept.sum()) == 12 and torch.equal(result.model[2].weight[kept], net[2].weight[kept])
