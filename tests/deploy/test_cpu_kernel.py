"""The cpu-sparse kernel (fcpts.deploy.cpu_sparse): exact-shape families within 1e-5 of dense, edge
cases, module round trips, the torch fallback, and the planner choosing it or falling back."""

from __future__ import annotations

import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn

from fcpts.deploy import cpu_sparse
from fcpts.deploy.cpu_sparse import CPUSparseConv2d, CPUSparseLinear
from fcpts.deploy.sparse_inference import KERNELS, ConvertConfig, convert, plan
from tests.helpers import sparsify_

pytestmark = pytest.mark.skipif(cpu_sparse.library() is None, reason="no C++ compiler: cpu-sparse not built")

ONLY = ConvertConfig(min_speedup=0.0, repeats=1, warmup=0, kernels=("cpu-sparse",), model_repeats=0)
NEVER = ConvertConfig(min_speedup=math.inf, repeats=1, warmup=0, kernels=("cpu-sparse",))


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Within ``tol`` relative to the output's scale (float32 sums in another order)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if not expected.numel():
        return
    scale = float(expected.abs().max()) or 1.0
    assert float((actual - expected).abs().max()) <= tol * scale


@pytest.mark.parametrize(("out_f", "in_f"), [(1536, 384), (384, 1536), (384, 384)])
@pytest.mark.parametrize("rows", [1, 7, 16, 33, 128, 1000])
def test_minilm_shapes_match_dense(out_f: int, in_f: int, rows: int) -> None:
    torch.manual_seed(rows)
    linear = sparsify_(nn.Linear(in_f, out_f), 0.9, seed=rows)
    sparse = CPUSparseLinear(linear)
    x = torch.randn(rows, in_f)
    with torch.no_grad():
        assert_rel(sparse(x), linear(x))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_odd_shapes_threads_and_batched_inputs(threads: int, sparsity: float) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        for bias in (True, False):
            linear = sparsify_(nn.Linear(37, 23, bias=bias), sparsity)
            sparse = CPUSparseLinear(linear)
            for x in (torch.randn(5, 37), torch.randn(37), torch.randn(2, 70, 37), torch.randn(0, 37)):
                with torch.no_grad():
                    assert_rel(sparse(x), linear(x))
    finally:
        torch.set_num_threads(before)


