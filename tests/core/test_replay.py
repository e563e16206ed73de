"""Layer inputs replayed unit by unit (``core.replay``): the same Gram matrices as whole forwards, fewer forwards."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fcpts.core.activations import gram
from fcpts.core.replay import Replay, chains


class Block(nn.Module):
    """A residual unit with two convs, a depthwise one among them."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw, self.pw = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw(torch.relu(self.dw(x)))


class Net(nn.Module):
    def __init__(self, direct: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(4), nn.Sequential(Block(4), Block(4)))
        self.head = nn.Linear(4, 3)
        self.direct = direct  # call the blocks one by one, not through the Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.direct:
            for block in (self.blocks[0], self.blocks[1][1], self.blocks[1][0]):  # not the chain's order
                x = block(x)
        else:
            x = self.blocks(x)
        return self.head(x.mean((2, 3)))


class Doubling(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # not Sequential's forward: not a chain
        return super().forward(x) * 2


LAYERS = [
    "stem",
    "blocks.0.dw",
    "blocks.0.pw",
    "blocks.1.0.dw",
    "blocks.1.0.pw",
    "blocks.1.1.dw",
    "blocks.1.1.pw",
    "head",
]


def test_chains_flatten_nested_sequentials_and_skip_other_forwards():
    assert chains(Net()) == [("blocks", ["blocks.0", "blocks.1.0", "blocks.1.1"])]
    assert chains(nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU()))) == [("", ["0", "1.0"])]
    assert chains(nn.ModuleDict({"d": Doubling(nn.ReLU(), nn.Sequential(nn.ReLU()))})) == [("d.1", ["d.1.0"])]


def _prune_in_order(net: nn.Module, batches, order, replayed: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Gram matrices layer after layer, each layer then halved in place (pruned): on a Replay or whole forwards."""
    dense = copy.deepcopy(net)
    source = Replay(net, lambda: batches, reference=dense) if replayed else batches
    out = []
    for name in order:
        g, c, _ = gram(net, name, source, reference=dense)
        out.append((g, c))
        with torch.no_grad():
            weight = net.get_submodule(name).weight
            weight.mul_((weight.abs() > weight.abs().median()).float())
    return out


def test_replay_gives_the_whole_forwards_grams_bit_for_bit():
    batches = [torch.rand(3, 2, 5, 5), torch.rand(2, 2, 5, 5)]
    for net_kind, order in [(False, LAYERS), (False, LAYERS[:3] + LAYERS[5:] + LAYERS[3:5]), (True, LAYERS)]:
        replayed = _prune_in_order(Net(net_kind), batches, order, replayed=True)
        whole = _prune_in_order(Net(net_kind), batches, order, replayed=False)
        for (g1, c1), (g0, c0) in zip(replayed, whole, strict=True):
            assert torch.equal(g1, g0) and torch.equal(c1, c0)


def test_replay_runs_the_stem_once_per_batch_not_once_per_layer():
    net, batches = Net(), [torch.rand(3, 2, 5, 5), torch.rand(2, 2, 5, 5)]
    calls = []
    net.stem.register_forward_hook(lambda *_: calls.append(1))
    replay = Replay(net, lambda: batches)
    for name in LAYERS[1:7]:
        gram(net, name, replay)
    # one whole forward of the first batch (the chain is called once?), then the chain's input of each batch
    assert len(calls) == 1 + len(batches)


def test_a_chain_the_forward_bypasses_is_not_replayed():
    net, batches = Net(direct=True), [torch.rand(3, 2, 5, 5)]
    replay = Replay(net, lambda: batches)
    gram(net, "blocks.1.0.dw", replay)
    assert replay.broken == {0}
    assert all(root is net for root, *_ in replay.feeds("blocks.1.0.dw"))


def test_a_layer_outside_every_chain_streams_the_batches():
    """No chain to cache: the batches are drawn as the layer's forwards run, never held as a list."""
    net = nn.ModuleDict({"fc": nn.Linear(2, 2)})
    net.forward = lambda x: net["fc"](x)  # type: ignore[method-assign]
    drawn = []

    def epoch():
        for batch in (torch.rand(3, 2), torch.rand(2, 2)):
            drawn.append(len(batch))
            yield batch

    replay = Replay(net, epoch)
    feeds = replay.feeds("fc")
    assert drawn == [] and replay.batches == []
    assert [len(x) for _, x, *_ in feeds] == [3, 2] and drawn == [3, 2]
    _, _, rows = gram(net, "fc", replay)
    assert rows == 5 and replay.batches == []
