"""Issue 16, Security: a received directory never runs code; declared sizes are checked before allocating.

A prune or export directory records the model spec it was made with. A built-in or package spec is
rebuilt as before; a *file* spec (``/path/payload.py:make``) is code, and is imported only when the
user says so (``--trust-model-code``, ``trust_model_code=True``). The payloads here write a marker
file when imported or called: the marker must not exist after a refusal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import fcpts
from tests.integration.blackbox import (
    MODEL,
    REPORT,
    assert_one_line_error,
    cli,
    env,
    prune_args,
    read_report,
    write_data,
    write_model,
)


def payload_source(marker: Path) -> str:
    """A model file that leaves ``marker`` when imported and builds the tiny model when called."""
    return textwrap.dedent(
        f"""
        import pathlib
        import torch
        from torch import nn

        pathlib.Path({str(marker)!r}).write_text("imported")


        def make():
            pathlib.Path({str(marker)!r}).write_text("called")
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
        """
    )


@pytest.fixture
def received(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(prune directory whose report names a payload file spec, the payload, its marker)."""
    work = tmp_path / "work"
    work.mkdir()
    model, data = write_model(work), write_data(work / "data.npz")
    out = tmp_path / "received"
    code, _, err = cli(*prune_args(model, data, out))
    assert code == 0, err
    marker = tmp_path / "payload-ran"
    payload = tmp_path / "payload.py"
    payload.write_text(payload_source(marker))
    report = read_report(out)
    report["model_spec"] = f"{payload}:make"
    (out / REPORT).write_text(json.dumps(report))
    return out, payload, marker


def test_cli_export_refuses_a_file_spec_from_the_directory(received, tmp_path):
    directory, _, marker = received
    exported = tmp_path / "exported"
    code, out, err = cli("export", directory, "--format", "dense", "--out", exported)
    assert_one_line_error(code, err, "--trust-model-code", stdout=out)
    assert not marker.exists(), "the payload ran"
    assert not exported.exists()


def test_api_export_refuses_a_file_spec_from_the_directory(received, tmp_path):
    directory, _, marker = received
    with pytest.raises(fcpts.FcptsError, match="trust_model_code"):
        fcpts.export(directory, tmp_path / "exported", "compressed")
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "exported").exists()


def test_load_refuses_a_file_spec_in_a_prune_directory(received):
    directory, _, marker = received
    with pytest.raises(fcpts.FcptsError, match="trust_model_code"):
        fcpts.load(directory)
    assert not marker.exists(), "the payload ran"


def test_load_refuses_a_file_spec_in_export_json(received, tmp_path):
    """An export directory (export.json) is received too: its file spec is refused the same way."""
    _, payload, marker = received
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    exported = tmp_path / "exported"
    fcpts.export(net, exported, "compressed", model_spec=f"{payload}:make")  # records the spec, runs nothing
    assert not marker.exists()
    with pytest.raises(fcpts.FcptsError, match="trust_model_code"):
        fcpts.load(exported)
    assert not marker.exists(), "the payload ran"


def test_trusting_the_model_code_is_an_explicit_opt_in(received, tmp_path):
    directory, _, marker = received
    exported = tmp_path / "exported"
    code, _, err = cli("export", directory, "--format", "compressed", "--out", exported, "--trust-model-code")
    assert code == 0, err
    assert marker.exists()
    marker.unlink()
    model = fcpts.load(exported, trust_model_code=True)
    assert isinstance(model, nn.Module) and marker.exists()
    marker.unlink()
    assert isinstance(fcpts.load(directory, trust_model_code=True), nn.Module)
    fcpts.export(directory, tmp_path / "api-exported", "dense", trust_model_code=True)
    assert (tmp_path / "api-exported" / MODEL).is_file()


def test_a_builtin_spec_still_loads_without_trust(tmp_path):
    """Built-in specs run no code of the directory: loaded as before, no opt-in needed."""
    exported = tmp_path / "refcnn"
    fcpts.export(fcpts.load_model("refcnn"), exported, "compressed", model_spec="refcnn")
    model = fcpts.load(exported)
    assert model.fc.out_features == 10


def test_a_passed_model_needs_no_trust(received):
    """``fcpts.load(dir, model=...)``: the user's own module, the recorded spec is not used at all."""
    directory, _, marker = received
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    assert fcpts.load(directory, model=net) is not None
    assert not marker.exists()


HUGE_SHAPE_CHILD = textwrap.dedent(
    r"""
    import re, resource, sys
    from torch import nn
    import fcpts
    # Address space: what the imports mapped plus 4 GiB, so a huge allocation fails instead of swapping.
    mapped = int(re.search(r"VmSize:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) << 10
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (4 << 30), resource.RLIM_INFINITY))
    try:
        fcpts.load(sys.argv[1], model=nn.Linear(4, 4))
    except fcpts.FcptsError as exc:
        print("FcptsError:", exc)
    except BaseException as exc:
        print("OTHER:", type(exc).__name__, str(exc)[:200])
    else:
        print("LOADED")
    """
)


def test_compressed_file_declaring_a_huge_shape_is_refused_before_allocating(tmp_path):
    """metadata ``shape [1e12]`` over 1 stored value: refused from the stored bytes, no 931 GiB allocation."""
    from safetensors.torch import save_file

    exported = tmp_path / "exported"
    fcpts.export(nn.Linear(4, 4), exported, "compressed")
    name = json.loads((exported / "export.json").read_text())["file"]
    sparse = {"weight": {"shape": [10**12], "dtype": "float32"}}
    tensors = {
        "weight.values": torch.ones(1),
        "weight.bitmask": torch.tensor([128], dtype=torch.uint8),
        "bias": torch.zeros(4),
    }
    meta = {"format": "fcpts-bitmask", "version": "1", "sparse": json.dumps(sparse)}
    save_file(tensors, str(exported / name), metadata=meta)
    child = subprocess.run(
        [sys.executable, "-c", HUGE_SHAPE_CHILD, str(exported)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    assert child.stdout.startswith("FcptsError:"), child.stdout + child.stderr[-2000:]
    assert "weight" in child.stdout


def test_report_records_the_model_spec_resolved(tmp_path, monkeypatch):
    """A relative ``--model`` is recorded absolute: export works from another working directory."""
    work = tmp_path / "work"
    work.mkdir()
    write_model(work)
    write_data(work / "data.npz")
    monkeypatch.chdir(work)
    code, _, err = cli(*prune_args("tiny_model.py:factory", Path("data.npz"), Path("out")))
    assert code == 0, err
    spec = read_report(work / "out")["model_spec"]
    assert spec == f"{work / 'tiny_model.py'}:factory"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = cli("export", work / "out", "--format", "dense", "--out", "exp", "--trust-model-code")
    assert code == 0, err
    assert isinstance(fcpts.load(elsewhere / "exp", trust_model_code=True), nn.Module)
