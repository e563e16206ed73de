"""Hardened inputs and memory: one clear error and no partial output for every bad input.

Non-finite weights, calibration data and teacher outputs; weights files that are truncated,
garbage, not a state dict or do not match the model; an output location that is read-only, full
or cannot be renamed into. Then the memory side: the teacher-output cache has a size cap and
streamed calibration data is never materialised.
"""

from __future__ import annotations

import errno
import importlib
import math
import os
import pathlib
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

import fcpts
from fcpts import files
from fcpts.core.calibration import Calibration
from fcpts.core.checks import check_finite_inputs
from fcpts.files import check_output_dir
from tests.helpers import load_factory

# The batch objective (teacher cache, losses) lives in fcpts.method.objective.
learn_module = importlib.import_module("fcpts.method.objective")


def prune_args(model_file: Path, npz_file: Path, out: Path, *extra: object) -> list[object]:
    return [
        "prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--sparsity", "0.6",
        "--out", out, "--calib-samples", "32", "--batch-size", "16", "--no-progress", *extra,
    ]  # fmt: skip


def fcpts_args(model_file: Path, npz_file: Path, out: Path, *extra: object) -> list[object]:
    return prune_args(model_file, npz_file, out, "--iters", "3", *extra)


def leftovers(parent: Path, out: Path) -> list[str]:
    """Temporary directories ``atomic_directory`` left beside ``out`` (there must be none)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-")))


def assert_clean_failure(code: int, stdout: str, stderr: str, out: Path, message: str) -> None:
    """Exit 2, exactly one ``fcpts: error:`` line holding ``message``, no output and no temp dir."""
    assert code == 2, stderr
    assert stderr.startswith("fcpts: error: "), stderr
    assert stderr.count("fcpts: error:") == 1 and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    assert message in stderr, stderr
    assert stdout == ""
    assert not out.exists()
    assert leftovers(out.parent, out) == []


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    return runs


# --- non-finite weights, calibration data and teacher outputs ----------------------------------------


def factory_state(model_file: Path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_factory(model_file).state_dict().items()}


def nan_at(t: torch.Tensor, value: float, index: tuple[int, ...]) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


NONFINITE_WEIGHTS = {
    # case: (key, value, index, suffix, method, expected message)
    "nan-conv-weight": ("0.weight", math.nan, (0, 0, 1, 1), ".safetensors", "fcpts", "the weight of layer '0'"),
    "inf-linear-weight": ("4.weight", math.inf, (3, 7), ".pt", "fcpts", "the weight of layer '4'"),
    "neg-inf-magnitude": ("4.weight", -math.inf, (0, 0), ".pt", "uniform-magnitude", "the weight of layer '4'"),
    # A non-prunable parameter: the prunable weights are fine, the dense model's outputs are not.
    "nan-batchnorm-bias": ("1.bias", math.nan, (2,), ".safetensors", "fcpts", "the dense model's output"),
}


@pytest.mark.parametrize("case", sorted(NONFINITE_WEIGHTS))
def test_nonfinite_weights_give_one_error_naming_the_layer(run_cli, model_file, npz_file, parent, tmp_path, case):
    key, value, index, suffix, method, message = NONFINITE_WEIGHTS[case]
    state = factory_state(model_file)
    state[key] = nan_at(state[key], value, index)
    weights = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(state, str(weights))
    else:
        torch.save(state, weights)
    out = parent / "out"
    args = prune_args(model_file, npz_file, out, "--weights", weights, "--method", method)
    if method == "fcpts":
        args += ["--iters", "3"]
    code, stdout, stderr = run_cli(*args)
    assert_clean_failure(code, stdout, stderr, out, message)
    assert "contains non-finite values" in stderr


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_calibration_data_gives_one_error(run_cli, model_file, parent, tmp_path, value):
    x = np.random.default_rng(0).random((48, 1, 8, 8), dtype=np.float32)
    x[:, 0, 3, 4] = value  # in every sample, so any calibration subset holds it
    np.savez(tmp_path / "bad.npz", x=x)
    out = parent / "out"
    code, stdout, stderr = run_cli(*fcpts_args(model_file, tmp_path / "bad.npz", out))
    assert_clean_failure(code, stdout, stderr, out, "calibration data contains non-finite values")


def test_prepare_refuses_nonfinite_weights_before_touching_the_model():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight[0, 0] = math.nan
    with pytest.raises(fcpts.FcptsError, match=r"the weight of layer '1' contains non-finite values \(1 NaN"):
        fcpts.prepare(net, 0.5)
    assert not any(parametrize.is_parametrized(m) for m in net)  # nothing registered on layer 0 either


def test_prune_refuses_nonfinite_tensor_calibration(tiny_net, calib_x):
    bad = calib_x.clone()
    bad[5, 0, 2, 2] = -math.inf
    with pytest.raises(fcpts.FcptsError, match=r"calibration data contains non-finite values \(0 NaN and 1 Inf"):
        fcpts.prune(tiny_net, bad, fcpts.FCPTSConfig(target_sparsity=0.5, iters=2))


class Batches:
    """A re-iterable of batches made on the fly (not a list, not a one-shot generator)."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches
        self.made = 0  # batches handed out so far, over all passes

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.batches:
            self.made += 1
            yield batch


