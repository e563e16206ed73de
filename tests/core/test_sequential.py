"""Layer after layer: the input norms of the layers of one pass, on the model as it is."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fcpts.core.activations import input_norms
from fcpts.core.replay import Replay
from fcpts.core.sequential import shared_norms
from fcpts.errors import FcptsError
from tests.core.test_padding_tokens import TokenNet, batches


class Attention(nn.Module):
    """q, k and v read the same tensor; o reads their combination (an attention block's Linear layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(3, 3) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(self.q(x) * self.k(x) + self.v(x))


def test_one_pass_for_the_layers_that_read_the_same_tensor():
    torch.manual_seed(0)
    net = Attention()
    x = [torch.randn(4, 3), torch.randn(2, 3)]
    calls = []
    net.o.register_forward_hook(lambda m, a, y: calls.append(1))
    norms = shared_norms(net, ["q", "k", "v", "o"], Replay(net, lambda: x))
    assert list(norms) == ["q", "k", "v"]
    assert calls == []  # the passes stopped before o ran
    once = input_norms(net, {"q": net.q, "o": net.o}, x)
    for name in ("q", "k", "v"):
        assert torch.equal(norms[name], once["q"])  # bit for bit, as the one-pass norms
    assert torch.equal(shared_norms(net, ["o"], Replay(net, lambda: x))["o"], once["o"])


def test_a_run_ends_at_the_first_layer_that_reads_another_tensor():
    torch.manual_seed(0)
    net = Attention()
    x = [torch.randn(4, 3)]
    # In module order q, o, k: o reads another tensor, so k (after it in the list) is left to a later pass.
    assert list(shared_norms(net, ["q", "o", "k"], Replay(net, lambda: x))) == ["q"]


def test_padding_tokens_left_out_bit_for_bit():
    torch.manual_seed(0)
    net = TokenNet()
    padded, _ = batches()
    data = padded + padded
    once = input_norms(net, {"fc1": net.fc1, "fc2": net.fc2}, data)
    assert list(shared_norms(net, ["fc1", "fc2"], Replay(net, lambda: data))) == ["fc1"]
    assert torch.equal(shared_norms(net, ["fc1", "fc2"], Replay(net, lambda: data))["fc1"], once["fc1"])
    assert torch.equal(shared_norms(net, ["fc2"], Replay(net, lambda: data))["fc2"], once["fc2"])


def test_a_grouped_conv_in_a_chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, groups=2, padding=1))
    x = [torch.randn(2, 4, 5, 5), torch.randn(3, 4, 5, 5)]
    replayed = shared_norms(net, ["2"], Replay(net, lambda: x))["2"]
    assert replayed.shape == (2, 18)  # 2 groups of 2 input channels × 3×3
    assert torch.equal(replayed, input_norms(net, {"2": net[2]}, x)["2"])


def test_a_layer_never_called():
    net = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    net.forward = lambda x: net["used"](x)  # type: ignore[method-assign]
    with pytest.raises(FcptsError, match="'unused' was never called"):
        shared_norms(net, ["unused"], Replay(net, lambda: [torch.ones(1, 2)]))
