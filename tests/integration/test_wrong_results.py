"""Issue 16, Wrong results with exit status 0: non-finite restored state or loss, tied weights counted twice."""

from __future__ import annotations

import math
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import fcpts
from tests.integration.blackbox import (
    CHECKPOINT,
    assert_one_line_error,
    cli,
    prune_args,
    read_report,
    write_data,
    write_model,
)

# --- non-finite values: a restored checkpoint, the loss -----------------------------------------------


def test_a_checkpoint_with_a_nan_weight_is_refused(tmp_path):
    model, data = write_model(tmp_path), write_data(tmp_path / "data.npz")
    ckpt = tmp_path / "ckpt"
    args = prune_args(model, data, tmp_path / "first", iters=6)
    code, _, err = cli(*args, "--checkpoint-dir", ckpt, "--checkpoint-every", 3)
    assert code == 0, err
    state = torch.load(ckpt / CHECKPOINT, weights_only=True)
    key = next(k for k in state["model"] if k.startswith("4.") and k.endswith("original"))
    state["model"][key][0, 0] = math.nan
    torch.save(state, ckpt / CHECKPOINT)
    out = tmp_path / "runs" / "out"
    code, stdout, err = cli(*prune_args(model, data, out, iters=6), "--resume", ckpt)
    assert_one_line_error(code, err, "non-finite", str(ckpt), stdout=stdout)
    assert not out.exists()


def test_a_nonfinite_loss_stops_the_run_without_writing(tmp_path):
    """A learning rate of 1e30 overflows the weights after one step: the loss is NaN/Inf from then on."""
    model, data = write_model(tmp_path), write_data(tmp_path / "data.npz")
    out = tmp_path / "runs" / "out"
    code, stdout, err = cli(*prune_args(model, data, out, "--lr-weight", "1e30", iters=6))
    assert_one_line_error(code, err, "non-finite", "loss", stdout=stdout)
    assert not out.exists() and not out.parent.exists()


def test_the_api_refuses_a_nonfinite_loss():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(fcpts.FcptsError, match="loss"):
        fcpts.prune(net, torch.randn(32, 8), fcpts.FCPTSConfig(0.5, iters=5, batch_size=16, lr_weight=1e30))


# --- tied weights: each distinct parameter counted once -----------------------------------------------


class Tied(nn.Module):
    """a and b share one 16×16 weight; c is 4×16. Distinct prunable weights: 256 + 64 = 320."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


DISTINCT = 256 + 64


@pytest.mark.parametrize("method", ["fcpts", "uniform-magnitude", "global-magnitude"])
def test_tied_weights_are_counted_once(method):
    options = {"iters": 4, "batch_size": 16} if method == "fcpts" else {}
    if method not in fcpts.METHODS:
        pytest.fail(f"method {method!r} not registered: {sorted(fcpts.METHODS)}")
    config = fcpts.make_config(method, target_sparsity=0.7, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fcpts.prune(Tied(), torch.randn(64, 16, generator=torch.Generator().manual_seed(1)), config)
    assert not [w for w in caught if "already had more" in str(w.message)], [str(w.message) for w in caught]
    model = result.model
    assert torch.equal(model.a.weight, model.b.weight)
    zeros = int((model.a.weight == 0).sum()) + int((model.c.weight == 0).sum())
    assert (result.numel, result.zeros, zeros) == (DISTINCT, round(0.7 * DISTINCT), round(0.7 * DISTINCT))
    assert result.global_sparsity == pytest.approx(round(0.7 * DISTINCT) / DISTINCT)


TIED_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)
            self.b.weight = self.a.weight

        def forward(self, x):
            x = x.flatten(1)
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


    def factory():
        return Tied()
    """
)


def test_the_report_counts_tied_weights_once(tmp_path: Path):
    model, data = write_model(tmp_path, TIED_SOURCE, name="tied.py"), write_data(tmp_path / "data.npz")
    out = tmp_path / "out"
    code, stdout, err = cli(*prune_args(model, data, out, iters=4))
    assert code == 0, err
    assert "already had more" not in err
    distinct = 64 * 64 + 10 * 64
    k = round(0.6 * distinct)
    report = read_report(out)
    assert (report["prunable_weights"], report["zeros"]) == (distinct, k)
    assert f"({k} of {distinct} weights zero)" in stdout
    net = fcpts.load(out, model=fcpts.load_model(f"{model}:factory"))
    assert int((net.a.weight == 0).sum()) + int((net.c.weight == 0).sum()) == k
