"""Sparse inference: CSR Linear / Conv2d equal the dense-with-zeros layers; the per-layer choice; saving."""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import pytest
import torch
from torch import nn

from fcpts.deploy.kernels import KERNELS, CSRConv2d, CSRLinear, is_2_of_4
from fcpts.deploy.sparse_inference import ConvertConfig, convert, convert_with_choices, plan

# take the CSR kernel whenever it applies (cpu-sparse has its own tests: tests/deploy/test_cpu_kernel.py)
ALWAYS = ConvertConfig(min_speedup=0.0, repeats=1, warmup=0, kernels=("csr",), model_repeats=0)
NEVER = ConvertConfig(min_speedup=math.inf, repeats=1, warmup=0)


def sparsify_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight[torch.rand(module.weight.shape, generator=g) < sparsity] = 0.0
    return module


def test_csr_linear_equals_dense_with_zeros() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        linear = sparsify_(nn.Linear(37, 23, bias=bias), 0.8)
        csr = CSRLinear(linear)
        assert int(csr.values.numel()) == int((linear.weight != 0).sum())
        assert torch.equal(csr.dense_weight(), linear.weight)
        for x in (torch.randn(5, 37), torch.randn(37), torch.randn(2, 4, 37)):  # batch, unbatched, (B, T, in)
            with torch.no_grad():
                torch.testing.assert_close(csr(x), linear(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": (3, 2), "stride": (1, 2), "padding": (2, 0), "dilation": (2, 1), "bias": False},
        {"kernel_size": 1},
    ],
)
def test_csr_conv2d_equals_dense_with_zeros(kwargs: dict) -> None:
    torch.manual_seed(0)
    conv = sparsify_(nn.Conv2d(3, 6, **kwargs), 0.7)
    sparse = CSRConv2d(conv)
    for x in (torch.randn(4, 3, 9, 11), torch.randn(3, 9, 11)):  # batched and unbatched
        with torch.no_grad():
            torch.testing.assert_close(sparse(x), conv(x), atol=1e-5, rtol=1e-5)


def test_layers_the_csr_kernel_does_not_take_stay_dense() -> None:
    csr = KERNELS["csr"]
    assert csr(nn.Conv2d(4, 4, 3, groups=2)) is None
    assert csr(nn.Conv2d(4, 4, 3, padding="same")) is None
    assert csr(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")) is None
    assert csr(nn.Conv1d(4, 4, 3)) is None
    assert csr(nn.MultiheadAttention(8, 2).out_proj) is None  # MHA reads out_proj.weight itself
    assert KERNELS["semi-structured"](nn.Linear(8, 8)) is None  # CPU: never offered


def test_is_2_of_4() -> None:
    assert is_2_of_4(torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0]]))
    assert not is_2_of_4(torch.tensor([[0.0, 1.0, 4.0, 2.0, 0.0, 0.0, 0.0, 0.0]]))
    assert not is_2_of_4(torch.zeros(2, 6))  # input dimension not a multiple of 4


