"""Layer inputs replayed unit by unit (``core.replay``): the same Gram matrices as whole forwards, fewer forwards."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fcpts
from fcpts.core import chains as chains_module
from fcpts.core import replay as replay_module
from fcpts.core.activations import gram
from fcpts.core.replay import BoundUnit, Replay
from tests.core.test_chains import GLUES, ListNet, masked_batch


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


LIST_LAYERS = ["embed"] + [f"blocks.{j}.{name}" for j in range(3) for name in ("fc", "out")] + ["head"]


def test_a_list_chain_gives_the_whole_forwards_grams_bit_for_bit():
    """Blocks called in a loop with a mask and keywords, returning tuples: cached or not, the same inputs."""
    batches = [masked_batch(3, 5), masked_batch(2, 4)]
    orders = [LIST_LAYERS, LIST_LAYERS[:3] + LIST_LAYERS[5:] + LIST_LAYERS[3:5]]  # the second goes back a block
    for glue, order in [("chain", orders[0]), ("chain", orders[1])] + [(glue, LIST_LAYERS) for glue in GLUES]:
        replayed = _prune_in_order(ListNet(glue), batches, order, replayed=True)
        whole = _prune_in_order(ListNet(glue), batches, order, replayed=False)
        for (g1, c1), (g0, c0) in zip(replayed, whole, strict=True):
            assert torch.equal(g1, g0) and torch.equal(c1, c0), glue


def test_a_list_chain_runs_the_embedding_once_per_batch_and_each_block_once_to_move_on():
    net, batches = ListNet(), [masked_batch(3, 5), masked_batch(2, 4)]
    calls = {name: 0 for name in ("embed", "blocks.0", "blocks.1", "blocks.2")}
    for name in calls:
        net.get_submodule(name).register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    replay = Replay(net, lambda: batches)
    for name in LIST_LAYERS[1:7]:
        gram(net, name, replay)
    # One whole forward of the first batch (is the list a chain?), then the embedding of each batch;
    # a block runs whole only to move the cache on (its layers' own runs stop at them).
    assert calls == {"embed": 1 + 2, "blocks.0": 1 + 2, "blocks.1": 1 + 2, "blocks.2": 1}
    assert replay.broken == set()
    feeds = list(replay.feeds("blocks.2.fc"))
    assert all(isinstance(root, BoundUnit) and root.unit is net.blocks[2] for root, *_ in feeds)
    assert [x.shape[:2] for _, x, *_ in feeds] == [(3, 5), (2, 4)]


def test_a_list_whose_glue_is_not_identity_falls_back_to_whole_forwards():
    for glue in GLUES:
        net, batches = ListNet(glue), [masked_batch(3, 5)]
        replay = Replay(net, lambda b=batches: b)
        assert all(root is net for root, *_ in replay.feeds("blocks.1.fc")), glue
        assert replay.broken == {0}, glue


class Doubler(nn.Module):
    """Doubles its input in place before its two layers: a rerun on a cached input would double it again."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 3), nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x.mul_(2)))


def test_a_unit_that_changes_its_cached_input_in_place_falls_back_to_whole_forwards():
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 3), Doubler(), nn.Linear(3, 1))

    batches = [torch.rand(3, 2), torch.rand(2, 2)]
    order = ["0", "1.fc1", "1.fc2", "2"]
    replayed = _prune_in_order(net(), batches, order, replayed=True)
    whole = _prune_in_order(net(), batches, order, replayed=False)
    for (g1, c1), (g0, c0) in zip(replayed, whole, strict=True):
        assert torch.equal(g1, g0) and torch.equal(c1, c0)


class Branches(nn.Module):
    """A ModuleList of Sequentials, each on the same input (not a chain); each Sequential is one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(2, 4)
        self.branches = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return sum(branch(x) for branch in self.branches)


def test_a_broken_list_hands_over_to_the_chains_inside_its_members():
    net, batches = Branches(), [torch.rand(3, 2), torch.rand(2, 2)]
    replay = Replay(net, lambda: batches)
    assert [type(root).__name__ for root, *_ in replay.feeds("branches.1.2")] == ["Linear", "Linear"]
    assert replay.broken == {0} and [c.root for c in replay.chains] == ["branches", "branches.0", "branches.1"]
    order = ["stem", "branches.0.0", "branches.0.2", "branches.1.0", "branches.1.2"]
    replayed = _prune_in_order(Branches(), batches, order, replayed=True)
    whole = _prune_in_order(Branches(), batches, order, replayed=False)
    for (g1, c1), (g0, c0) in zip(replayed, whole, strict=True):
        assert torch.equal(g1, g0) and torch.equal(c1, c0)


def _tiny_bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A 3-block BERT with random weights, and 12 padded token sequences."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(1, 50, (12, 10))
    lengths = torch.randint(3, 11, (12,))
    mask = (torch.arange(10) < lengths[:, None]).long()
    return model, {"input_ids": ids * mask, "attention_mask": mask}


@pytest.mark.parametrize(
    "method, options",
    [("sparsegpt", {}), ("wanda", {"sequential": True}), ("pot", {})],
    ids=["sparsegpt", "sequential-wanda", "pot"],
)
def test_a_tiny_bert_prunes_the_same_with_and_without_its_layer_list_cached(monkeypatch, method, options):
    model, data = _tiny_bert()
    config = fcpts.make_config(method, target_sparsity=0.5, batch_size=4, **options)
    verified: list[tuple[bool, bool]] = []

    def spy(model: nn.Module, chain: chains_module.Chain, batch: object) -> bool:
        verified.append((chain.listed, chains_module.verify(model, chain, batch)))
        return verified[-1][1]

    monkeypatch.setattr(replay_module, "verify", spy)
    cached = fcpts.prune(model, data, config).model.state_dict()
    assert (True, True) in verified  # encoder.layer was replayed as a chain
    monkeypatch.setattr(chains_module, "_is_list", lambda module: False)
    verified.clear()
    whole = fcpts.prune(model, data, config).model.state_dict()
    assert not any(listed for listed, _ in verified)
    assert cached.keys() == whole.keys()
    for name, tensor in cached.items():
        assert torch.equal(tensor, whole[name]), name
