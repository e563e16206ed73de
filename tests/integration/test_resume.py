"""Checkpoints and resume: a replayable calibration stream, atomic checkpoint files, a resumed run
equal bit for bit to an uninterrupted one (in process, and after a SIGKILL of the command line)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

import fcpts
from fcpts.method.checkpoint import CHECKPOINT_NAME
from tests.helpers import TinyNet, same_weights

# The batch objective (teacher cache, losses) lives in fcpts.method.objective.
learn_module = importlib.import_module("fcpts.method.objective")


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- resume in process -------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make learn() raise in the middle of ``step`` (0-based): after its forward, before its update."""
    calls = {"n": 0}
    original = learn_module.control_loss

    def control_loss(*args, **kwargs):
        if calls["n"] == step:
            raise Interrupt(f"interrupted at step {step}")
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(learn_module, "control_loss", control_loss)


@pytest.mark.parametrize(
    ("data_kind", "extra"),
    [("tensor", {}), ("dataset", {}), ("tensor", {"freeze_masks_at": 0.25})],  # frozen at step 6, saved at 10
    ids=["tensor", "dataset", "masks-frozen-before-the-checkpoint"],
)
def test_resume_after_an_interruption_equals_an_uninterrupted_run(monkeypatch, tmp_path, calib_x, data_kind, extra):
    data = calib_x if data_kind == "tensor" else TensorDataset(calib_x)
    torch.manual_seed(0)
    net = TinyNet()
    # 4 batches per epoch; no time budget, whose probe steps would also call the counted control loss
    options = {"target_sparsity": 0.7, "iters": 24, "batch_size": 16, "seed": 4, "time_budget_s": None, **extra}
    config = fcpts.FCPTSConfig(**options)
    reference = fcpts.prune(net, data, config)

    ckpt = tmp_path / "ckpt"
    with monkeypatch.context() as m:
        interrupt_at_step(m, 13)
        with pytest.raises(Interrupt):
            fcpts.prune(net, data, config, fcpts.RunOptions(checkpoint_dir=ckpt, checkpoint_every=5))
    state = torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 10 and len(state["history"]) == 10
    assert (state["frozen_masks"] is not None) == bool(extra)

    resumed = fcpts.prune(net, data, config, fcpts.RunOptions(checkpoint_dir=ckpt, checkpoint_every=5, resume=True))
    assert same_weights(resumed.model.state_dict(), reference.model.state_dict())
    assert resumed.history == reference.history
    assert resumed.zeros == reference.zeros == round(0.7 * resumed.numel)
    assert leftovers(ckpt) == []


