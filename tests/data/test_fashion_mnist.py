"""IDX reading and the fashion-mnist data spec."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

import fcpts
from fcpts.data.fashion_mnist import load_fashion_mnist, read_idx
from fcpts.data.specs import load_data
from tests.helpers import idx_bytes, write_idx

# --- IDX -------------------------------------------------------------------------------------------


def test_idx_header_written_by_hand(tmp_path):
    raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255])
    (tmp_path / "plain").write_bytes(raw)
    with gzip.open(tmp_path / "packed.gz", "wb") as f:
        f.write(raw)
    for name in ("plain", "packed.gz"):
        array = read_idx(tmp_path / name)
        assert array.dtype == np.uint8
        assert array.tolist() == [[1, 2, 3], [4, 5, 255]]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(24).reshape(2, 3, 4) - (0 if dtype == np.uint8 else 7)).astype(dtype)
    out = read_idx(write_idx(tmp_path / f"a-idx3{suffix}", array))
    assert out.shape == (2, 3, 4)
    assert out.dtype.isnative
    assert np.array_equal(out, array)


def test_idx_one_dimensional_int32_big_endian(tmp_path):
    raw = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (258).to_bytes(4, "big") + (-1).to_bytes(4, "big", signed=True)
    (tmp_path / "labels").write_bytes(raw)
    assert read_idx(tmp_path / "labels").tolist() == [258, -1]


@pytest.mark.parametrize(
    "raw",
    [
        bytes([1, 0, 0x08, 1, 0, 0, 0, 1, 9]),  # first byte not 0
        bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 9]),  # unknown type code
        bytes([0, 0]),  # too short
        b"\x89PNG\r\n\x1a\n",
    ],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_bad_magic(tmp_path, raw, suffix):
    path = tmp_path / f"bad{suffix}"
    if suffix:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    with pytest.raises(fcpts.FcptsError, match="bad magic number"):
        read_idx(path)


def test_idx_size_mismatch(tmp_path):
    raw = idx_bytes(np.zeros((2, 3), np.uint8))[:-1]
    (tmp_path / "short").write_bytes(raw)
    with pytest.raises(fcpts.FcptsError, match="file size disagrees"):
        read_idx(tmp_path / "short")


# --- Fashion-MNIST ------------------------------------------------------------------------------


def test_fashion_mnist_shapes():
    data = load_fashion_mnist()
    assert data.name == "fashion-mnist"
    cal, ev = data.calibration, data.evaluation
    assert cal.x.shape == (60000, 1, 28, 28) and cal.x.dtype == torch.float32
    assert ev.x.shape == (10000, 1, 28, 28) and ev.x.dtype == torch.float32
    for split in (cal, ev):
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split.x),)
        assert split.y.unique().tolist() == list(range(10))
    assert torch.bincount(ev.y).tolist() == [1000] * 10


def test_fashion_mnist_from_a_plain_idx_directory(fashion_subset, monkeypatch):
    data = load_data("fashion-mnist", str(fashion_subset))
    assert data.calibration.x.shape == (256, 1, 28, 28)
    assert data.evaluation.x.shape == (1000, 1, 28, 28)
    # The environment variable is the fallback when no directory is given.
    monkeypatch.setenv("FCPTS_FASHION_MNIST_DIR", str(fashion_subset))
    assert len(load_fashion_mnist().calibration) == 256


def test_fashion_mnist_missing_files_message(tmp_path, monkeypatch):
    monkeypatch.delenv("FCPTS_FASHION_MNIST_DIR", raising=False)
    with pytest.raises(fcpts.FcptsError) as info:
        load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message
    assert str(tmp_path) in message
    assert "t10k-labels-idx1-ubyte" in message
