"""Wanda: the |W|·‖X‖ score on a hand-written layer, also as fcpts's importance."""

from __future__ import annotations

import pytest
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


class TwoLinears(nn.Module):
    """``b(a(x))`` outside any ``nn.Sequential``: every layer's inputs come from whole forwards."""

    def __init__(self, a: nn.Linear, b: nn.Linear) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def chain_case() -> tuple[nn.Linear, nn.Linear, torch.Tensor]:
    """a: 2→2, b: 2→1, no bias, one calibration row [1, 1].

    a's rows keep their larger weight (norms [1, 1]): a becomes [[1, 0], [0, 2]]. b's input norms are
    a's outputs: [1.5, 2.4] on the dense a, [1.0, 2.0] on the pruned a; with b = [1.75, 1.0] the scores
    are [2.625, 2.4] (column 1 goes) on the dense model and [1.75, 2.0] (column 0 goes) on the pruned one.
    """
    a, b = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 0.5], [0.4, 2.0]]))
        b.weight.copy_(torch.tensor([[1.75, 1.0]]))
    return a, b, torch.ones(1, 2)


@pytest.mark.parametrize("wrap", ["sequential", "module"])
def test_each_layer_is_scored_on_the_already_pruned_model(wrap):
    a, b, x = chain_case()
    model = nn.Sequential(a, b) if wrap == "sequential" else TwoLinears(a, b)  # replayed, or whole forwards
    config = fcpts.make_config("wanda", target_sparsity=0.5, sequential=True)
    pruned = fcpts.prune(model, x, config).model
    first, second = (pruned[0], pruned[1]) if wrap == "sequential" else (pruned.a, pruned.b)
    assert first.weight.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert second.weight.tolist() == [[0.0, 1.0]]


def test_by_default_every_layer_is_scored_on_the_dense_model():
    a, b, x = chain_case()
    config = fcpts.make_config("wanda", target_sparsity=0.5)
    pruned = fcpts.prune(nn.Sequential(a, b), x, config).model
    assert pruned[0].weight.tolist() == [[1.0, 0.0], [0.0, 2.0]]
    assert pruned[1].weight.tolist() == [[1.75, 0.0]]


def test_sequential_n_m():
    # a: 4→4 diagonal [1, 2, 3, 4] (12 zeros already, so 2:4 prunes only zeros there); b: 4→1.
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.eye(4) * torch.tensor([1.0, 2.0, 3.0, 4.0]))
        b.weight.copy_(torch.tensor([[4.0, 3.5, 1.375, 1.0]]))
    # b's input norms are a's outputs [1, 2, 3, 4]: scores [4, 7, 4.125, 4], the two 4s go.
    config = fcpts.make_config("wanda", target_sparsity=0.5, pattern="2:4", sequential=True)
    pruned = fcpts.prune(nn.Sequential(a, b), torch.ones(1, 4), config)
    assert pruned.model[0].weight.tolist() == torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
    assert pruned.model[1].weight.tolist() == [[0.0, 3.5, 1.375, 0.0]]


def test_cli_sequential_sets_the_option_of_wanda_only(run_cli):
    from fcpts.cli.commands import _config
    from fcpts.cli.parser import build_parser

    base = ["prune", "--model", "refcnn", "--data", "fashion-mnist", "--sparsity", "0.5", "--out", "o"]
    for flags, expected in ((["--sequential"], True), (["--no-sequential"], False), ([], False)):
        config, _ = _config(build_parser().parse_args([*base, "--method", "wanda", *flags]))
        assert config.sequential is expected
    code, _, err = run_cli(*base, "--method", "sparsegpt", "--sequential")
    assert code == 2 and err == "fcpts: error: --sequential does not apply to method 'sparsegpt'\n"
