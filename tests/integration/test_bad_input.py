"""Issue 16, Tracebacks: every bad input ends in one line ``fcpts: error: ...``, exit status 2, nothing written."""

from __future__ import annotations

import json
import math
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from safetensors.torch import load_file

import fcpts
from tests.integration.blackbox import (
    MODEL,
    REPORT,
    TOTAL,
    assert_one_line_error,
    cli,
    factory_state,
    fcpts_process,
    leftovers,
    prune_args,
    read_report,
    write_data,
    write_model,
)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    write_model(tmp_path)
    write_data(tmp_path / "data.npz")
    (tmp_path / "runs").mkdir()
    return tmp_path


def assert_nothing_written(work: Path) -> None:
    assert list((work / "runs").iterdir()) == []


# --- model files ----------------------------------------------------------------------------------

BAD_MODELS = {
    "factory-raises": ("def factory():\n    raise RuntimeError('boom in the factory')\n", "boom in the factory"),
    "syntax-error": ("def factory(:\n    pass\n", "SyntaxError"),
    "failing-import": ("import fcpts_no_such_module_xyz\n\ndef factory():\n    pass\n", "fcpts_no_such_module_xyz"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_file(work, case):
    source, fragment = BAD_MODELS[case]
    model = write_model(work, source, name="bad_model.py")
    code, out, err = cli(*prune_args(model, work / "data.npz", work / "runs" / "out"))
    assert_one_line_error(code, err, str(model), fragment, stdout=out)
    assert_nothing_written(work)


# --- npz data ---------------------------------------------------------------------------------------


def bad_npz(case: str, work: Path) -> Path:
    path = work / f"{case}.npz"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        good = write_data(work / "good.npz").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    elif case == "npy-named-npz":
        with path.open("wb") as f:
            np.save(f, np.zeros((4, 8, 8), dtype=np.uint8))
    elif case == "text-named-npz":
        path.write_text("this is a plain text file, not numpy data\n" * 5)
    else:
        raise AssertionError(case)
    return path


@pytest.mark.parametrize("case", ["empty", "truncated", "npy-named-npz", "text-named-npz"])
def test_bad_npz(work, case):
    data = bad_npz(case, work)
    code, out, err = cli(*prune_args(work / "tiny_model.py", data, work / "runs" / "out"))
    assert_one_line_error(code, err, str(data), stdout=out)
    assert "pickle" not in err.lower(), "not pickled data"
    assert_nothing_written(work)


# --- imagefolder data -------------------------------------------------------------------------------


def png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["not-an-image", "truncated-png"])
def test_bad_imagefolder(work, case):
    folder = work / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    (folder / "a" / "good.png").write_bytes(png_bytes())
    bad = folder / "b" / "bad.png"
    bad.write_bytes(b"not an image at all\n" * 10 if case == "not-an-image" else png_bytes()[:-30])
    args = prune_args(work / "tiny_model.py", work / "data.npz", work / "runs" / "out")
    args[args.index(f"npz:{work / 'data.npz'}")] = f"imagefolder:{folder}"
    code, out, err = cli(*args, "--channels", "1", "--image-size", "8")
    assert_one_line_error(code, err, str(bad), stdout=out)
    assert_nothing_written(work)


# --- the final write on a full disk: safetensors' own error type ------------------------------------------


def test_full_disk_while_writing_model_safetensors(work, monkeypatch):
    """safetensors raises ``SafetensorError`` (not an ``OSError``) for ENOSPC: still one line, nothing left."""

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 64)
        raise safetensors.SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = work / "runs" / "out"
    code, stdout, err = cli(*prune_args(work / "tiny_model.py", work / "data.npz", out))
    assert_one_line_error(code, err, f"cannot write output directory {out}", "No space left on device", stdout=stdout)
    assert_nothing_written(work)


# --- options ------------------------------------------------------------------------------------------


def test_lr_weight_zero_freezes_the_kept_weights(work):
    """The help says "0 freezes": a run, exit 0, every kept weight (and bias, norm) the dense model's."""
    out = work / "runs" / "out"
    # 10 steps: the masks freeze at step 9 (--freeze-masks-at 0.9), where the crash was.
    code, _, err = cli(*prune_args(work / "tiny_model.py", work / "data.npz", out, "--lr-weight", "0", iters=10))
    assert code == 0, err
    dense, pruned = factory_state(work / "tiny_model.py"), load_file(out / MODEL)
    for key, value in pruned.items():
        kept = value != 0
        assert torch.equal(value[kept], dense[key][kept]), key
    assert read_report(out)["zeros"] == round(0.6 * TOTAL)


