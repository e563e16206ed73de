"""Output directories written all or nothing (a temporary directory renamed into place), and weight files."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from torch import nn

from .errors import FcptsError

REPORT_NAME, MODEL_NAME, PLOT_NAME = "report.json", "model.safetensors", "allocation.png"


def check_output_dir(out: Path, overwrite: bool, inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Fail early (before any work) if ``out`` cannot be written.

    That is: ``out`` holds something and ``overwrite`` is off; ``out`` holds the working directory
    or one of the run's ``inputs`` (model file, weights, data), which replacing it would delete; or
    the place it would be created in is not writable (a read-only mount, a directory we may not
    write). Minutes of pruning should not end in an error that was knowable at the start.
    """
    resolved = out.resolve()
    if Path.cwd().resolve().is_relative_to(resolved):
        raise FcptsError(f"output directory {out} holds the working directory: choose a new directory for --out")
    if out.exists() and overwrite:
        for path in inputs:
            if Path(path).exists() and Path(path).resolve().is_relative_to(resolved):
                raise FcptsError(
                    f"output directory {out} holds {path}, an input of this run: --overwrite would delete it"
                )
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


#: ``renameat2`` flag: swap two paths atomically (Linux ≥ 3.15, glibc ≥ 2.28; not every file system).
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one atomic step; False where the system cannot (then nothing changed)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_directory(tmp: Path, out: Path) -> None:
    """Put ``tmp`` in place of ``out`` atomically: an exchange, so a kill at any point leaves one of them at ``out``.

    Where the file system cannot exchange, ``out`` is moved aside first and restored if that fails;
    a kill between the two renames is repaired by the next run (:func:`recover_output_dir`).
    """
    if not out.exists():
        tmp.rename(out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # the previous result, now at tmp
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
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


def _owner_alive(leftover: Path) -> bool:
    """Whether the process that made ``.OUT.tmp-PID-...`` / ``.OUT.old-PID-...`` still runs."""
    try:
        pid = int(leftover.name.rsplit(".", 1)[-1].split("-")[1])
    except (IndexError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_output_dir(out: Path) -> None:
    """Repair what a killed run left beside ``out``: restore a moved-aside result, remove stale temporaries.

    Only leftovers of processes that no longer run are touched, so a concurrent run keeps its own.
    """
    if not out.parent.is_dir():
        return
    for leftover in sorted(out.parent.glob(f".{out.name}.old-*")):
        if _owner_alive(leftover):
            continue
        if (leftover / "dir").is_dir() and not out.exists():
            (leftover / "dir").rename(out)  # killed between the two renames: the previous result
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out.parent.glob(f".{out.name}.tmp-*"):
        if not _owner_alive(leftover):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` only if the block succeeds.

    An exception (or a kill) leaves ``out`` untouched: either the old content or nothing, never a
    half-written directory. The temporary directory is removed on failure. An ``OSError`` while
    creating, writing or renaming (read-only location, disk full, permission denied) becomes one
    :class:`FcptsError` with the path and the reason.
    """
    out = Path(out)
    recover_output_dir(out)
    check_output_dir(out, overwrite)
    tmp: Path | None = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        yield tmp
        _replace_directory(tmp, out)
    except OSError as exc:
        raise FcptsError(_os_error_message(out, exc)) from exc
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """The model's state dict as safetensors (tied tensors are stored once per name).

    A write error (a full disk, say) is an ``OSError`` with the system's reason: safetensors raises
    its own ``SafetensorError`` for those.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    try:
        save_file(state, str(path))
    except SafetensorError as exc:
        found = re.search(r'code: (\d+).*?message: "([^"]+)"', str(exc))
        if found is None:
            raise OSError(errno.EIO, str(exc).splitlines()[0], str(path)) from exc
        raise OSError(int(found.group(1)), found.group(2), str(path)) from exc