class ConvMLP(nn.Module):
    """conv(stride 2) → grouped conv → flatten → Linear → Linear: one layer of each case."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc1 = nn.Linear(4 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.grouped(torch.relu(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture
def conv_mlp() -> ConvMLP:
    torch.manual_seed(0)
    net = ConvMLP().eval()
    for m in (net.conv, net.grouped, net.fc1, net.fc2):
        sparsify_(m, 0.75)
    return net


def test_convert_replaces_what_applies_and_keeps_outputs(conv_mlp: ConvMLP) -> None:
    x = torch.randn(6, 2, 10, 10)
    fast = convert(conv_mlp, x, ALWAYS)
    assert [type(m).__name__ for m in (fast.conv, fast.grouped, fast.fc1, fast.fc2)] == [
        "CSRConv2d", "Conv2d", "CSRLinear", "CSRLinear",
    ]  # fmt: skip
    assert type(conv_mlp.fc1) is nn.Linear  # the input model is untouched
    with torch.no_grad():
        torch.testing.assert_close(fast(x), conv_mlp(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast(x[:1]), conv_mlp(x[:1]), atol=1e-5, rtol=1e-5)  # another batch size
    kept = convert(conv_mlp, x, NEVER)
    assert all(type(a) is type(b) for a, b in zip(kept.modules(), conv_mlp.modules(), strict=True))


def test_plan_reports_each_layer(conv_mlp: ConvMLP) -> None:
    choices = plan(conv_mlp, torch.randn(2, 2, 10, 10), ALWAYS)
    by_name = {c.name: c for c in choices}
    assert list(by_name) == ["conv", "grouped", "fc1", "fc2"]
    assert by_name["grouped"].chosen == "dense" and by_name["grouped"].kernel_s == {}
    assert by_name["fc1"].chosen == "csr" and by_name["fc1"].dense_s > 0 and by_name["fc1"].kernel_s["csr"] > 0
    assert by_name["fc1"].sparsity == pytest.approx(float((conv_mlp.fc1.weight == 0).float().mean()))


def test_converted_model_saves_copies_and_reloads(conv_mlp: ConvMLP) -> None:
    x = torch.randn(3, 2, 10, 10)
    fast = convert(conv_mlp, x, ALWAYS)
    with torch.no_grad():
        expected = fast(x)
    state = fast.state_dict()
    assert {"fc1.crow_indices", "fc1.col_indices", "fc1.values", "fc1.bias"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = convert(conv_mlp, x, ALWAYS)
    with torch.no_grad():
        for t in [*other.parameters(), *other.buffers()]:
            t.zero_()
    other.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(fast).to(torch.float64).to(torch.float32)
    with torch.no_grad():
        assert torch.equal(other(x), expected)
        assert torch.equal(twin(x), expected)


def test_fully_converted_model_keeps_parameters_for_device_lookups() -> None:
    from fcpts.core.evaluate import predict

    torch.manual_seed(0)
    net = nn.Sequential(sparsify_(nn.Linear(12, 9), 0.7), nn.ReLU(), sparsify_(nn.Linear(9, 4, bias=False), 0.5))
    x = torch.randn(10, 12)
    fast = convert(net, x, ALWAYS)
    assert [type(m).__name__ for m in fast] == ["CSRLinear", "ReLU", "CSRLinear"]
    assert next(fast.parameters()).device.type == "cpu"  # predict() and friends find the device this way
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        torch.testing.assert_close(predict(fast, x, batch_size=3), net(x), atol=1e-5, rtol=1e-5)


def test_a_kernel_is_chosen_only_when_surely_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Median paired speedup ≥ min_speedup and ≥ min_win_fraction of the pairs won, else dense."""
    import fcpts.deploy.sparse_inference as si

    net = sparsify_(nn.Linear(16, 16), 0.9).eval()
    x = torch.randn(4, 16)
    config = ConvertConfig(repeats=5, warmup=0, kernels=("csr",))  # min_speedup 1.1, min_win_fraction 0.8
    cases = [
        ([0.5, 0.5, 0.5, 0.5, 2.0], "csr"),  # median 2×, 4 of 5 pairs won
        ([0.5, 0.5, 0.5, 2.0, 2.0], "dense"),  # median 2×, but only 3 of 5 pairs won: unsure
        ([0.95, 0.95, 0.95, 0.95, 0.95], "dense"),  # always faster, by 1.05× < 1.1×
    ]
    for kernel_times, chosen in cases:
        monkeypatch.setattr(si, "_paired_times", lambda *_a, k=kernel_times: ([1.0] * 5, k))
        (choice,) = plan(net, x, config)
        assert choice.chosen == chosen, kernel_times
        assert choice.dense_s == 1.0 and choice.kernel_speedup["csr"] == 1.0 / sorted(kernel_times)[2]


def test_paired_times_take_turns() -> None:
    from fcpts.deploy.sparse_inference import _paired_times

    calls: list[str] = []
    dense, kernel = _paired_times(lambda: calls.append("d"), lambda: calls.append("k"), repeats=4, warmup=1)
    assert "".join(calls) == "dk" + "dk" + "kd" + "dk" + "kd"  # warm-up, then the order alternates
    assert len(dense) == len(kernel) == 4 and all(t >= 0 for t in dense + kernel)


def test_csr_conv2d_keeps_channels_last() -> None:
    torch.manual_seed(0)
    conv = sparsify_(nn.Conv2d(4, 6, 3, padding=1), 0.7)
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = CSRConv2d(conv)(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, conv(x), atol=1e-5, rtol=1e-5)


def test_the_whole_model_is_kept_only_if_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    import fcpts.deploy.sparse_inference as si

    dense, converted, x = nn.Linear(4, 4), nn.Linear(4, 4), torch.randn(2, 4)
    config = ConvertConfig()  # 5 pairs, min_model_speedup 1.02
    for converted_times, kept in (([0.9] * 5, converted), ([1.0] * 5, dense), ([0.5, 0.5, 2, 2, 2], dense)):
        monkeypatch.setattr(si, "_paired_times", lambda *_a, t=converted_times: ([1.0] * 5, t))
        assert si.keep_if_faster(dense, converted, x, config) is kept
    assert si.keep_if_faster(dense, converted, x, ConvertConfig(model_repeats=0)) is converted


def test_convert_with_choices_reports_what_the_model_holds(conv_mlp: ConvMLP) -> None:
    x = torch.randn(2, 2, 10, 10)
    fast, choices = convert_with_choices(conv_mlp, x, ALWAYS)
    assert [c.chosen for c in choices] == ["csr", "dense", "csr", "csr"]  # conv, grouped (no kernel), fc1, fc2
    assert type(fast.fc1).__name__ == "CSRLinear"
    slower = dataclasses.replace(ALWAYS, model_repeats=1, min_model_speedup=math.inf)  # the whole-model check says no
    kept, choices = convert_with_choices(conv_mlp, x, slower)
    assert type(kept.fc1) is nn.Linear and [c.chosen for c in choices] == ["dense"] * 4


class SharedHead(nn.Module):
    """One Linear applied to two inputs of different row counts (as a detector head to each feature level)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)[:2] + self.head(x[:2] * 2)  # (2, 3): raises if the second call saw the first's input


def test_plan_leaves_a_shared_layers_inputs_alone() -> None:
    net, x = SharedHead(), torch.randn(5, 8)
    with torch.no_grad():
        expected = net(x)
    choices = plan(net, x, ALWAYS)  # timed on its first call's input, (5, 8)
    assert [(c.name, c.chosen) for c in choices] == [("head", "csr")]
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(convert(net, x, ALWAYS)(x), expected, rtol=1e-5, atol=1e-5)
