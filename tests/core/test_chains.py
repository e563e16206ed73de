"""Chains of a model (``core.chains``): Sequentials by construction, ModuleLists as a forward calls them."""

from __future__ import annotations

import torch
from torch import nn

from fcpts.core.chains import Chain, chains, verify


class Block(nn.Module):
    """A transformer-like block: ``(x, mask, *, scale)`` → ``(x', attention-like extra)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.fc(x)) * mask.unsqueeze(-1) * scale
        return x + self.out(h), h.sum()


class ListNet(nn.Module):
    """An embedding, a ModuleList of blocks called in a loop by ``forward``, a head; ``glue`` varies the loop.

    ``"chain"``: each block on the previous one's ``[0]``, same mask and keywords (a chain). The
    others are not: ``"scaled"`` (``x = block(...)[0] * 2``), ``"masks"`` (a new mask per block),
    ``"twice"`` (block 1 called twice), ``"reversed"`` (out of order), ``"in_place"`` (the output
    changed in place before the next block), ``"mask_in_place"`` (the mask likewise), ``"list_arg"`` (a
    mutable list among the arguments).
    """

    def __init__(self, glue: str = "chain", d: int = 4, blocks: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(2, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(blocks))
        self.head = nn.Linear(d, 3)
        self.glue = glue

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        order = list(self.blocks)
        if self.glue == "twice":
            order.insert(2, order[1])
        if self.glue == "reversed":
            order.reverse()
        scale = [1.0]  # one list for every block: the same object, but a mutable one
        for block in order:
            if self.glue == "masks":
                mask = mask.clone()
            if self.glue == "mask_in_place":
                mask.mul_(1)  # the same object, the same values, but changed in place: not provably the same
            if self.glue == "list_arg":
                x = block(x, mask, scale=scale)[0]  # type: ignore[arg-type]
                continue
            x = block(x, mask, scale=0.5)[0]
            if self.glue == "scaled":
                x = x * 2
            if self.glue == "in_place":
                x.mul_(2)
        return self.head(x.mean(1))


class ListBlock(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor, scale: list[float]) -> tuple[torch.Tensor]:
        return (x * scale[0],)


GLUES = ["scaled", "masks", "twice", "reversed", "in_place", "mask_in_place"]


def masked_batch(rows: int = 2, tokens: int = 5) -> dict[str, torch.Tensor]:
    return {"x": torch.rand(rows, tokens, 2), "mask": (torch.rand(rows, tokens) > 0.3).float()}


class Doubling(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # not Sequential's forward: not a chain
        return super().forward(x) * 2


def test_chains_flatten_nested_sequentials_and_skip_other_forwards():
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU())))
    assert chains(nn.ModuleDict({"blocks": net})) == [Chain("blocks", ["blocks.0", "blocks.1.0", "blocks.1.1.0"])]
    assert chains(nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU()))) == [Chain("", ["0", "1.0"])]
    assert chains(nn.ModuleDict({"d": Doubling(nn.ReLU(), nn.Sequential(nn.ReLU()))})) == [Chain("d.1", ["d.1.0"])]


def test_a_module_list_is_a_candidate_chain_and_its_members_are_its_units():
    assert chains(ListNet()) == [Chain("blocks", ["blocks.0", "blocks.1", "blocks.2"], listed=True)]
    assert chains(nn.ModuleList([nn.Sequential(nn.ReLU())]), "top") == [Chain("top", ["top.0"], listed=True)]
    assert chains(nn.ModuleDict({"empty": nn.ModuleList()})) == []


def test_a_list_called_in_a_loop_with_the_same_arguments_is_a_chain():
    assert verify(ListNet(), chains(ListNet())[0], masked_batch())


def test_a_list_whose_glue_is_not_identity_is_not_a_chain():
    for glue in GLUES:
        net = ListNet(glue)
        assert not verify(net, chains(net)[0], masked_batch()), glue


def test_a_mutable_argument_is_not_replayable():
    net = ListNet("list_arg")
    net.blocks = nn.ModuleList(ListBlock() for _ in range(3))
    assert not verify(net, chains(net)[0], masked_batch())


def test_a_list_that_the_forward_does_not_call_is_not_a_chain():
    net = nn.ModuleDict({"used": nn.Linear(2, 2), "spare": nn.ModuleList([nn.Linear(2, 2)])})
    net.forward = lambda x: net["used"](x)  # type: ignore[method-assign]
    assert not verify(net, chains(net)[0], torch.ones(1, 2))
