"""Issue 16, Hangs and lost results, and the fault-injection module of "Keep it true".

Kills at points of learning and of the final write (then resume or rerun; check bytes and
leftovers), a full filesystem (a small tmpfs when this user may mount one, else an injected
ENOSPC), ``--overwrite`` hazards, and a rank-0-only failure under torchrun with 2 processes.

Faults in a subprocess are injected by a small launcher script that patches a public third-party or
standard-library function (``safetensors.torch.save_file``, ``torch.save``, ``Path.rename``) and then
calls ``fcpts.cli.main``: fcpts itself is not touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from safetensors.torch import load_file

from tests.integration.blackbox import (
    CHECKPOINT,
    MODEL,
    REPORT,
    assert_one_line_error,
    cli,
    env,
    leftovers,
    prune_args,
    read_report,
    run_process,
    write_data,
    write_model,
)

LAUNCHER = textwrap.dedent(
    """
    import errno, os, pathlib, signal, sys

    fault = os.environ.get("FCPTS_TEST_FAULT", "")
    out = pathlib.Path(os.environ.get("FCPTS_TEST_OUT", "/nonexistent"))


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    if fault == "kill-in-save-file":  # the final write: half of model.safetensors, then SIGKILL
        import safetensors.torch

        def save_file(tensors, filename, metadata=None):
            pathlib.Path(filename).write_bytes(b"\\x00" * 100)
            die()

        safetensors.torch.save_file = save_file
    elif fault in ("kill-at-final-rename", "kill-between-renames"):
        real_rename, real_os_rename, real_replace = pathlib.Path.rename, os.rename, os.replace

        def check(src):
            if pathlib.Path(src).name.startswith(f".{out.name}.tmp-"):
                # between the renames: the old result moved away, the new one not yet in place
                if fault == "kill-at-final-rename" or not out.exists():
                    die()

        def rename(self, target):
            check(self)
            return real_rename(self, target)

        def os_rename(src, dst, *a, **kw):
            check(src)
            return real_os_rename(src, dst, *a, **kw)

        def os_replace(src, dst, *a, **kw):
            check(src)
            return real_replace(src, dst, *a, **kw)

        pathlib.Path.rename, os.rename, os.replace = rename, os_rename, os_replace
    elif fault == "enospc-checkpoint-rank0":  # only rank 0 writes checkpoints; its disk is full
        import torch

        real_save = torch.save

        def save(obj, f, *a, **kw):
            if os.environ.get("RANK", "0") == "0" and isinstance(obj, dict) and "step" in obj:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_save(obj, f, *a, **kw)

        torch.save = save
    elif fault:
        raise SystemExit(f"unknown fault {fault}")

    from fcpts.cli import main

    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    write_model(tmp_path)
    write_data(tmp_path / "data.npz")
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    (tmp_path / "runs").mkdir()
    return tmp_path


def launch(work: Path, fault: str, out: Path, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(work / "launcher.py"), *args]
    extra = {"FCPTS_TEST_FAULT": fault, "FCPTS_TEST_OUT": str(out)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env(), **extra}, timeout=timeout)
    return proc


def args_for(work: Path, out: Path, *extra: object, iters: int = 3) -> list[str]:
    return prune_args(work / "tiny_model.py", work / "data.npz", out, *extra, iters=iters)


def assert_complete_result(out: Path) -> None:
    assert sorted(p.name for p in out.iterdir()) == ["allocation.png", MODEL, REPORT]
    load_file(out / MODEL)
    read_report(out)


# --- kills during learning and during the final write ----------------------------------------------------

LEARN_ITERS = 120


