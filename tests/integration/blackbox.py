"""Helpers for the black-box hardening tests (issue 16): only the CLI, the public API and files on disk.

Nothing here imports a private fcpts module: the package layout is about to change, and these
tests must keep holding across it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: The on-disk names the CLI documents (not imported: they are part of the stable file format).
CHECKPOINT = "checkpoint.pt"
MODEL = "model.safetensors"
REPORT = "report.json"

MODEL_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


    def other():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(216, 10))
    """
)
#: Prunable weights of ``factory``: conv 4·1·3·3 + linear 10·144.
TOTAL = 36 + 1440


def write_model(directory: Path, source: str = MODEL_SOURCE, name: str = "tiny_model.py") -> Path:
    path = directory / name
    path.write_text(source)
    return path


def write_data(path: Path, n: int = 48, size: int = 8, seed: int = 0, labels: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.integers(0, 256, (n, size, size), dtype=np.uint8)}
    if labels:
        arrays["y"] = rng.integers(0, 10, n)
    np.savez(path, **arrays)
    return path


def prune_args(model: Path | str, data: Path, out: Path, *extra: object, iters: int = 3) -> list[str]:
    spec = model if isinstance(model, str) else f"{model}:factory"
    args = [
        *("prune", "--model", spec, "--data", f"npz:{data}", "--sparsity", "0.6", "--out", out),
        *("--calib-samples", "32", "--batch-size", "16", "--seed", "3", "--no-progress", "--iters", iters),
        *extra,
    ]
    return [str(a) for a in args]


def cli(*args: object) -> tuple[int, str, str]:
    """``fcpts.cli.main(args)`` in this process → (exit status, stdout, stderr).

    An argparse error raises ``SystemExit`` out of ``main``: its code is the exit status.
    """
    from fcpts.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_process(
    cmd: list[str], cwd: Path | None = None, timeout: float = 60, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own session; on timeout kill the whole group (ranks too) and fail the test."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env(), **(extra_env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # torchrun starts each rank in a session of its own: kill them by pid (found before their
        # parent dies and they are re-parented), then the launcher's group.
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=30)
        raise AssertionError(
            f"{cmd[:6]}... still running after {timeout} s (hang); stderr tail: {stderr[-2000:]}"
        ) from exc
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found through /proc's parent ids)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def fcpts_process(*args: object, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_process([sys.executable, "-m", "fcpts", *map(str, args)], cwd=cwd, timeout=timeout)


def assert_one_line_error(code: int, stderr: str, *fragments: str, stdout: str | None = "") -> None:
    """Exit status 2 and stderr exactly one line ``fcpts: error: ...`` holding every fragment."""
    assert code == 2, f"exit status {code}, stderr: {stderr[-3000:]}"
    assert stderr.startswith("fcpts: error: "), stderr[-3000:]
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), f"not one line: {stderr[-3000:]}"
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, f"{fragment!r} not in {stderr!r}"
    if stdout is not None:
        assert stdout == "", stdout


def leftovers(parent: Path) -> list[str]:
    """Hidden temporaries of an output directory or a checkpoint beside it (there must be none)."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def factory_state(model_file: Path, name: str = "factory") -> dict[str, torch.Tensor]:
    import fcpts

    return {k: v.clone() for k, v in fcpts.load_model(f"{model_file}:{name}").state_dict().items()}


def distinct_prunable(model: nn.Module) -> list[torch.Tensor]:
    """The weight of every Conv/Linear, each distinct tensor once (tied weights counted once)."""
    seen: dict[int, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            seen.setdefault(id(m.weight), m.weight)
    return list(seen.values())


def read_report(directory: Path) -> dict:
    return json.loads((directory / REPORT).read_text())
