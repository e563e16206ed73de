"""Export formats (dense, compressed fcpts-bitmask v1, onnx), fcpts.load, and the `fcpts export` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import fcpts
from fcpts.deploy.export import COMPRESSED_NAME, export, load
from fcpts.deploy.onnx import OnnxModule
from fcpts.errors import FcptsError
from tests.helpers import write_npz


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as integers (so -0.0 and +0.0 differ, and NaN payloads count)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()]) if t.is_floating_point() else t


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(bits(a[k]), bits(b[k])), k


def test_finalize_writes_positive_zeros() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.Linear(30, 5))
    result = fcpts.prune(net, torch.randn(32, 40), fcpts.make_config("global-magnitude", target_sparsity=0.8))
    zeros = torch.cat([m.weight[m.weight == 0] for m in result.model])
    assert zeros.numel() == round(0.8 * (1200 + 150)) and not torch.signbit(zeros).any()


@pytest.fixture(scope="module")
def pruned_refcnn() -> nn.Module:
    calib = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    config = fcpts.make_config("global-magnitude", target_sparsity=0.9)
    return fcpts.prune(fcpts.load_reference_model(), calib, config).model


def test_compressed_refcnn_at_0_9_is_under_a_fifth_of_dense(tmp_path: Path, pruned_refcnn: nn.Module) -> None:
    info = export(pruned_refcnn, tmp_path / "c", "compressed", model_spec="refcnn")
    size = (tmp_path / "c" / COMPRESSED_NAME).stat().st_size
    manifest = json.loads((tmp_path / "c" / "export.json").read_text())
    assert info.bytes == {COMPRESSED_NAME: size} == manifest["bytes"]
    assert manifest["dense_safetensors_bytes"] == info.dense_bytes
    dense = export(pruned_refcnn, tmp_path / "d", "dense", model_spec="refcnn")
    assert dense.bytes["model.safetensors"] == info.dense_bytes  # the reported dense size is the real one
    assert info.ratio < 0.2, info.summary()
    back = load(tmp_path / "c")  # rebuilt from the recorded spec
    assert_bit_identical(back.state_dict(), pruned_refcnn.state_dict())


def test_load_every_format_gives_the_same_outputs(tmp_path: Path, pruned_refcnn: nn.Module) -> None:
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # batch 3: not the export's 4
    with torch.no_grad():
        expected = pruned_refcnn(x)
    for fmt in ("dense", "compressed", "onnx"):
        info = export(pruned_refcnn, tmp_path / fmt, fmt, model_spec="refcnn")
        model = fcpts.load(tmp_path / fmt)
        with torch.no_grad():
            got = model(x)
        if fmt == "onnx":
            assert isinstance(model, OnnxModule)
            assert info.extra["onnx_check"]["max_abs_diff"] <= 1e-4
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        else:
            assert torch.equal(got, expected), fmt


def test_load_into_a_given_model_and_errors(tmp_path: Path) -> None:
    net = nn.Linear(30, 4)
    export(net, tmp_path / "e", "compressed")  # no spec recorded
    with pytest.raises(FcptsError, match="records no model spec"):
        load(tmp_path / "e")
    assert torch.equal(load(tmp_path / "e", model=nn.Linear(30, 4)).weight, net.weight)
    with pytest.raises(FcptsError, match="do not match"):
        load(tmp_path / "e", model=nn.Linear(31, 4))
    with pytest.raises(FcptsError, match="needs an example input"):
        export(net, tmp_path / "o", "onnx")
    assert not (tmp_path / "o").exists()  # atomic: nothing left behind
    with pytest.raises(FcptsError, match="unknown export format"):
        export(net, tmp_path / "x", "zip")
    with pytest.raises(FcptsError, match="holds no fcpts export"):
        load(tmp_path)


def test_cli_prune_export_load_end_to_end(tmp_path: Path, model_file: Path, run_cli) -> None:
    data = write_npz(tmp_path / "d.npz")
    runs = tmp_path / "run"
    code, _, err = run_cli(
        "prune", "--model", f"{model_file}:factory", "--data", f"npz:{data}", "--sparsity", "0.8",
        "--method", "global-magnitude", "--out", runs, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    pruned = fcpts.load(runs, trust_model_code=True)  # a prune output directory (our own file spec) loads as dense
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = pruned(x)
    assert fcpts.global_sparsity(pruned) == pytest.approx(round(0.8 * 1476) / 1476)
    for fmt in ("dense", "compressed", "onnx"):
        extra = ["--input-shape", "1,8,8"] if fmt == "onnx" else []
        code, out, err = run_cli("export", runs, "--format", fmt, "--out", tmp_path / fmt, "--trust-model-code", *extra)
        assert code == 0, err
        assert f"format {fmt}:" in out and "bytes" in out
        with torch.no_grad():
            got = fcpts.load(tmp_path / fmt, trust_model_code=True)(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    weights = runs / "model.safetensors"
    plain = ["eval", "--model", f"{model_file}:factory", "--weights", weights, "--data", f"npz:{data}"]
    code, out_plain, err = run_cli(*plain)
    assert code == 0, err
    code, out_sparse, err = run_cli(*plain, "--sparse-inference")
    assert code == 0, err
    top1 = [line for line in out_plain.splitlines() if line.startswith("top-1")]
    assert top1 and top1[0] in out_sparse.splitlines() and "of 2 layers sparse" in out_sparse
    code, _, err = run_cli("export", runs, "--format", "onnx", "--out", tmp_path / "o2", "--trust-model-code")
    assert code == 2 and "needs an example input" in err
    code, _, err = run_cli("export", runs, "--format", "dense", "--out", tmp_path / "dense")
    assert code == 2 and "already exists" in err
