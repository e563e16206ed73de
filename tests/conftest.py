"""Shared fixtures: tiny models, calibration data, a factory file, npz data, a Fashion-MNIST subset.

Plain helpers (TinyNet, writers, constants) live in :mod:`tests.helpers`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from fcpts.data.fashion_mnist import read_idx
from tests.helpers import (
    FASHION_DIR,
    FASHION_STEMS,
    HAVE_FASHION,
    TINY_MODEL_SOURCE,
    TinyNet,
    write_idx,
    write_npz,
)

# The test machine has 2 cores shared with other work: two intra-op threads oversubscribe them and
# make a ResNet backward pass ~25x slower. One thread keeps the suite fast; subprocesses inherit it.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def bn_net() -> nn.Module:
    """conv(1→4) → BatchNorm2d(4) → ReLU → Linear(144→3), with non-trivial running statistics."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.5, -0.25, 1.0, 2.0]))
        net[1].running_var.copy_(torch.tensor([2.0, 0.5, 1.5, 3.0]))
        net[1].num_batches_tracked.fill_(7)
    return net.eval()


@pytest.fixture
def calib_x() -> torch.Tensor:
    """64 calibration images 1×8×8 (fixed)."""
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(123))


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_model.py"
    path.write_text(TINY_MODEL_SOURCE)
    return path


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "data.npz")


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``run_cli(*args)`` → (exit code, stdout, stderr) of ``fcpts.cli.main``."""
    from fcpts.cli.commands import main

    def run(*args: object) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def fashion_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Fashion-MNIST directory with the first 256 training and 1000 test images of the real data.

    Plain (not gzipped) IDX files, so the loader's non-gz path is used; evaluating the reference
    CNN on 1000 images keeps the CLI runs fast.
    """
    # No skip: the README's install command and CI install the data; a missing dataset must fail.
    assert HAVE_FASHION, "Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)"
    out = tmp_path_factory.mktemp("fashion-subset")
    sizes = {"train": 256, "t10k": 1000}
    for stem in FASHION_STEMS:
        src = FASHION_DIR / f"{stem}.gz"
        array = read_idx(src if src.is_file() else FASHION_DIR / stem)
        write_idx(out / stem, array[: sizes[stem.split("-")[0]]])
    return out