ARGPARSE_ERRORS = {
    "float": ["prune", "--model", "m.py:factory", "--data", "npz:d.npz", "--out", "o", "--sparsity", "abc"],
    "int": ["prune", "--model", "m.py:factory", "--data", "npz:d.npz", "--out", "o", "--iters", "1.5"],
    "choice": ["export", "d", "--format", "zip", "--out", "o"],
    "missing": ["prune", "--model", "m.py:factory"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(ARGPARSE_ERRORS))
def test_argparse_errors_are_one_line(tmp_path, case):
    result = fcpts_process(*ARGPARSE_ERRORS[case], cwd=tmp_path)
    assert_one_line_error(result.returncode, result.stderr, stdout=result.stdout)
    assert "usage:" not in result.stderr


# --- export and load of a broken directory ------------------------------------------------------------


@pytest.fixture
def pruned(work: Path) -> Path:
    out = work / "runs" / "pruned"
    code, _, err = cli(*prune_args(work / "tiny_model.py", work / "data.npz", out))
    assert code == 0, err
    return out


BROKEN_JSON = {"invalid-json": "{not json", "a-list": "[1, 2]", "a-string": '"model"', "empty": ""}


@pytest.mark.parametrize("case", sorted(BROKEN_JSON))
def test_export_and_load_of_a_broken_report(pruned, tmp_path, case):
    (pruned / REPORT).write_text(BROKEN_JSON[case])
    exported = tmp_path / "exported"
    code, out, err = cli("export", pruned, "--format", "dense", "--out", exported)
    assert_one_line_error(code, err, str(pruned / REPORT), stdout=out)
    assert not exported.exists()
    with pytest.raises(fcpts.FcptsError, match=REPORT):
        fcpts.load(pruned)


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    out = tmp_path / "exported"
    fcpts.export(torch.nn.Linear(2, 2), out, "compressed")
    return out


BROKEN_MANIFESTS = {
    "invalid-json": "{not json",
    "a-list": "[]",
    "no-file": json.dumps({"format": "compressed", "model_spec": None}),
    "file-not-a-string": json.dumps({"format": "compressed", "file": 3}),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MANIFESTS))
def test_load_of_a_broken_export_json(exported, case):
    (exported / "export.json").write_text(BROKEN_MANIFESTS[case])
    with pytest.raises(fcpts.FcptsError, match=r"export\.json"):
        fcpts.load(exported, model=torch.nn.Linear(2, 2))


def test_load_of_a_truncated_onnx_file(tmp_path):
    directory = tmp_path / "onnx"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x03" + b"\xff" * 13)
    manifest = {"format": "onnx", "model_spec": None, "file": "model.onnx", "bytes": {}, "input_shape": [1, 8, 8]}
    (directory / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(fcpts.FcptsError, match=r"model\.onnx"):
        fcpts.load(directory)


# --- eval ----------------------------------------------------------------------------------------------

EVAL_MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Returns(nn.Module):
        def __init__(self, value):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            self.value = value

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return None if self.value == "none" else y.argmax(1, keepdim=True).expand(-1, 10)


    def returns_none():
        return Returns("none")


    def returns_int():
        return Returns("int")
    """
)


def test_eval_with_data_that_does_not_fit_the_model(work):
    data = write_data(work / "big.npz", size=16)
    code, out, err = cli("eval", "--model", f"{work / 'tiny_model.py'}:factory", "--data", f"npz:{data}")
    assert_one_line_error(code, err, stdout=out)


def test_labels_beyond_the_models_classes_are_one_line(work):
    """The tiny model has 10 outputs; a label 12 would index past them (a wrong top-1, or a crash)."""
    data = work / "labels.npz"
    np.savez(data, x=np.zeros((8, 8, 8), np.uint8), y=np.array([0, 1, 2, 3, 4, 5, 6, 12]))
    code, out, err = cli("eval", "--model", f"{work / 'tiny_model.py'}:factory", "--data", f"npz:{data}")
    assert_one_line_error(code, err, "labels run from 0 to 12 but the model has 10 classes", stdout=out)


@pytest.mark.parametrize("factory", ["returns_none", "returns_int"])
def test_eval_of_a_model_whose_output_is_not_logits(work, factory):
    model = write_model(work, EVAL_MODELS, name="eval_models.py")
    code, out, err = cli("eval", "--model", f"{model}:{factory}", "--data", f"npz:{work / 'data.npz'}")
    assert_one_line_error(code, err, stdout=out)


def test_eval_limit_must_be_positive(work):
    args = ["eval", "--model", f"{work / 'tiny_model.py'}:factory", "--data", f"npz:{work / 'data.npz'}"]
    code, out, err = cli(*args, "--limit", "-1")
    assert_one_line_error(code, err, "--limit", stdout=out)


def test_prune_eval_samples_must_be_positive(work):
    args = ["prune", "--model", f"{work / 'tiny_model.py'}:factory", "--data", f"npz:{work / 'data.npz'}"]
    code, out, err = cli(*args, "--sparsity", "0.5", "--out", work / "out", "--eval-samples", "0")
    assert_one_line_error(code, err, "--eval-samples must be ≥ 1, got 0", stdout=out)
    assert not (work / "out").exists()


def test_eval_warns_about_nonfinite_data(work):
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    x[3, 0, 2, 2] = math.nan
    np.savez(work / "nan.npz", x=x, y=np.zeros(16, dtype=np.int64))
    code, out, err = cli("eval", "--model", f"{work / 'tiny_model.py'}:factory", "--data", f"npz:{work / 'nan.npz'}")
    assert "non-finite" in err, (code, out, err)


def test_eval_warns_about_nonfinite_weights(work):
    state = factory_state(work / "tiny_model.py")
    state["4.weight"][0, 0] = math.inf
    safetensors.torch.save_file(state, str(work / "inf.safetensors"))
    args = ["eval", "--model", f"{work / 'tiny_model.py'}:factory", "--data", f"npz:{work / 'data.npz'}"]
    code, out, err = cli(*args, "--weights", work / "inf.safetensors")
    assert "non-finite" in err, (code, out, err)


def test_a_zip_that_is_not_npz_names_the_file(work):
    """A zip archive without ``.npy`` members (e.g. a renamed zip) is one line naming the file."""
    with zipfile.ZipFile(work / "zip.npz", "w") as z:
        z.writestr("readme.txt", "hello")
    code, out, err = cli(*prune_args(work / "tiny_model.py", work / "zip.npz", work / "runs" / "out"))
    assert_one_line_error(code, err, str(work / "zip.npz"), stdout=out)
    assert leftovers(work / "runs") == []
