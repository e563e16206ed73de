"""The cpu-block kernel (1×B block-CSR, fcpts.deploy.blocks and csrc/spmm.cpp): within 1e-5 relative
of dense on both paths (few rows, row lanes), the block detection, round trips, the torch fallback,
and the planner running a model pruned with ``--pattern 1xB``."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import fcpts
from fcpts.deploy import cpu_sparse
from fcpts.deploy.blocks import bcsr_arrays, block_size
from fcpts.deploy.cpu_sparse import CPUSparseConv2d, CPUSparseLinear
from fcpts.deploy.kernels import KERNELS
from fcpts.deploy.sparse_inference import ConvertConfig, convert_with_choices
from tests.deploy.test_cpu_kernel import assert_rel

pytestmark = pytest.mark.skipif(cpu_sparse.library() is None, reason="no C++ compiler: cpu-sparse not built")


def blocked_(module: nn.Module, sparsity: float, block: int, seed: int = 0) -> nn.Module:
    """Zero ``sparsity`` of the aligned 1×``block`` blocks of ``module.weight`` (flattened to (out, in)), at random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = module.weight.view(module.weight.shape[0], -1, block)  # (out, in/B, B)
        w.mul_((torch.rand(w.shape[:2], generator=gen) >= sparsity).unsqueeze(-1))
    return module


@pytest.mark.parametrize("block", [4, 8])
@pytest.mark.parametrize(("out_f", "in_f"), [(1536, 384), (384, 1536), (384, 384), (24, 40)])
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 15, 16, 33, 130])
def test_blocked_linear_matches_dense(block: int, out_f: int, in_f: int, rows: int) -> None:
    torch.manual_seed(rows)
    linear = blocked_(nn.Linear(in_f, out_f), 0.85, block, seed=rows)
    sparse = CPUSparseLinear(linear, block)
    x = torch.randn(rows, in_f)
    with torch.no_grad():
        assert_rel(sparse(x), linear(x))
        assert_rel(sparse(x.view(1, rows, in_f)), linear(x.view(1, rows, in_f)))


@pytest.mark.parametrize("block", [4, 8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_blocked_pointwise_conv_matches_dense(block: int, channels_last: bool) -> None:
    conv = blocked_(nn.Conv2d(32, 24, 1), 0.75, block)
    x = torch.randn(2, 32, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_rel(CPUSparseConv2d(conv, block)(x), conv(x))


def test_block_size_and_arrays() -> None:
    linear = blocked_(nn.Linear(16, 3), 0.5, 8, seed=1)
    assert block_size(linear.weight) == 8
    row_ptr, col, values = bcsr_arrays(linear.weight, 8)
    kept = (linear.weight.view(3, 2, 8) != 0).any(-1)
    assert row_ptr.tolist() == [0, *kept.sum(1).cumsum(0).tolist()]
    assert values.numel() == 8 * int(kept.sum()) and col.remainder(8).eq(0).all()
    unstructured = nn.Linear(64, 64)
    with torch.no_grad():
        unstructured.weight.mul_(torch.rand(64, 64) > 0.8)
    assert block_size(unstructured.weight) is None
    assert KERNELS["cpu-block"](unstructured) is None and KERNELS["cpu-block"](blocked_(nn.Linear(32, 4), 0.5, 4))


def test_round_trip_and_fallback() -> None:
    linear = blocked_(nn.Linear(32, 12), 0.5, 4)
    sparse = CPUSparseLinear(linear, 4)
    x = torch.randn(5, 32)
    with torch.no_grad():
        for other in (copy.deepcopy(sparse), pickle.loads(pickle.dumps(sparse))):
            assert_rel(other(x), linear(x))
        assert torch.equal(sparse.dense_weight(), linear.weight)
        assert_rel(sparse(x.double()), copy.deepcopy(linear).double()(x.double()))  # the torch CSR fallback
    y = sparse(x.requires_grad_())  # needs gradients: the fallback too
    assert y.requires_grad


def test_a_model_pruned_in_blocks_runs_the_block_kernel(calib_x) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 16))
    result = fcpts.prune(net, calib_x, fcpts.make_config("uniform-magnitude", target_sparsity=0.9, pattern="1x8"))
    model = result.model.eval()
    config = ConvertConfig(min_speedup=0.0, repeats=1, warmup=0, kernels=("cpu-block",), model_repeats=0)
    fast, choices = convert_with_choices(model, calib_x[:3], config)
    assert [c.chosen for c in choices] == ["cpu-block", "cpu-block"]
    assert [fast[i].block for i in (1, 3)] == [8, 8]
    with torch.no_grad():
        assert_rel(fast(calib_x), model(calib_x))