def test_sigkill_at_a_random_point_of_learning_then_resume_gives_the_same_bytes(work):
    out, ckpt = work / "runs" / "out", work / "ckpt"
    args = args_for(work, out, "--checkpoint-every", 5, iters=LEARN_ITERS)
    killed = subprocess.Popen(
        [sys.executable, "-m", "fcpts", *args, "--checkpoint-dir", str(ckpt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not (ckpt / CHECKPOINT).exists():
            assert killed.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.005)
        time.sleep(random.Random(16).uniform(0.0, 0.5))  # somewhere later in learning, maybe mid-save
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()

    code, _, err = cli(*args_for(work, out, iters=LEARN_ITERS), "--resume", ckpt)
    assert code == 0, err
    reference = work / "runs" / "reference"
    code, _, err = cli(*args_for(work, reference, iters=LEARN_ITERS))
    assert code == 0, err
    assert (out / MODEL).read_bytes() == (reference / MODEL).read_bytes()
    assert read_report(out)["zeros"] == read_report(reference)["zeros"]
    assert leftovers(work / "runs") == [] and leftovers(ckpt) == []


@pytest.mark.parametrize("fault", ["kill-in-save-file", "kill-at-final-rename"])
def test_sigkill_during_the_final_write_then_rerun_leaves_nothing_behind(work, fault):
    out = work / "runs" / "out"
    killed = launch(work, fault, out, args_for(work, out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()
    rerun = launch(work, "", out, args_for(work, out))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_complete_result(out)
    assert leftovers(work / "runs") == [], "the killed run's temporary directory is still there"


def test_kill_between_the_overwrite_renames_keeps_a_result(work):
    out = work / "runs" / "out"
    code, _, err = cli(*args_for(work, out))
    assert code == 0, err
    old = (out / MODEL).read_bytes()
    killed = launch(work, "kill-between-renames", out, [*args_for(work, out, "--overwrite"), "--seed", "4"])
    assert killed.returncode in (0, -signal.SIGKILL), killed.stderr[-2000:]
    assert out.is_dir(), f"--out is gone after a kill during --overwrite; beside it: {leftovers(work / 'runs')}"
    assert_complete_result(out)
    if killed.returncode == -signal.SIGKILL:
        assert (out / MODEL).read_bytes() == old
    rerun = launch(work, "", out, [*args_for(work, out, "--overwrite"), "--seed", "4"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert_complete_result(out)
    assert leftovers(work / "runs") == []


# --- --overwrite of a directory that cannot or must not be replaced --------------------------------------


@pytest.fixture
def no_learning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Learning must not start: a refusal that belongs at the start comes before the optimizer."""

    def refuse(*args, **kwargs):
        raise AssertionError("pruning started before the output directory was checked")

    monkeypatch.setattr(torch.optim.Adam, "__init__", refuse)


def test_out_dot_overwrite_fails_at_the_start(work, monkeypatch, no_learning):
    cwd = work / "runs" / "here"
    cwd.mkdir()
    (cwd / "keep.txt").write_text("mine")
    monkeypatch.chdir(cwd)
    code, out, err = cli(*args_for(work, Path("."), "--overwrite"))
    assert_one_line_error(code, err, stdout=out)
    assert (cwd / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("held", ["model", "data", "weights"])
def test_overwrite_never_deletes_the_runs_own_inputs(work, no_learning, held):
    inputs = work / "runs" / "inputs"
    inputs.mkdir()
    model, data = write_model(inputs), write_data(inputs / "data.npz")
    args = prune_args(
        model if held == "model" else work / "tiny_model.py", data if held == "data" else work / "data.npz", inputs
    )
    if held == "weights":
        weights = inputs / "w.safetensors"
        import fcpts

        safetensors.torch.save_file(fcpts.load_model(f"{model}:factory").state_dict(), str(weights))
        args += ["--weights", str(weights)]
    before = sorted(p.name for p in inputs.iterdir())
    code, out, err = cli(*args, "--overwrite")
    assert_one_line_error(code, err, str(inputs), stdout=out)
    assert sorted(p.name for p in inputs.iterdir()) == before


# --- a full filesystem -----------------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``where`` if this user may; yields whether it is a real one."""
    where.mkdir()
    mounted = False
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, timeout=10
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(where)], capture_output=True, timeout=30)


def enospc_safetensors(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"\x00" * 64)
    raise safetensors.SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    )


def test_full_filesystem_at_the_final_write(work, monkeypatch):
    """model.safetensors (~6 KB) does not fit a 4 KiB tmpfs: one line, nothing left on it."""
    with small_filesystem(work / "small", "4k") as real:
        if not real:
            monkeypatch.setattr(safetensors.torch, "save_file", enospc_safetensors)
        out = work / "small" / "out"
        code, stdout, err = cli(*args_for(work, out))
        assert_one_line_error(
            code, err, f"cannot write output directory {out}", "No space left on device", stdout=stdout
        )
        assert list((work / "small").iterdir()) == []


def test_full_filesystem_at_a_checkpoint(work, monkeypatch):
    with small_filesystem(work / "small", "8k") as real:
        if not real:
            real_save = torch.save

            def save(obj, f, *a, **kw):
                if isinstance(obj, dict) and "step" in obj:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_save(obj, f, *a, **kw)

            monkeypatch.setattr(torch, "save", save)
        ckpt, out = work / "small" / "ckpt", work / "runs" / "out"
        args = [*args_for(work, out, iters=4), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2"]
        code, stdout, err = cli(*args)
        assert_one_line_error(code, err, "cannot write checkpoint", "No space left on device", stdout=stdout)
        assert not out.exists()
        assert not ckpt.exists() or list(ckpt.iterdir()) == []


# --- torchrun: a failure on rank 0 alone ends the job within seconds -------------------------------------

TORCHRUN_TIMEOUT = 60


def torchrun(work: Path, args: list[str], fault: str = "") -> subprocess.CompletedProcess:
    """2 gloo processes; a hang is killed (with its ranks) after TORCHRUN_TIMEOUT seconds and fails the test."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    target = [str(work / "launcher.py")] if fault else ["-m", "fcpts"]
    extra = {"FCPTS_TEST_FAULT": fault}
    return run_process([*launcher, *target, *args], timeout=TORCHRUN_TIMEOUT, extra_env=extra)


def assert_job_failed_with(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("fcpts: error: ")]
    assert errors, f"no fcpts error line: {result.stderr[-3000:]}"
    for line in errors:  # every rank that reports says what happened, not a follow-on gloo error
        for fragment in fragments:
            assert fragment in line, line


def test_torchrun_rank0_checkpoint_dir_is_a_file(work):
    blocker = work / "not-a-dir"
    blocker.write_text("a file")
    out = work / "runs" / "out"
    args = [*args_for(work, out, iters=6), "--checkpoint-dir", str(blocker), "--checkpoint-every", "2"]
    result = torchrun(work, args)
    assert_job_failed_with(result, str(blocker))
    assert not out.exists()


def test_torchrun_rank0_full_disk_at_a_checkpoint(work):
    out, ckpt = work / "runs" / "out", work / "ckpt"
    args = [*args_for(work, out, iters=6), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2"]
    result = torchrun(work, args, fault="enospc-checkpoint-rank0")
    assert_job_failed_with(result, "cannot write checkpoint", "No space left on device")
    assert not out.exists()
