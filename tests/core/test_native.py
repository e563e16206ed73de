"""Building and loading fcpts's C++ kernels (:mod:`fcpts.core.native`)."""

from __future__ import annotations

import ctypes
import shutil
import warnings

import pytest

from fcpts.core import native

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FCPTS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_switch_turns_every_kernel_off_without_a_warning(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("FCPTS_CPU_KERNEL", "0")
    source = tmp_path / "k.cpp"
    source.write_text('extern "C" void f() {}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load(source, {"f": []}, "PyTorch") is None
    assert not cache.exists()


@needs_compiler
def test_a_source_is_built_once_and_its_functions_typed(tmp_path, cache):
    source = tmp_path / "twice.cpp"
    source.write_text('extern "C" void twice(double* x) { *x *= 2; }\n')
    lib = native.load(source, {"twice": [ctypes.c_void_p]}, "PyTorch")
    assert lib is not None
    value = ctypes.c_double(1.5)
    lib.twice(ctypes.addressof(value))
    assert value.value == 3.0
    built = list(cache.glob("twice-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert native.build(source, shutil.which("g++")) == built[0]  # cached: not rebuilt
    assert built[0].stat().st_mtime_ns == stamp


@needs_compiler
def test_a_failed_build_warns_and_returns_none(tmp_path, cache):
    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++\n")
    with pytest.warns(UserWarning, match="the broken kernel is not available .*; using PyTorch"):
        assert native.load(source, {}, "PyTorch") is None
    assert not list(cache.glob("broken-*.so"))
