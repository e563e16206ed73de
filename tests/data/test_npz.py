"""The npz: data spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fcpts
from fcpts.data.npz import load_npz


def test_npz_uint8_and_float(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    np.savez(tmp_path / "u8.npz", x=x, y=np.array([3, 1]))
    data = load_npz(tmp_path / "u8.npz")
    assert data.calibration.x.shape == (2, 1, 3, 4)
    assert torch.allclose(data.calibration.x[0, 0], torch.from_numpy(x[0]).float() / 255)
    assert data.calibration.y.tolist() == [3, 1] and data.calibration.y.dtype == torch.int64
    assert data.evaluation is data.calibration
    assert data.name == f"npz:{tmp_path / 'u8.npz'}"
    # N×H×W×C uint8 becomes N×C×H×W; float arrays are used as they are; y is optional.
    np.savez(tmp_path / "hwc.npz", x=np.zeros((5, 4, 6, 3), np.uint8))
    assert load_npz(tmp_path / "hwc.npz").calibration.x.shape == (5, 3, 4, 6)
    assert load_npz(tmp_path / "hwc.npz").calibration.y is None
    f = np.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(np.float64)
    np.savez(tmp_path / "f.npz", x=f)
    loaded = load_npz(tmp_path / "f.npz").calibration.x
    assert loaded.dtype == torch.float32 and torch.allclose(loaded, torch.from_numpy(f).float())


def test_npz_errors(tmp_path):
    with pytest.raises(fcpts.FcptsError, match="npz file not found"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(fcpts.FcptsError, match="no array named 'x'"):
        load_npz(tmp_path / "nox.npz")
    np.savez(tmp_path / "bady.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.zeros(3))
    with pytest.raises(fcpts.FcptsError, match="'y' must have shape"):
        load_npz(tmp_path / "bady.npz")
    np.savez(tmp_path / "int.npz", x=np.zeros((2, 3, 3), np.int32))
    with pytest.raises(fcpts.FcptsError, match="uint8 or float"):
        load_npz(tmp_path / "int.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(fcpts.FcptsError, match="cannot read"):
        load_npz(tmp_path / "junk.npz")