def test_checkpoint_holds_the_training_state_and_loads_without_unpickling(tmp_path, tiny_net, calib_x):
    config = fcpts.FCPTSConfig(0.5, iters=6, batch_size=16)
    fcpts.prune(tiny_net, calib_x, config, fcpts.RunOptions(checkpoint_dir=tmp_path, checkpoint_every=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]  # no temporary file left
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # tensors and plain data only
    assert state["step"] == 6
    assert {"conv1.parametrizations.weight.original", "conv1.parametrizations.weight.0.log_threshold"} <= set(
        state["model"]
    )
    assert len(state["optimizer"]["state"]) == len(list(tiny_net.parameters())) + 4  # + 4 thresholds
    assert state["scheduler"]["last_epoch"] == 6
    assert state["rng"]["cpu"].dtype == torch.uint8
    # the method's settings only, no run options; the start and rate init "auto" and lr_weight None chose
    assert state["config"] == dataclasses.replace(config, init="erk", lr_weight=1e-3).to_dict()
    assert not {"device", "progress", "checkpoint_dir", "checkpoint_every", "resume"} & set(state["config"])
    assert [h["step"] for h in state["history"]] == list(range(6))


def test_a_failed_save_keeps_the_previous_checkpoint(monkeypatch, tmp_path, tiny_net, calib_x):
    config = fcpts.FCPTSConfig(0.5, iters=4, batch_size=16)
    options = fcpts.RunOptions(checkpoint_dir=tmp_path, checkpoint_every=2)
    original = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-written
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(fcpts.FcptsError, match=r"cannot write checkpoint .*: No space left on device"):
        fcpts.prune(tiny_net, calib_x, config, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 2


def test_checkpoint_misuse_gives_one_clear_error(tmp_path, tiny_net, calib_x):
    config = fcpts.FCPTSConfig(target_sparsity=0.5, iters=4, batch_size=16)
    Run = fcpts.RunOptions
    with pytest.raises(fcpts.FcptsError, match=r"^checkpoint_every and resume need a checkpoint_dir$"):
        Run(checkpoint_every=2)
    with pytest.raises(fcpts.FcptsError, match=r"^checkpoint_every and resume need a checkpoint_dir$"):
        Run(resume=True)
    with pytest.raises(fcpts.FcptsError, match=r"^checkpoint_every must be ≥ 1 \(omit it for the default\), got -1$"):
        Run(checkpoint_dir=tmp_path, checkpoint_every=-1)
    with pytest.raises(fcpts.FcptsError, match="no checkpoint to resume"):
        fcpts.prune(tiny_net, calib_x, config, Run(checkpoint_dir=tmp_path / "none", resume=True))

    fcpts.prune(tiny_net, calib_x, config, Run(checkpoint_dir=tmp_path, checkpoint_every=2))
    with pytest.raises(fcpts.FcptsError, match="already holds a checkpoint"):  # a fresh run never overwrites it
        fcpts.prune(tiny_net, calib_x, config, Run(checkpoint_dir=tmp_path, checkpoint_every=2))
    other = fcpts.FCPTSConfig(target_sparsity=0.5, iters=8, batch_size=16)
    with pytest.raises(fcpts.FcptsError, match=r"other options \(iters: 4 → 8\)"):
        fcpts.prune(tiny_net, calib_x, other, Run(checkpoint_dir=tmp_path, resume=True))
    # Run options are not part of the config: resuming with others (no more saves, progress on) is allowed.
    resumed = fcpts.prune(tiny_net, calib_x, config, Run(checkpoint_dir=tmp_path, resume=True, progress=True))
    assert resumed.zeros == round(0.5 * resumed.numel)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(fcpts.FcptsError, match="cannot read checkpoint"):
        fcpts.prune(tiny_net, calib_x, config, Run(checkpoint_dir=tmp_path, resume=True))


# --- the command line: flags, and a SIGKILL ----------------------------------------------------------


def prune_args(model_file: Path, npz_file: Path, iters: int) -> list[str]:
    return [
        "prune",
        "--model",
        f"{model_file}:factory",
        "--data",
        f"npz:{npz_file}",
        "--sparsity",
        "0.6",
        "--iters",
        str(iters),
        "--calib-samples",
        "48",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--no-progress",
    ]


def test_cli_checkpoint_flags(run_cli, model_file, npz_file, tmp_path):
    args = prune_args(model_file, npz_file, 6)
    code, _, err = run_cli(*args, "--out", tmp_path / "out", "--checkpoint-dir", tmp_path / "out" / "ckpt")
    assert code == 2 and "must be outside the output directory" in err
    code, _, err = run_cli(*args, "--out", tmp_path / "out", "--checkpoint-every", "2")
    assert code == 2 and "need a checkpoint_dir" in err
    magnitude = [a for a in args if a not in ("--iters", "6")]
    code, _, err = run_cli(*magnitude, "--out", tmp_path / "out", "--method", "uniform-magnitude", "--resume", tmp_path)
    assert code == 2 and "--resume does not apply to method 'uniform-magnitude'" in err
    assert not (tmp_path / "out").exists()

    # --checkpoint-dir alone saves every 100 steps: with 6 iterations, never.
    code, _, err = run_cli(*args, "--out", tmp_path / "a", "--checkpoint-dir", tmp_path / "c")
    assert code == 0, err
    assert not (tmp_path / "c" / CHECKPOINT_NAME).exists()
    code, _, err = run_cli(
        *args, "--out", tmp_path / "b", "--checkpoint-dir", tmp_path / "c", "--checkpoint-every", "3"
    )
    assert code == 0, err
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["run_options"]["checkpoint_every"] == 3 and "checkpoint_every" not in report["config"]
    assert torch.load(tmp_path / "c" / CHECKPOINT_NAME, weights_only=True)["step"] == 6
    # A finished run resumes from its last checkpoint without learning more: the same weights.
    code, _, err = run_cli(*args, "--out", tmp_path / "d", "--resume", tmp_path / "c")
    assert code == 0, err
    resumed, whole = (load_file(tmp_path / run / "model.safetensors") for run in ("d", "b"))
    assert same_weights(resumed, whole)


#: Enough steps that the run is still going long after its first checkpoint (step 5), when it is killed.
SIGKILL_ITERS = 600


def test_sigkill_then_resume_gives_the_uninterrupted_result(run_cli, model_file, npz_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fcpts", *prune_args(model_file, npz_file, SIGKILL_ITERS)]
    out, ckpt = tmp_path / "runs" / "out", tmp_path / "ckpt"
    killed = subprocess.Popen(
        [*cmd, "--out", str(out), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / CHECKPOINT_NAME).exists():  # replaced atomically: complete once it exists
            assert killed.poll() is None, f"the run ended before its first checkpoint: {killed.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.01)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
        killed.stderr.close()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    step = torch.load(ckpt / CHECKPOINT_NAME, weights_only=True)["step"]
    assert 5 <= step < SIGKILL_ITERS
    assert not out.exists() and not out.parent.exists()  # nothing of the output, not even a temporary

    # The resumed run in a fresh process; meanwhile the uninterrupted reference run, in this one.
    with subprocess.Popen(
        [*cmd, "--out", str(out), "--resume", str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as resumed:
        code, _, err = run_cli(*prune_args(model_file, npz_file, SIGKILL_ITERS), "--out", tmp_path / "reference")
        assert code == 0, err
        _, resumed_err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_err.decode()

    assert same_weights(load_file(out / "model.safetensors"), load_file(tmp_path / "reference" / "model.safetensors"))
    report = json.loads((out / "report.json").read_text())
    reference_report = json.loads((tmp_path / "reference" / "report.json").read_text())
    assert report["loss_history"] == reference_report["loss_history"]
    assert report["zeros"] == reference_report["zeros"]
    assert leftovers(out.parent) == []
