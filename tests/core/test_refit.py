"""The ridge refit keeps pruned weights at zero."""

from __future__ import annotations

import torch

from fcpts.core.refit import refit_rows


def test_refit_keeps_pruned_weights_at_zero():
    g = torch.eye(3)
    out = refit_rows(torch.ones(2, 3), torch.tensor([[True, False, True], [False, False, True]]), g, g, 0.0 + 1e-9)
    assert (out == torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])).all()
