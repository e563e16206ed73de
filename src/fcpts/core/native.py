"""fcpts's C++ kernels: built with the system's C++ compiler at first use, cached, called through :mod:`ctypes`.

``g++ -O3 -march=native -fopenmp -shared`` (``$CXX`` if set), about 1 s a source, cached under
``$FCPTS_CACHE_DIR`` (default ``~/.cache/fcpts/kernels``) keyed by the source, compiler, flags and
the CPU's feature flags. No compiler, a failed build, or ``FCPTS_CPU_KERNEL=0``: :func:`load`
returns None and every caller runs its pure-PyTorch path instead (the same results up to float
rounding). The kernels: ``deploy/csrc/spmm.cpp`` (:mod:`fcpts.deploy.cpu_sparse`, sparse inference)
and ``core/csrc/lag_gram.cpp`` (:mod:`fcpts.core.lag_gram`, depthwise Gram matrices).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]


def cpu_flags() -> str:
    """The CPU's feature flags (``/proc/cpuinfo``), part of a build's cache key ("" where unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def cache_dir() -> Path:
    if os.environ.get("FCPTS_CACHE_DIR"):
        return Path(os.environ["FCPTS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fcpts" / "kernels"


def build(source: Path, compiler: str) -> Path:
    """The shared library of ``source``, compiled once per (source, compiler, flags, CPU)."""
    text = source.read_bytes()
    key = hashlib.sha256(b"\0".join([text, compiler.encode(), " ".join(FLAGS).encode(), cpu_flags().encode()]))
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, *FLAGS, str(source), "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
        os.replace(out, target)  # atomic: a concurrent build writes the same bytes
    return target


def load(source: Path, signatures: dict[str, list[type]], fallback: str) -> ctypes.CDLL | None:
    """``source`` built and loaded, its functions' ``argtypes`` set from ``signatures``; None where it cannot be.

    ``fallback`` says what runs instead, in the warning a failed build gives (none without a compiler
    or with ``FCPTS_CPU_KERNEL=0``: those are choices, not failures). Callers cache the result.

    >>> from fcpts.core.lag_gram import SOURCE
    >>> lib = load(SOURCE, {}, "unfolded inputs")  # None without a C++ compiler
    >>> lib is None or hasattr(lib, "fcpts_lag_sums")
    True
    """
    if os.environ.get("FCPTS_CPU_KERNEL", "1") == "0":
        return None
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not compiler:
        return None
    try:
        lib = ctypes.CDLL(str(build(source, compiler)))
        for name, args in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        lines = str(getattr(exc, "stderr", "") or exc).strip().splitlines() or [type(exc).__name__]
        detail = next((line for line in lines if "error" in line), lines[0])  # the compiler's first error
        warnings.warn(f"fcpts: the {source.stem} kernel is not available ({detail}); using {fallback}", stacklevel=3)
        return None
    return lib