@pytest.mark.parametrize("method", ["fcpts", "uniform-magnitude"])
def test_streamed_batches_are_checked_as_they_come(bn_net, calib_x, method):
    """fcpts meets the bad batch while learning; the baseline while recalibrating BatchNorm."""
    batches = [calib_x[i : i + 16].clone() for i in range(0, 64, 16)]
    batches[2][3, 0, 0, 0] = math.nan  # the first batch (the shape check) is fine
    options = {"iters": 10} if method == "fcpts" else {}
    config = fcpts.make_config(method, target_sparsity=0.5, **options)
    with pytest.raises(fcpts.FcptsError, match=r"calibration batch 2 contains non-finite values \(1 NaN"):
        fcpts.prune(bn_net, Batches(batches), config)
    # A DataLoader over a Dataset holding a NaN: found in whichever batch it lands in.
    loader = DataLoader(TensorDataset(torch.cat(batches)), batch_size=16)
    with pytest.raises(fcpts.FcptsError, match=r"calibration batch 2 contains non-finite values"):
        fcpts.prune(bn_net, loader, config)


def test_dict_batches_name_the_key():
    batch = {"input_ids": torch.tensor([[1, 2]]), "pixel_values": torch.tensor([[0.0, math.inf]])}
    with pytest.raises(fcpts.FcptsError, match=r"batch 7 \(key 'pixel_values'\) contains non-finite values"):
        check_finite_inputs(batch, "batch 7")


class Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.exp()


@pytest.mark.parametrize("budget", [0, None])
def test_nonfinite_teacher_output_is_caught(monkeypatch, budget):
    """Finite weights and data, but an output that overflows (exp(400)): on the cached and per-batch path."""
    net = nn.Sequential(nn.Linear(4, 3), Exp())
    with torch.no_grad():
        net[0].weight.fill_(100.0)
    if budget is not None:
        monkeypatch.setattr(learn_module, "TEACHER_CACHE_BYTES", budget)
    with pytest.raises(fcpts.FcptsError, match="the dense model's output on the calibration data contains non-finite"):
        fcpts.prune(net, torch.ones(32, 4), fcpts.FCPTSConfig(target_sparsity=0.5, iters=2, batch_size=8))


# --- weights files ---------------------------------------------------------------------------------


