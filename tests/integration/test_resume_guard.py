"""Issue 16, Wrong results with exit status 0: ``--resume`` refuses a run it does not belong to.

A checkpoint is fingerprinted with what the run depends on (model spec, weights file hash, data spec,
calibration sample count, calibration data hash); any change is one line naming it. The checkpoint
options: ``--checkpoint-every 0`` with ``--checkpoint-dir`` is an error, ``--resume`` keeps the
checkpoint's own interval, a checkpoint past ``--iters`` is an error. A broken checkpoint (no config,
unreadable, another model) is one line too.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch

from tests.integration.blackbox import (
    CHECKPOINT,
    assert_one_line_error,
    cli,
    factory_state,
    prune_args,
    write_data,
    write_model,
)

ITERS, EVERY = 6, 3


@pytest.fixture
def run(tmp_path: Path) -> dict[str, Path]:
    """A finished 6-step run checkpointed every 3 steps (its checkpoint is at step 6), with --weights."""
    model = write_model(tmp_path)
    data = write_data(tmp_path / "data.npz")
    weights = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(factory_state(model), str(weights))
    ckpt = tmp_path / "ckpt"
    args = prune_args(model, data, tmp_path / "first", "--weights", weights, iters=ITERS)
    code, _, err = cli(*args, "--checkpoint-dir", ckpt, "--checkpoint-every", EVERY)
    assert code == 0, err
    assert (ckpt / CHECKPOINT).is_file()
    (tmp_path / "runs").mkdir()
    return {"model": model, "data": data, "weights": weights, "ckpt": ckpt, "root": tmp_path}


def resume_args(run: dict[str, Path], **changes: object) -> list[str]:
    model = changes.get("model", run["model"])
    data = changes.get("data", run["data"])
    args = prune_args(model, data, run["root"] / "runs" / "out", iters=changes.get("iters", ITERS))
    args[args.index("--calib-samples") + 1] = str(changes.get("calib_samples", 32))
    return [*args, "--weights", str(changes.get("weights", run["weights"])), "--resume", str(run["ckpt"])]


def test_an_unchanged_resume_still_works(run):
    code, _, err = cli(*resume_args(run))
    assert code == 0, err


def changed(case: str, run: dict[str, Path]) -> tuple[dict[str, object], str]:
    """The changed option of ``case`` and the word its error must hold."""
    root = run["root"]
    if case == "data-spec":
        return {"data": write_data(root / "other.npz", seed=1)}, "data"
    if case == "data-content":  # same path, other samples
        write_data(run["data"], seed=2)
        return {}, "data"
    if case == "calib-samples":
        return {"calib_samples": 40}, "calib"
    if case == "weights-file":
        state = factory_state(run["model"])
        state["4.weight"] = state["4.weight"] * 0.5
        safetensors.torch.save_file(state, str(root / "other.safetensors"))
        return {"weights": root / "other.safetensors"}, "weights"
    if case == "weights-content":  # same path, other bytes
        state = factory_state(run["model"])
        state["0.weight"] = -state["0.weight"]
        safetensors.torch.save_file(state, str(run["weights"]))
        return {}, "weights"
    if case == "model-spec":  # the same architecture under another file: the spec differs
        other = root / "copy"
        other.mkdir()
        return {"model": write_model(other)}, "model"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["data-spec", "data-content", "calib-samples", "weights-file", "weights-content", "model-spec"]
)
def test_resume_refuses_a_changed_input(run, case):
    options, word = changed(case, run)
    code, out, err = cli(*resume_args(run, **options))
    assert_one_line_error(code, err, str(run["ckpt"]), word, stdout=out)
    assert not (run["root"] / "runs" / "out").exists()


FROZEN_BN = """
import torch
from torch import nn


def frozen_bn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    net[1].requires_grad_(False)  # the same state dict, fewer trained parameters
    return net


