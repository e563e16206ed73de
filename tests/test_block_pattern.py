"""``--pattern 1xB``: every method prunes whole aligned 1×B blocks, with the exact block-rounded count."""

from __future__ import annotations

import pytest
import torch

import fcpts
from fcpts.core.patterns import block_of
from fcpts.core.scoring import block_flags
from tests.helpers import FACTORY_TOTAL, load_factory
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


@pytest.mark.parametrize("init", ["pot", "wanda"])
def test_fcpts_started_from_a_one_shot_method_keeps_whole_blocks(init, tiny_net, calib_x):
    config = fcpts.FCPTSConfig(target_sparsity=0.6, pattern="1x3", init=init, iters=3, batch_size=16)
    result = fcpts.prune(tiny_net, calib_x, config)
    for name in ("conv1", "conv2"):
        w = prunable_weights(result.model)[name]
        blocks = (w.flatten(1).view(w.shape[0], -1, 3) == 0).sum(-1)
        assert ((blocks == 0) | (blocks == 3)).all(), name
    assert result.zeros == 3 * round(0.6 * 162 / 3)


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


# --- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["uniform-magnitude", "wanda", "sparsegpt", "pot", "fcpts"])
def test_cli_prune_with_a_1x4_pattern(method, run_cli, model_file, npz_file, tmp_path):
    out = tmp_path / "out"
    args = ["prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--pattern", "1x4"]
    args += ["--sparsity", "0.6", "--method", method, "--out", out, "--calib-samples", "32", "--batch-size", "16"]
    args += ["--no-progress", *(["--iters", "3"] if method == "fcpts" else [])]
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    # The conv (9 inputs) stays dense; the Linear (144 inputs, 360 blocks) loses round(0.6 · 360) = 216 blocks.
    assert f"global sparsity  {864 / FACTORY_TOTAL:.6f} (864 of {FACTORY_TOTAL} weights zero)" in stdout
    model = load_factory(model_file, out=out)
    assert int((model[0].weight == 0).sum()) == 0
    blocks = (model[4].weight.view(10, 36, 4) == 0).sum(-1)
    assert ((blocks == 0) | (blocks == 4)).all() and int((blocks == 4).sum()) == 216


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sparsity", "0.5", "--pattern", "1x"], "pattern must be N:M"),
        (["--sparsity", "0.5", "--pattern", "3x4"], "or 1xB with an integer B >= 2"),
        (["--pattern", "1x4"], "1xB needs --sparsity"),
        (["--sparsity", "0.5", "--pattern", "1x7"], "no prunable layer's input size is a multiple of 7"),
    ],
)
def test_cli_bad_block_patterns(flags, message, run_cli, model_file, npz_file, tmp_path):
    base = ["prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--out", tmp_path / "o"]
    code, _, stderr = run_cli(*base, "--method", "wanda", "--calib-samples", "16", "--no-progress", *flags)
    assert code == 2 and "fcpts: error:" in stderr and message in stderr, stderr