def test_empty_rows_and_all_zero_layers() -> None:
    linear = sparsify_(nn.Linear(50, 40), 0.8)
    with torch.no_grad():
        linear.weight[::3] = 0.0  # every third output row empty: bias only
    x = torch.randn(20, 50)
    with torch.no_grad():
        assert_rel(CPUSparseLinear(linear)(x), linear(x))
        linear.weight.zero_()
        zero = CPUSparseLinear(linear)
        assert zero.values.numel() == 0
        assert torch.equal(zero(x), linear.bias.expand(20, 40))
        zero.bias = None
        assert torch.equal(zero(x), torch.zeros(20, 40))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(
    ("c_in", "c_out", "size", "stride", "batch"),
    [(16, 96, 56, 1, 1), (96, 24, 28, 1, 2), (320, 1280, 7, 1, 3), (24, 40, 9, 2, 1), (8, 8, 1, 1, 4)],
)
def test_pointwise_convs_match_dense(
    c_in: int, c_out: int, size: int, stride: int, batch: int, channels_last: bool
) -> None:
    torch.manual_seed(c_in)
    conv = sparsify_(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=c_in % 2 == 0), 0.8)
    sparse = CPUSparseConv2d(conv)
    x = torch.randn(batch, c_in, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, ref = sparse(x), conv(x)
        assert_rel(out, ref)
        if size > 1:  # the dense conv's memory format (a 1×1 image is both)
            assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert_rel(sparse(x[0]), conv(x[0]))  # unbatched


def test_which_layers_it_takes() -> None:
    build = KERNELS["cpu-sparse"]
    assert isinstance(build(nn.Linear(8, 4)), CPUSparseLinear)
    assert isinstance(build(nn.Conv2d(8, 4, 1)), CPUSparseConv2d)
    assert build(nn.Conv2d(8, 8, 1, groups=2)) is None  # grouped / depthwise stay dense
    assert build(nn.Conv2d(8, 8, 3, groups=8)) is None
    assert build(nn.Conv2d(8, 4, 3)) is None  # a KxK conv: the csr kernel's (im2col)
    assert build(nn.Conv2d(8, 4, 1, padding=1)) is None
    assert build(nn.Linear(8, 4).double()) is None  # float32 only
    assert build(nn.MultiheadAttention(8, 2).out_proj) is None


def test_module_round_trips() -> None:
    torch.manual_seed(0)
    linear = sparsify_(nn.Linear(64, 48), 0.9)
    sparse = CPUSparseLinear(linear)
    x = torch.randn(9, 64)
    with torch.no_grad():
        expected = sparse(x)
        assert torch.equal(sparse.dense_weight(), linear.weight)
        assert torch.equal(copy.deepcopy(sparse)(x), expected)
        assert torch.equal(pickle.loads(pickle.dumps(sparse))(x), expected)
        state = sparse.state_dict()
        assert set(state) == {"row_ptr", "col_indices", "values", "bias"}
        assert state["row_ptr"].dtype == state["col_indices"].dtype == torch.int32
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        other = copy.deepcopy(sparse)
        for t in [*other.parameters(), *other.buffers()]:
            t.zero_()
        other.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(other(x), expected)


def test_torch_fallback_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    linear = sparsify_(nn.Linear(30, 20), 0.7)
    conv = sparsify_(nn.Conv2d(12, 10, 1), 0.7)
    sparse_linear, sparse_conv = CPUSparseLinear(linear), CPUSparseConv2d(conv)
    x, img = torch.randn(6, 30), torch.randn(2, 12, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        native = sparse_linear(x), sparse_conv(img)
    monkeypatch.setattr(cpu_sparse, "library", lambda: None)  # e.g. loaded where no compiler is
    with torch.no_grad():
        assert_rel(sparse_linear(x), native[0])
        assert_rel(sparse_conv(img), native[1])
    assert KERNELS["cpu-sparse"](nn.Linear(4, 4)) is None  # not offered without the native kernel
    xg = x.clone().requires_grad_(True)  # gradients: the torch path, with autograd
    sparse_linear(xg).sum().backward()
    assert xg.grad is not None and torch.allclose(xg.grad, linear.weight.sum(0).expand(6, 30), atol=1e-5)


def test_planner_chooses_it_or_falls_back() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        sparsify_(nn.Conv2d(8, 32, 1), 0.9), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Flatten()
    ).eval()
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    choices = {c.name: c for c in plan(net, x, ONLY)}
    assert choices["0"].chosen == "cpu-sparse" and choices["0"].kernel_s["cpu-sparse"] > 0
    assert choices["2"].chosen == "dense" and choices["2"].kernel_s == {}  # depthwise: dense
    fast = convert(net, x, ONLY)
    assert type(fast[0]) is CPUSparseConv2d and type(fast[2]) is nn.Conv2d
    with torch.no_grad():
        assert_rel(fast(x), net(x))
    kept = convert(net, x, NEVER)  # not fast enough: the layer stays dense
    assert type(kept[0]) is nn.Conv2d


def test_channels_last_through_a_converted_cnn() -> None:
    """Pointwise convs sparse, depthwise dense, BatchNorm folded: every activation stays channels_last
    and the forward pass copies nothing (no contiguous/clone/copy_ between layers)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    net = nn.Sequential(
        sparsify_(nn.Conv2d(8, 32, 1, bias=False), 0.8),
        nn.BatchNorm2d(32),
        nn.ReLU6(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),
        sparsify_(nn.Conv2d(32, 16, 1), 0.8),
    ).eval()
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    fast = convert(net, x, ONLY)
    assert [type(m).__name__ for m in fast] == ["CPUSparseConv2d", "Identity", "ReLU6", "Conv2d", "CPUSparseConv2d"]
    outputs: list[torch.Tensor] = []
    for module in fast:
        module.register_forward_hook(lambda _m, _a, out: outputs.append(out))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        y = fast(x)
    assert len(outputs) == 5 and all(o.is_contiguous(memory_format=torch.channels_last) for o in outputs)
    copies = {e.key for e in prof.key_averages()} & {"aten::contiguous", "aten::clone", "aten::copy_"}
    assert copies == set()
    with torch.no_grad():
        assert_rel(y, net(x))
