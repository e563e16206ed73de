"""``--pattern 1xB``: every method prunes whole aligned 1×B blocks, with the exact block-rounded count."""

from __future__ import annotations

import pytest
import torch

import fcpts
from fcpts.core.patterns import block_of
from fcpts.core.scoring import block_flags
from tests.test_api import CASES, IDS, prunable_weights

#: TinyNet's input sizes: conv1 9, conv2 27, fc1 80, fc2 7. 1x4 and 1x8 divide fc1 only; 1x3 conv1 and conv2.
DIVISIBLE = {"1x4": {"fc1"}, "1x8": {"fc1"}, "1x3": {"conv1", "conv2"}}


@pytest.mark.parametrize("pattern", ["1x4", "1x3"])
@pytest.mark.parametrize(("method", "extra"), CASES, ids=IDS)
def test_every_method_prunes_whole_aligned_blocks(method, extra, pattern, tiny_net, calib_x):
    block = block_of(pattern)
    config = fcpts.make_config(method, target_sparsity=0.77, pattern=pattern, **extra)
    result = fcpts.prune(tiny_net, calib_x, config)
    weights = prunable_weights(result.model)
    divisible = 0
    for name, w in weights.items():
        if name not in DIVISIBLE[pattern]:
            assert int((w == 0).sum()) == 0, f"{name} should stay dense"
            continue
        divisible += w.numel()
        zeros_per_block = (w.flatten(1).view(w.shape[0], -1, block) == 0).sum(-1)
        assert ((zeros_per_block == 0) | (zeros_per_block == block)).all(), f"{name}: a block is split"
    # exactly B·round(0.77·N/B) zeros over the layers that divide: 1x4: 140 blocks → 108; 1x3: 54 → 42
    assert result.zeros == block * round(0.77 * divisible / block) == {"1x4": 432, "1x3": 126}[pattern]


def test_1x8_on_the_linear_layer(tiny_net, calib_x):
    result = fcpts.prune(tiny_net, calib_x, fcpts.make_config("wanda", target_sparsity=0.5, pattern="1x8"))
    w = prunable_weights(result.model)["fc1"]
    blocks = (w.view(7, 10, 8) == 0).sum(-1)
    assert ((blocks == 0) | (blocks == 8)).all() and int(blocks.sum()) == 8 * 35
    assert (blocks == 8).sum(1).tolist() == [5] * 7  # Wanda: per output row, 5 of its 10 blocks


def test_block_flags_exact_counts_and_zeros_first():
    scores = [torch.tensor([[0.5, 0.4, 9.0, 9.0, -1.0, -1.0], [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]])]
    flags = block_flags(scores, [0.5], 0.5, 2)[0]
    # the all-zero block (-1, -1) goes first, then the lowest sums: (0.5, 0.4) and (1.0, 1.0)
    assert flags.int().tolist() == [[1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0]]


@pytest.mark.parametrize("bad", ["1x", "1x1", "2x4", "1x4x2", "x4", "1xB"])
def test_a_bad_block_pattern_raises(bad):
    with pytest.raises(fcpts.FcptsError, match="1xB"):
        fcpts.make_config("wanda", target_sparsity=0.5, pattern=bad)


def test_a_block_no_layer_divides_by_raises(tiny_net, calib_x):
    with pytest.raises(fcpts.FcptsError, match="no prunable layer's input size is a multiple of 11"):
        fcpts.prune(tiny_net, calib_x, fcpts.make_config("wanda", target_sparsity=0.5, pattern="1x11"))


def test_a_block_pattern_takes_any_target():
    assert fcpts.make_config("pot", target_sparsity=0.9, pattern="1x4").pattern == "1x4"