def write_weights(case: str, model_file: Path, directory: Path) -> tuple[Path, str]:
    """A bad weights file for ``case`` and the message its error must hold."""
    state = factory_state(model_file)
    valid_st, valid_pt = directory / "valid.safetensors", directory / "valid.pt"
    safetensors.torch.save_file(state, str(valid_st))
    torch.save(state, valid_pt)
    if case == "truncated-safetensors":
        path = directory / "cut.safetensors"
        path.write_bytes(valid_st.read_bytes()[: valid_st.stat().st_size // 2])
        return path, "cannot read weights file PATH (truncated, corrupt or not a weights file): "
    if case == "garbage-safetensors":
        path = directory / "garbage.safetensors"
        path.write_bytes(b"\x00\xffnot safetensors at all" * 20)
        return path, "cannot read weights file PATH (truncated, corrupt or not a weights file): "
    if case == "empty-safetensors":
        path = directory / "empty.safetensors"
        path.write_bytes(b"")
        return path, "cannot read weights file PATH: the file is empty"
    if case == "truncated-torch-save":
        path = directory / "cut.pt"
        path.write_bytes(valid_pt.read_bytes()[: valid_pt.stat().st_size // 2])
        return path, "cannot read weights file PATH (truncated, corrupt or not a weights file): "
    if case == "garbage-torch-save":
        path = directory / "garbage.pt"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
        return path, "cannot read weights file PATH (truncated, corrupt or not a weights file): "
    if case == "empty-torch-save":
        path = directory / "empty.bin"
        path.write_bytes(b"")
        return path, "cannot read weights file PATH: the file is empty"
    if case == "list":
        path = directory / "list.pt"
        torch.save(list(state.values()), path)
        return path, "holds a list, not a state dict"
    if case == "pickled-module":
        # A whole pickled model (torch.save(model)): weights_only refuses it; we say so in one line.
        path = directory / "module.pt"
        torch.save(load_factory(model_file), path)
        return (
            path,
            "cannot read weights file PATH: it holds a pickled Python object (torch.nn.modules.container.Sequential)",
        )
    if case == "checkpoint-with-extras":
        path = directory / "ckpt.pt"
        torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, **state}, path)
        return path, "entries 'epoch' (int), 'optimizer' (dict) are not tensors"
    if case == "missing-keys":
        path = directory / "missing.safetensors"
        safetensors.torch.save_file({k: v for k, v in state.items() if k not in ("4.bias", "1.running_var")}, str(path))
        return path, f"do not match model '{model_file}:factory': missing keys: 1.running_var, 4.bias"
    if case == "unexpected-keys":
        path = directory / "extra.pt"
        torch.save({**state, "head.weight": torch.zeros(2, 2)}, path)
        return path, f"do not match model '{model_file}:factory': unexpected keys: head.weight"
    if case == "shape-mismatch":
        path = directory / "shape.pt"
        torch.save({**state, "4.weight": torch.zeros(10, 100)}, path)
        return path, "shape mismatch: 4.weight (file (10, 100), model (10, 144))"
    if case == "all-keys-missing":
        path = directory / "nothing.pt"
        torch.save({"other.weight": torch.zeros(1)}, path)
        return path, "missing keys: 0.weight, 0.bias, 1.weight, 1.bias, 1.running_mean and 4 more"
    raise AssertionError(case)


WEIGHTS_CASES = [
    "truncated-safetensors",
    "garbage-safetensors",
    "empty-safetensors",
    "truncated-torch-save",
    "garbage-torch-save",
    "empty-torch-save",
    "list",
    "pickled-module",
    "checkpoint-with-extras",
    "missing-keys",
    "unexpected-keys",
    "shape-mismatch",
    "all-keys-missing",
]


@pytest.mark.parametrize("case", WEIGHTS_CASES)
def test_bad_weights_file_gives_one_error_and_no_output(run_cli, model_file, npz_file, parent, tmp_path, case):
    weights, message = write_weights(case, model_file, tmp_path)
    message = message.replace("PATH", str(weights))
    out = parent / "out"
    code, stdout, stderr = run_cli(*fcpts_args(model_file, npz_file, out, "--weights", weights))
    assert_clean_failure(code, stdout, stderr, out, message)
    assert str(weights) in stderr
    assert len(stderr) < 500  # one line a person reads, not torch's paragraphs
    # eval reads weights the same way.
    code, stdout, stderr = run_cli(
        "eval", "--model", f"{model_file}:factory", "--weights", weights, "--data", f"npz:{npz_file}"
    )
    assert code == 2 and stderr.startswith("fcpts: error: ") and message in stderr and stdout == ""


def test_pickled_object_is_never_unpickled(model_file, tmp_path):
    """weights_only refuses a pickle whose loading would run code: the payload must not run."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"0.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(fcpts.FcptsError, match="holds a pickled Python object"):
        fcpts.load_model(f"{model_file}:factory", tmp_path / "evil.pt")
    assert not marker.exists()


# --- the output location: read-only, full, rename failing ---------------------------------------------


def make_read_only(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``directory`` read-only for this process.

    ``chmod 0o555`` does that for a normal user. Root ignores permission bits (the tests may run
    as root), so then creating anything in ``directory`` is made to fail as a read-only mount
    does: ``OSError(EROFS)``.
    """
    directory.chmod(0o555)
    try:
        (directory / ".probe").mkdir()
    except PermissionError:
        return  # the real thing; restored by the caller's finalizer
    (directory / ".probe").rmdir()
    directory.chmod(0o755)
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(suffix: str | None = None, prefix: str | None = None, dir: str | os.PathLike | None = None) -> str:
        if dir is not None and Path(dir).resolve() == directory.resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(directory))
        return real_mkdtemp(suffix, prefix, dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def test_read_only_output_location(run_cli, model_file, npz_file, parent, monkeypatch):
    out = parent / "out"
    try:
        make_read_only(parent, monkeypatch)
        code, stdout, stderr = run_cli(*fcpts_args(model_file, npz_file, out))
    finally:
        parent.chmod(0o755)
    assert_clean_failure(code, stdout, stderr, out, f"cannot write output directory {out}")
    assert "not writable" in stderr or "Read-only file system" in stderr
    assert list(parent.iterdir()) == []


def test_unwritable_location_fails_before_any_work(tmp_path, monkeypatch):
    """``os.access`` says no (a read-only mount, or chmod for a normal user): refused up front."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    expected = f"cannot write output directory {tmp_path}/a/b: {tmp_path} is not writable"
    with pytest.raises(fcpts.FcptsError, match=re.escape(expected)):
        check_output_dir(tmp_path / "a" / "b", overwrite=False)


def disk_full_save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: object = None) -> None:
    """``safetensors.torch.save_file`` on a full disk: half a file, then ENOSPC."""
    Path(filename).write_bytes(b"\x00" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def test_full_disk_while_writing(run_cli, model_file, npz_file, parent, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_save_file)
    out = parent / "out"
    code, stdout, stderr = run_cli(*fcpts_args(model_file, npz_file, out))
    assert_clean_failure(code, stdout, stderr, out, f"cannot write output directory {out}: No space left on device")
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("existing", [False, True])
def test_rename_into_place_fails(run_cli, model_file, npz_file, parent, monkeypatch, existing):
    """The last step (renaming the finished temp dir to ``out``) fails: nothing new, the old result kept."""
    out = parent / "out"
    if existing:
        out.mkdir()
        (out / "report.json").write_text("old report")
    real_rename = pathlib.Path.rename

    def rename(self: Path, target: str | os.PathLike) -> Path:
        if self.name.startswith(".out.tmp-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self), None, str(target))
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    # The atomic exchange (renameat2) fails the same way on a read-only file system.
    monkeypatch.setattr(
        files, "_exchange", lambda a, b: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system"))
    )
    code, stdout, stderr = run_cli(*fcpts_args(model_file, npz_file, out, *(["--overwrite"] if existing else [])))
    assert code == 2 and stderr.startswith(f"fcpts: error: cannot write output directory {out}: Read-only file system")
    assert stdout == "" and leftovers(parent, out) == []
    if existing:
        assert [p.name for p in out.iterdir()] == ["report.json"]
        assert (out / "report.json").read_text() == "old report"
    else:
        assert not out.exists()


# --- memory: the teacher-output cache is capped, streamed data is never held whole ----------------------


class CountingTeacher(nn.Module):
    """Wraps the teacher; counts its forward calls and the rows it was run on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += len(x)
        return self.inner(x)


def run_learn(net: nn.Module, data: object, iters: int) -> tuple[CountingTeacher, list[dict[str, float]]]:
    import copy

    teacher = CountingTeacher(copy.deepcopy(net))
    # No time budget: its probe steps would add teacher calls to the ones counted here.
    config = fcpts.FCPTSConfig(target_sparsity=0.5, iters=iters, batch_size=16, time_budget_s=None)
    prepared = fcpts.prepare(net, 0.5)
    history = fcpts.learn(prepared, teacher, Calibration(data, batch_size=16, seed=0), config)
    return teacher, history


def test_teacher_outputs_cached_within_budget(tiny_net, calib_x):
    teacher, _ = run_learn(tiny_net, calib_x, iters=7)
    # One probe sample for the output size, then one pass over the 64 rows; nothing per step.
    assert (teacher.calls, teacher.rows) == (1 + 64 // 16, 1 + 64)


def test_teacher_outputs_streamed_over_budget(tiny_net, calib_x, monkeypatch):
    """64 samples × 3 float32 outputs = 768 bytes: a 700-byte budget forces the per-batch path."""
    import copy

    _, cached_history = run_learn(copy.deepcopy(tiny_net), calib_x, iters=7)
    monkeypatch.setattr(learn_module, "TEACHER_CACHE_BYTES", 700)
    teacher, history = run_learn(tiny_net, calib_x, iters=7)
    assert (teacher.calls, teacher.rows) == (1 + 7, 1 + 7 * 16)  # the probe, then one batch per step
    # Same batches, same targets: the two paths learn the same thing.
    assert history[0]["loss"] == pytest.approx(cached_history[0]["loss"], rel=1e-5)


def test_iterable_calibration_is_streamed_batch_by_batch(tiny_net, calib_x):
    source = Batches([calib_x[i : i + 4] for i in range(0, 64, 4)])  # 16 batches
    teacher, _ = run_learn(tiny_net, source, iters=3)
    # The emptiness probe takes one batch, then one per step: never the whole 16 at once.
    assert source.made == 1 + 3
    assert (teacher.calls, teacher.rows) == (3, 3 * 4)
    loader = DataLoader(TensorDataset(calib_x), batch_size=8)
    assert Calibration(loader).source is loader  # kept as the loader, not turned into a list
