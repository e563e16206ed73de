"""The memory format a run holds a model in (``core.memory_format``), and evaluation in it."""

from __future__ import annotations

import torch
from torch import nn

from fcpts.core.evaluate import predict
from fcpts.core.memory_format import held_in, in_format, resolve_memory_format


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten())


def test_auto_is_channels_last_for_conv_models_only():
    assert resolve_memory_format(nn.Sequential(nn.Conv2d(1, 2, 3)), "auto") is torch.channels_last
    assert resolve_memory_format(nn.Linear(3, 3), "auto") is torch.contiguous_format
    assert resolve_memory_format(nn.Conv2d(1, 2, 3), "contiguous") is torch.contiguous_format
    assert in_format({"input_ids": torch.zeros(2, 3)}, torch.channels_last)["input_ids"].is_contiguous()


def test_held_in_keeps_the_parameters_and_restores_contiguous():
    net = _conv_net()
    before = list(net.parameters())
    with held_in(net, torch.channels_last):
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
        assert all(a is b for a, b in zip(before, net.parameters(), strict=True))
    assert all(p.is_contiguous() for p in net.parameters())


def test_a_nested_held_in_leaves_the_outer_format():
    net = _conv_net()
    with held_in(net, torch.channels_last):
        with held_in(net, torch.channels_last):
            pass
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and not net[0].weight.is_contiguous()
    assert net[0].weight.is_contiguous()


def test_predict_runs_channels_last_with_the_contiguous_outputs():
    net, x = _conv_net().eval(), torch.rand(5, 3, 6, 6)
    with torch.no_grad():
        expected = net(x)
    got = predict(net, x, batch_size=2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert all(p.is_contiguous() for p in net.parameters())
