"""fcpts.core.heap: glibc keeps freed memory for the run's duration, and its defaults come back after."""

from __future__ import annotations

import ctypes

import pytest
import torch

import fcpts
from fcpts.core import heap


class FakeLibc:
    """Records mallopt and malloc_trim calls as (name, param, value)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, int]] = []

    def mallopt(self, param: int, value: ctypes.c_int) -> int:
        self.calls.append(("mallopt", param, value.value))
        return 1

    def malloc_trim(self, pad: ctypes.c_size_t) -> int:
        self.calls.append(("malloc_trim", None, pad.value))
        return 1


RETAIN = [("mallopt", heap.M_TRIM_THRESHOLD, -1), ("mallopt", heap.M_MMAP_MAX, 0)]
RESTORE = [
    ("mallopt", heap.M_TRIM_THRESHOLD, 128 * 1024),
    ("mallopt", heap.M_MMAP_MAX, 65536),
    ("malloc_trim", None, 0),
]


def test_retained_within_the_block_and_defaults_after():
    libc = FakeLibc()
    with heap.retained_heap(libc=libc) as applied:
        assert applied and libc.calls == RETAIN
    assert libc.calls == RETAIN + RESTORE


def test_defaults_come_back_when_the_block_raises():
    libc = FakeLibc()
    with pytest.raises(RuntimeError, match=r"^boom$"), heap.retained_heap(libc=libc):
        raise RuntimeError("boom")
    assert libc.calls == RETAIN + RESTORE


def test_disabled_touches_nothing():
    libc = FakeLibc()
    with heap.retained_heap(False, libc=libc) as applied:
        assert not applied
    assert libc.calls == []


@pytest.mark.parametrize("variable", heap.USER_SETTINGS)
def test_a_user_chosen_allocator_is_left_alone(monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    assert heap.glibc() is None
    with heap.retained_heap() as applied:
        assert not applied


def test_real_glibc_round_trip(monkeypatch):
    """On this (glibc) machine the real mallopt accepts every setting, and memory is usable inside."""
    for variable in heap.USER_SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    libc = heap.glibc()
    if libc is None:
        pytest.skip("not glibc: retained_heap is a no-op here")
    with heap.retained_heap() as applied:
        assert applied
        assert float(torch.ones(1 << 24).sum()) == 2**24  # a 64 MiB block, served from the heap


@pytest.mark.parametrize("retain", [True, False])
def test_prune_applies_the_run_option(monkeypatch, retain):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    config = fcpts.make_config("uniform-magnitude", target_sparsity=0.5)
    result = fcpts.prune(net, torch.randn(32, 8), config, fcpts.RunOptions(retain_heap=retain))
    assert result.zeros == 96
    assert libc.calls == (RETAIN + RESTORE if retain else [])


def test_cli_flag_reaches_the_run(monkeypatch, run_cli, model_file, npz_file, tmp_path):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    args = ["prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--sparsity", "0.5",
            "--method", "uniform-magnitude", "--calib-samples", "32", "--no-progress"]  # fmt: skip
    code, _, err = run_cli(*args, "--out", tmp_path / "a")
    assert code == 0, err
    assert libc.calls == RETAIN + RESTORE
    libc.calls.clear()
    code, _, err = run_cli(*args, "--out", tmp_path / "b", "--no-retain-heap")
    assert code == 0, err
    assert libc.calls == []
