"""Data loading: the IDX reader, Fashion-MNIST, npz and imagefolder specs, model specs and weights."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import FACTORY_TOTAL, idx_bytes, load_factory, write_idx
from torch import nn

import fcpts
from fcpts.data.fashion_mnist import load_fashion_mnist, read_idx
from fcpts.data.images import load_imagefolder
from fcpts.data.npz import load_npz
from fcpts.data.specs import Split, load_data
from fcpts.models.specs import load_model, load_state_dict

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


def test_reference_model_is_accurate(fashion_subset):
    data = load_data("fashion-mnist", str(fashion_subset))
    model = fcpts.load_reference_model()
    assert not model.training
    assert fcpts.accuracy(model, data.evaluation.x, data.evaluation.y) > 0.85
    assert [n for n, _ in fcpts.prunable_layers(model)][-1] == "fc"
    assert len(fcpts.prunable_layers(model)) == 11


# --- npz / imagefolder / Split -------------------------------------------------------------------------


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


def test_imagefolder(tmp_path):
    from PIL import Image

    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 5), 40 * label + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}")
    assert data.calibration.x.shape == (4, 1, 6, 5)
    assert data.calibration.y.tolist() == [0, 0, 1, 1]
    assert float(data.calibration.x[3].max()) == pytest.approx(41 / 255)
    resized = load_imagefolder(tmp_path, image_size=4, channels=3)
    assert resized.calibration.x.shape == (4, 3, 4, 4)
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(fcpts.FcptsError, match="--image-size"):
        load_imagefolder(tmp_path)
    with pytest.raises(fcpts.FcptsError, match="no images"):
        load_imagefolder(tmp_path / "cat")  # no class sub-folders


def test_unknown_data_spec():
    for spec in ("mnist", "npz:", "imagefolder:", "cifar10:foo"):
        with pytest.raises(fcpts.FcptsError, match="unknown data spec"):
            load_data(spec)


def test_split_subset_is_seeded_and_without_replacement():
    split = Split(torch.arange(10).float().view(10, 1), torch.arange(10))
    a, b = split.subset(4, seed=1), split.subset(4, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert a.y.unique().numel() == 4
    assert torch.equal(a.x.view(-1).long(), a.y)  # x and y stay paired
    assert split.subset(None, 0) is split and split.subset(50, 0) is split


# --- model specs and weights -----------------------------------------------------------------------------


def test_factory_spec_and_torch_save_weights(model_file, tmp_path):
    model = load_factory(model_file)
    assert isinstance(model, nn.Sequential) and not model.training
    assert sum(m.weight.numel() for m in model if isinstance(m, (nn.Conv2d, nn.Linear))) == FACTORY_TOTAL
    state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    loaded = load_model(f"{model_file}:factory", tmp_path / "w.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    # {"state_dict": ...} checkpoints are unwrapped.
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    assert torch.equal(load_state_dict(tmp_path / "ckpt.pt")["4.weight"], state["4.weight"])


def test_weights_are_never_unpickled(model_file, tmp_path):
    torch.save(load_factory(model_file), tmp_path / "whole_module.pt")  # a pickled nn.Module
    with pytest.raises(fcpts.FcptsError, match="cannot read weights file"):
        load_model(f"{model_file}:factory", tmp_path / "whole_module.pt")


def test_model_spec_errors(model_file, tmp_path):
    with pytest.raises(fcpts.FcptsError, match="unknown model spec 'resnet50'"):
        load_model("resnet50")
    with pytest.raises(fcpts.FcptsError, match="model file not found"):
        load_model(f"{tmp_path / 'nope.py'}:factory")
    with pytest.raises(fcpts.FcptsError, match="no callable 'missing'"):
        load_model(f"{model_file}:missing")
    with pytest.raises(fcpts.FcptsError, match=r"not an nn\.Module"):
        load_model(f"{model_file}:not_a_module")
    with pytest.raises(fcpts.FcptsError, match="cannot import module"):
        load_model("no_such_package_xyz.models:factory")
    with pytest.raises(fcpts.FcptsError, match="weights file not found"):
        load_model(f"{model_file}:factory", tmp_path / "missing.safetensors")
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(fcpts.FcptsError, match="do not match model"):
        load_model(f"{model_file}:factory", tmp_path / "wrong.pt")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(fcpts.FcptsError, match="cannot read weights file"):
        load_model(f"{model_file}:factory", tmp_path / "corrupt.safetensors")


def test_package_module_spec():
    model = load_model("fcpts.models:ReferenceCNN")
    assert isinstance(model, fcpts.ReferenceCNN)
