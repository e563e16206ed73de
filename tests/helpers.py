"""Shared test helpers: tiny models, a factory file, npz and IDX writers, the Fashion-MNIST location."""

from __future__ import annotations

import gzip
import struct
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fcpts.data.fashion_mnist import DEFAULT_FASHION_MNIST_DIR

FASHION_DIR = DEFAULT_FASHION_MNIST_DIR
FASHION_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
HAVE_FASHION = all((FASHION_DIR / f"{s}.gz").is_file() or (FASHION_DIR / s).is_file() for s in FASHION_STEMS)


def same_weights(a: nn.Module | Mapping[str, torch.Tensor], b: nn.Module | Mapping[str, torch.Tensor]) -> bool:
    """Same keys and every tensor equal bit for bit (so the masks are equal too); modules or state dicts."""
    a, b = (x.state_dict() if isinstance(x, nn.Module) else x for x in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class TinyNet(nn.Module):
    """conv(1→3, 3×3) → conv(3→5, 3×3) → Linear(80→7) → Linear(7→3) for 1×8×8 inputs.

    Prunable weights: 27 + 135 + 560 + 21 = 743 (prime), so round(s·N) is never trivial.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 5, 3)
        self.fc1 = nn.Linear(80, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


TINY_TOTAL = 27 + 135 + 560 + 21
TINY_LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def count_zeros(model: nn.Module, names: list[str] | None = None) -> dict[str, int]:
    """Zeros of the weight of every Conv/Linear (or of the named modules)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and (names is None or name in names):
            out[name] = int((m.weight == 0).sum())
    return out


# --- CLI helpers -------------------------------------------------------------------------------

TINY_MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


    def no_prunable():
        return nn.Sequential(nn.Flatten(), nn.ReLU())


    def not_a_module():
        return 42
    """
)

#: Prunable weights of ``factory``: conv 4·1·3·3 + linear 10·144.
FACTORY_TOTAL = 36 + 1440


def load_factory(path: Path, name: str = "factory", out: Path | None = None) -> nn.Module:
    """The factory file's model; with ``out``, holding the weights a prune wrote there."""
    from safetensors.torch import load_file

    from fcpts.models.specs import load_model

    model = load_model(f"{path}:{name}")
    if out is not None:
        model.load_state_dict(load_file(out / "model.safetensors"))
    return model


def write_npz(path: Path, n: int = 48, size: int = 8, seed: int = 0, labels: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.integers(0, 256, (n, size, size), dtype=np.uint8)}
    if labels:
        arrays["y"] = rng.integers(0, 10, n)
    np.savez(path, **arrays)
    return path


# --- IDX helpers and a Fashion-MNIST subset --------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C}
    codes.update({np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E})
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, codes[np.dtype(dtype)], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The stderr of an ``fcpts prune`` (refcnn, fashion-mnist) whose flags the parser refuses: exit 2, one line."""
    from fcpts.cli.commands import main

    with pytest.raises(SystemExit) as exc:
        main(["prune", "--model", "refcnn", "--data", "fashion-mnist", "--sparsity", "0.9", "--out", "o", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("fcpts: error: ") and err.count("\n") == 1
    return err


def sparsify_(module: nn.Module, sparsity: float, seed: int = 0) -> nn.Module:
    """Zero ``module.weight`` in place where a seeded uniform draw falls below ``sparsity``; returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight[torch.rand(module.weight.shape, generator=g) < sparsity] = 0.0
    return module
