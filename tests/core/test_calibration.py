"""Calibration inputs (tensors, datasets, loaders, dicts, one-shot iterators) and the resumable batch stream."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fcpts
from fcpts.core.calibration import Calibration
from tests.helpers import TINY_TOTAL

# --- calibration inputs ----------------------------------------------------------------------------


def test_calibration_accepts_dataset_dataloader_and_dicts(tiny_net, calib_x):
    labels = torch.zeros(len(calib_x), dtype=torch.long)
    k = round(0.5 * TINY_TOTAL)
    config = fcpts.FCPTSConfig(target_sparsity=0.5, iters=3, batch_size=16)
    for data in (TensorDataset(calib_x, labels), DataLoader(TensorDataset(calib_x, labels), batch_size=16)):
        assert fcpts.prune(tiny_net, data, config).zeros == k

    class KwargNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(pixel_values)}

    batches = [{"pixel_values": torch.randn(8, 4)} for _ in range(3)]
    result = fcpts.prune(KwargNet(), batches, fcpts.FCPTSConfig(target_sparsity=0.5, iters=4))
    assert result.zeros == 4


@contextmanager
def time_limit(seconds: int):
    def fail(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_one_shot_iterator_calibration_is_replayed():
    """A generator of batches is not re-iterable: its batches are kept, so 5 iterations over 3
    batches finish (a regression: the stream once looped forever on the exhausted generator)."""
    net = nn.Sequential(nn.Linear(8, 4))
    batches = (torch.randn(4, 8) for _ in range(3))
    with time_limit(5):
        result = fcpts.prune(net, batches, fcpts.FCPTSConfig(target_sparsity=0.5, iters=5))
    assert result.zeros == 16
    assert len(result.history) == 5


# --- the calibration stream ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tensor", "dataset", "small-tensor", "batches"])
def test_stream_restarts_at_any_position(kind, calib_x):
    data = {
        "tensor": calib_x[:50],  # 3 full batches of 16 per epoch, 2 rows dropped
        "dataset": TensorDataset(calib_x[:50], torch.zeros(50)),
        "small-tensor": calib_x[:10],  # smaller than one batch: every batch is the whole set
        "batches": [calib_x[i : i + 16] for i in range(0, 48, 16)],
    }[kind]
    cal = Calibration(data, batch_size=16, seed=5)
    full = [inputs for (inputs, _), _ in zip(cal.stream(), range(11), strict=False)]
    for start in (0, 1, 3, 7):
        tail = [inputs for (inputs, _), _ in zip(cal.stream(start_step=start), range(11 - start), strict=False)]
        assert all(torch.equal(a, b) for a, b in zip(full[start:], tail, strict=True))


def test_tensor_stream_order_is_one_permutation_per_epoch_from_the_seed(calib_x):
    """The order of a fresh run is unchanged by the replayable stream: permutation e is the e-th
    ``randperm`` of one generator seeded by the seed (so earlier benchmark results still hold)."""
    cal = Calibration(calib_x[:40], batch_size=16, seed=3)  # 2 full batches per epoch
    got = [index for (_, index), _ in zip(cal.stream(), range(6), strict=False)]
    gen = torch.Generator().manual_seed(3)
    want = []
    for _ in range(3):
        perm = torch.randperm(40, generator=gen)
        want += [perm[:16], perm[16:32]]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
