"""Output directories written all or nothing (a temporary directory renamed into place), and weight files."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from .errors import FcptsError

REPORT_NAME, MODEL_NAME, PLOT_NAME = "report.json", "model.safetensors", "allocation.png"


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Fail early (before any work) if ``out`` cannot be written.

    That is: ``out`` holds something and ``overwrite`` is off, or the place it would be created in
    is not writable (a read-only mount, a directory we may not write). Minutes of pruning should
    not end in an error that was knowable at the start.
    """
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise FcptsError(f"output directory {out} already exists and is not empty; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise FcptsError(f"output path {out} exists and is not a directory")
    # The temporary directory is created beside ``out``, so the nearest existing parent must be
    # writable (and searchable). ``os.access`` also reports a read-only file system; it cannot see
    # a full disk, which atomic_directory turns into the same kind of error when it happens.
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise FcptsError(f"cannot create output directory {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FcptsError(f"cannot write output directory {out}: {parent} is not writable")


def _os_error_message(out: Path, exc: OSError) -> str:
    """``cannot write output directory OUT: Read-only file system (PATH)``: the reason and the path."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != out else ""
    return f"cannot write output directory {out}: {reason}{where}; nothing was written"


def _replace_directory(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and restored if that fails."""
    if not out.exists():
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    moved = old / "dir"
    try:
        out.rename(moved)
        try:
            tmp.rename(out)
        except OSError:
            moved.rename(out)  # put the previous result back: a failed run must not lose it
            raise
    finally:
        # ``moved`` still existing after a failure means the restore failed too: keep those files.
        if not moved.exists() or out.exists():
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` only if the block succeeds.

    An exception (or a kill) leaves ``out`` untouched: either the old content or nothing, never a
    half-written directory. The temporary directory is removed on failure. An ``OSError`` while
    creating, writing or renaming (read-only location, disk full, permission denied) becomes one
    :class:`FcptsError` with the path and the reason.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        yield tmp
        _replace_directory(tmp, out)
    except OSError as exc:
        raise FcptsError(_os_error_message(out, exc)) from exc
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """The model's state dict as safetensors (tied tensors are stored once per name)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
