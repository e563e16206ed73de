"""Keeping freed memory in the process's heap while a run lasts (glibc's ``mallopt``).

glibc serves every allocation above its mmap threshold (128 KiB, raised as blocks are freed up to
32 MiB) with a fresh ``mmap`` and returns it on free, so every pass of a large model over a batch
faults its activations in again, page by page. With mmap off and the heap never trimmed, freed
blocks are reused instead; this is what a preloaded jemalloc or tcmalloc does for PyTorch CPU
training, done in-process. On EfficientNet-Lite1 at 240×240 on 2 cores (docs/benchmarks.md, the
same run): SparseGPT takes 66 s instead of 110 s and POT 127 s instead of 220 s; fcpts's budget
probe measures 5.0 s a step instead of 9.3 s, so its 10 minutes buy 106 steps instead of 55.
The cost is peak memory: 0.8–1.2 GiB more there.

:func:`retained_heap` sets it for the duration of a run (:attr:`fcpts.RunOptions.retain_heap`) and
puts glibc's documented defaults back after, then hands the freed memory to the system. It does
nothing off glibc, or where the user chose the allocator (``LD_PRELOAD``, ``MALLOC_*`` variables).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator
from typing import Any

# mallopt's parameters (malloc.h) and glibc's defaults for them (mallopt(3)).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
#: While retained: no allocation is mmapped, and the heap is never trimmed (mallopt's int -1 becomes
#: glibc's size_t trim threshold SIZE_MAX).
RETAINED = {M_TRIM_THRESHOLD: -1, M_MMAP_MAX: 0}
#: Variables by which a user chose the allocator's behaviour: then :func:`retained_heap` keeps out.
USER_SETTINGS = ("LD_PRELOAD", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def glibc() -> Any | None:
    """The C library, where it is glibc with ``mallopt`` and the user left the allocator alone; else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(os.environ.get(name) for name in USER_SETTINGS):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def retained_heap(enabled: bool = True, libc: Any | None = None) -> Iterator[bool]:
    """Within the block, freed memory stays in the heap for reuse; yields whether that applies.

    ``libc``: the library to set (default :func:`glibc`; tests pass a fake). After the block glibc's
    defaults are set again (its dynamic mmap threshold stays off, as after any ``mallopt``) and
    ``malloc_trim(0)`` returns the freed memory to the system.

    >>> with retained_heap(enabled=False) as applied:  # RunOptions(retain_heap=False): glibc untouched
    ...     pass
    >>> applied
    False
    """
    if enabled and libc is None:
        libc = glibc()
    if not enabled or libc is None:
        yield False
        return
    for param, value in RETAINED.items():
        libc.mallopt(param, ctypes.c_int(value))
    try:
        yield True
    finally:
        for param, value in DEFAULTS.items():
            libc.mallopt(param, ctypes.c_int(value))
        libc.malloc_trim(ctypes.c_size_t(0))
