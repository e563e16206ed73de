"""Padding tokens (attention_mask == 0) are left out of the calibration statistics."""

from __future__ import annotations

import torch
from torch import nn

from fcpts.core.activations import gram, input_norms


class TokenNet(nn.Module):
    """Embedding(10, 4) → Linear(4→3) → ReLU → Linear(3→2), called as ``net(input_ids, attention_mask)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.embed(input_ids))))


def batches() -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """The same two sentences padded to one length (token 0), and each unpadded on its own."""
    ids = torch.tensor([[3, 1, 4, 0, 0], [1, 5, 9, 2, 6]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = [{"input_ids": ids, "attention_mask": mask}]
    alone = [
        {"input_ids": ids[:1, :3], "attention_mask": mask[:1, :3]},
        {"input_ids": ids[1:], "attention_mask": mask[1:]},
    ]
    return padded, alone


def test_norms_and_grams_ignore_padding_tokens():
    torch.manual_seed(0)
    net = TokenNet()
    padded, alone = batches()
    layers = {"fc1": net.fc1, "fc2": net.fc2}
    with_padding, without = input_norms(net, layers, padded), input_norms(net, layers, alone)
    for name in layers:
        torch.testing.assert_close(with_padding[name], without[name])
        g_pad, _, rows_pad = gram(net, name, padded)
        g_alone, _, rows_alone = gram(net, name, alone)
        assert rows_pad == rows_alone == 8
        torch.testing.assert_close(g_pad, g_alone)
    dense = TokenNet()
    _, c_pad, _ = gram(net, "fc2", padded, reference=dense)
    _, c_alone, _ = gram(net, "fc2", alone, reference=dense)
    torch.testing.assert_close(c_pad, c_alone)


def test_a_mask_of_ones_changes_nothing():
    torch.manual_seed(0)
    net = TokenNet()
    ids = torch.tensor([[3, 1, 4], [1, 5, 9]])
    full = input_norms(net, {"fc1": net.fc1}, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    x = net.embed(ids).detach().reshape(-1, 4)
    torch.testing.assert_close(full["fc1"], x.norm(dim=0))