def other():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(216, 10))
"""


@pytest.mark.parametrize("factory", ["frozen_bn", "other"])
def test_resume_with_another_model_is_one_line(run, factory):
    """Another model: today ``frozen_bn`` (same keys, fewer parameters) is a ValueError from the optimizer."""
    model = write_model(run["root"] / "runs", FROZEN_BN, name="changed.py")
    args = resume_args(run, model=f"{model}:{factory}")
    if factory == "other":
        i = args.index("--weights")
        del args[i : i + 2]  # the other architecture has no such weights
    code, out, err = cli(*args)
    assert_one_line_error(code, err, stdout=out)
    assert not (run["root"] / "runs" / "out").exists()


def edit_checkpoint(ckpt: Path, edit) -> None:
    path = ckpt / CHECKPOINT
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def test_checkpoint_without_its_config_is_one_line(run):
    edit_checkpoint(run["ckpt"], lambda s: s.pop("config"))
    code, out, err = cli(*resume_args(run))
    assert_one_line_error(code, err, str(run["ckpt"] / CHECKPOINT), stdout=out)


@pytest.mark.parametrize("case", ["garbage", "pickled-object"])
def test_unreadable_checkpoint_is_one_short_line(run, case):
    path = run["ckpt"] / CHECKPOINT
    if case == "garbage":
        path.write_bytes(b"PK\x03\x04 not a checkpoint" * 10)
    else:  # weights_only refuses it: torch's paragraphs of advice must not reach the user
        torch.save({"format": 1, "step": 3, "model": torch.nn.Linear(2, 2)}, path)
    code, out, err = cli(*resume_args(run))
    assert_one_line_error(code, err, f"cannot read checkpoint {path}", stdout=out)
    assert "weights_only" not in err and len(err) < 400, err


def test_a_checkpoint_past_iters_is_an_error(run):
    edit_checkpoint(run["ckpt"], lambda s: s.update(step=ITERS + 4))
    code, out, err = cli(*resume_args(run))
    assert_one_line_error(code, err, str(ITERS + 4), "--iters", stdout=out)
    assert not (run["root"] / "runs" / "out").exists()


def test_checkpoint_every_zero_with_a_checkpoint_dir_is_an_error(tmp_path):
    model, data = write_model(tmp_path), write_data(tmp_path / "data.npz")
    args = prune_args(model, data, tmp_path / "out", "--checkpoint-dir", tmp_path / "ckpt", "--checkpoint-every", 0)
    code, out, err = cli(*args)
    assert_one_line_error(code, err, "--checkpoint-every", stdout=out)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


def test_resume_keeps_the_checkpoints_interval(tmp_path, monkeypatch):
    """A 12-step run saving every 3 dies at its second save (step 6, disk full): its checkpoint is at 3.
    ``--resume`` without ``--checkpoint-every`` saves at 6, 9, 12 (not every 100 steps)."""
    model, data = write_model(tmp_path), write_data(tmp_path / "data.npz")
    ckpt, iters = tmp_path / "ckpt", 12
    args = prune_args(model, data, tmp_path / "out", iters=iters)
    real_save = torch.save
    saved: list[int] = []

    def failing_save(obj, f, *a, **kw):
        if isinstance(obj, dict) and "step" in obj and saved:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if isinstance(obj, dict) and "step" in obj:
            saved.append(obj["step"])
        return real_save(obj, f, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", failing_save)
        code, _, err = cli(*args, "--checkpoint-dir", ckpt, "--checkpoint-every", 3)
    assert code == 2 and "No space left on device" in err, err
    assert torch.load(ckpt / CHECKPOINT, weights_only=True)["step"] == 3

    steps: list[int] = []

    def recording_save(obj, f, *a, **kw):
        if isinstance(obj, dict) and "step" in obj:
            steps.append(obj["step"])
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", recording_save)
    code, _, err = cli(*args, "--resume", ckpt)
    assert code == 0, err
    assert steps == [6, 9, 12]
