"""Wanda: the |W|·‖X‖ score on a hand-written layer, also as fcpts's importance."""

from __future__ import annotations

import torch
from torch import nn

import fcpts


def wanda_case() -> tuple[nn.Linear, torch.Tensor]:
    """A 1×8 Linear with weights 8..1 and one calibration row: column norms [0.1, 1, 1, 1, 10, 10, 10, 10]."""
    fc = nn.Linear(8, 1)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]))
    x = torch.tensor([[0.1, 1.0, -1.0, 1.0, 10.0, -10.0, 10.0, 10.0]])
    return fc, x


def test_wanda_mask_on_a_1x8_linear():
    # Scores |W|·‖X_j‖ = [0.8, 7, 6, 5, 40, 30, 20, 10]: the four lowest are the first four columns,
    # exactly the weights magnitude pruning would keep.
    fc, x = wanda_case()
    result = fcpts.prune(fc, x, fcpts.make_config("wanda", target_sparsity=0.5))
    assert (result.model.weight != 0).int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    assert result.model.weight[0, 4:].tolist() == [4.0, 3.0, 2.0, 1.0]
    magnitude = fcpts.prune(fc, x, fcpts.make_config("uniform-magnitude", target_sparsity=0.5))
    assert (magnitude.model.weight != 0).int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_fcpts_threshold_on_the_wanda_score():
    # No learning (iters=0): the uniform threshold on the Wanda score gives Wanda's mask.
    fc, x = wanda_case()
    config = fcpts.FCPTSConfig(target_sparsity=0.5, iters=0, init="uniform", importance="wanda")
    result = fcpts.prune(fc, x, config)
    assert (result.model.weight != 0).int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    plain = fcpts.prune(fc, x, fcpts.FCPTSConfig(target_sparsity=0.5, iters=0, init="uniform"))
    assert (plain.model.weight != 0).int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_weights_already_zero_go_first_so_the_count_stays_exact():
    # Columns 0-3 never see an input (score 0 for all four); column 5's weight is already zero.
    # Sorted by score alone, the tie at 0 would prune columns 0-2 and keep 5 with its zero: 5 zeros, not 4.
    fc = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 0.0, 2.0, 1.0]]))
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0, 10.0, 10.0, 10.0, 10.0]])
    for method in ("wanda", "pot"):
        result = fcpts.prune(fc, x, fcpts.make_config(method, target_sparsity=0.5))
        assert result.zeros == 4, method
        assert (result.model.weight[0] == 0).tolist()[5], method
