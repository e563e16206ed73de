"""Export a pruned model as ``dense``, ``compressed`` or ``onnx``, and :func:`load` any of them back.

An export directory holds one model file and ``export.json`` (format, model spec, file sizes):

* ``dense``: ``model.safetensors``, the state dict with its zeros (what ``fcpts prune`` writes).
* ``compressed``: ``model.compressed.safetensors``, the **fcpts-bitmask v1** format below.
* ``compressed-tensors``: a Hugging Face ``save_pretrained`` directory (``config.json``,
  ``model.safetensors``) in compressed-tensors' ``sparse-bitmask`` format, what llm-compressor writes
  (:mod:`.hf_compressed`); ``hf:`` models only.
* ``onnx``: ``model.onnx``, the model's graph (PyTorch's ``torch.export``-based exporter, dynamic
  batch dimension), checked against PyTorch's outputs with onnxruntime when it is written.

The compressed format is described in :mod:`fcpts.deploy.compressed` (about ``0.156×`` of dense
at 0.9, restored bit for bit).

:func:`load` returns an ``nn.Module`` for every format: for dense and compressed the model rebuilt
from its spec (``export.json``'s ``model_spec``, or a ``model`` you pass) with the stored weights;
for onnx an :class:`OnnxModule`, a small module whose forward runs the ONNX graph with onnxruntime
(it has no parameters: the weights live in the graph).

>>> import tempfile, torch
>>> from torch import nn
>>> net = nn.Linear(200, 30)
>>> with torch.no_grad():
...     net.weight[:, :150] = 0.0  # 75% zeros
>>> out = tempfile.mkdtemp() + "/exp"
>>> info = export(net, out, "compressed")
>>> info.bytes["model.compressed.safetensors"] < info.dense_bytes
True
>>> back = load(out, model=nn.Linear(200, 30))
>>> torch.equal(back.weight, net.weight) and torch.equal(back.bias, net.bias)
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FcptsError
from ..files import MODEL_NAME, REPORT_NAME, atomic_directory, check_output_dir, save_weights
from ..models.specs import imports_code, load_model
from ..models.state_dicts import check_state_dict_fits, load_state_dict
from ..registry import Registry
from . import hf_compressed
from .compressed import COMPRESSED_FORMAT, COMPRESSED_VERSION, dense_safetensors_bytes, load_compressed, save_compressed
from .onnx import ONNX_ATOL, OnnxModule, export_onnx

MANIFEST_NAME = "export.json"
COMPRESSED_NAME = "model.compressed.safetensors"
ONNX_NAME = "model.onnx"
#: Input shape (without the batch dimension) of built-in models, for the ONNX export's example input.
DEFAULT_INPUT_SHAPES: dict[str, tuple[int, ...]] = {"refcnn": (1, 28, 28)}


# --- the compressed format ------------------------------------------------------------------------


# --- ONNX -------------------------------------------------------------------------------------------


# --- export and load --------------------------------------------------------------------------------


@dataclass
class ExportInfo:
    """What :func:`export` wrote: format, files and their bytes, the dense safetensors size, checks."""

    format: str
    out: Path
    bytes: dict[str, int]
    dense_bytes: int
    model_spec: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Bytes of the model file over the dense safetensors bytes."""
        return sum(self.bytes.values()) / self.dense_bytes

    def summary(self) -> str:
        files = ", ".join(f"{k} {v:,} bytes" for k, v in self.bytes.items())
        return f"format {self.format}: {files} ({self.ratio:.3f}× the dense safetensors, {self.dense_bytes:,} bytes)"


Writer = Callable[[nn.Module, Path, "torch.Tensor | None"], "tuple[str, dict[str, Any]]"]
Reader = Callable[[Path, "nn.Module | None", "str | None"], nn.Module]


@dataclass(frozen=True)
class ExportFormat:
    """An export format: ``write(model, directory, example_input) -> (file name, manifest extras)`` and
    ``read(path, model or None, model spec or None) -> nn.Module``."""

    write: Writer
    read: Reader


#: Format name → its writer and reader (``--format`` choices, :func:`load`'s dispatch).
FORMATS: Registry[ExportFormat] = Registry("export format")


def register_format(name: str, read: Reader) -> Callable[[Writer], Writer]:
    """Register an export format under ``name``: the decorated function writes it, ``read`` loads it."""

    def deco(write: Writer) -> Writer:
        FORMATS.register(name, ExportFormat(write, read))
        return write

    return deco


def _weights_reader(read_state: Callable[[Path], dict[str, torch.Tensor]]) -> Reader:
    """A reader that loads a state dict into ``model``, or into the model rebuilt from ``spec``.

    ``spec`` comes from the directory (its ``export.json`` or ``report.json``): checked by
    :func:`recorded_spec` before it reaches here, so a received directory never runs code.
    """

    def read(path: Path, model: nn.Module | None, spec: str | None) -> nn.Module:
        if model is None:
            if not spec:
                raise FcptsError(f"{path.parent} records no model spec: pass the model to load the weights into")
            model = load_model(spec)
        state = read_state(path)
        check_state_dict_fits(model, state, str(path))
        model.load_state_dict(state)
        return model.eval()

    return read


@register_format("dense", _weights_reader(load_state_dict))
def _write_dense(model: nn.Module, tmp: Path, example: torch.Tensor | None) -> tuple[str, dict[str, Any]]:
    save_weights(model, tmp / MODEL_NAME)
    return MODEL_NAME, {}


@register_format("compressed", _weights_reader(load_compressed))
def _write_compressed(model: nn.Module, tmp: Path, example: torch.Tensor | None) -> tuple[str, dict[str, Any]]:
    save_compressed(model.state_dict(), tmp / COMPRESSED_NAME)
    return COMPRESSED_NAME, {"compressed_format": f"{COMPRESSED_FORMAT} v{COMPRESSED_VERSION}"}


def _read_compressed_tensors(path: Path, model: nn.Module | None, spec: str | None) -> nn.Module:
    if model is None:
        if not spec:
            raise FcptsError(f"{path.parent} records no model spec: pass the model to load the weights into")
        model = load_model(spec)
    return hf_compressed.load_into(model, path)


@register_format("compressed-tensors", _read_compressed_tensors)
def _write_compressed_tensors(model: nn.Module, tmp: Path, example: torch.Tensor | None) -> tuple[str, dict[str, Any]]:
    extra = hf_compressed.write(model, tmp)
    return hf_compressed.WEIGHTS_NAME, extra


@register_format("onnx", lambda path, model, spec: OnnxModule(path))
def _write_onnx(model: nn.Module, tmp: Path, example: torch.Tensor | None) -> tuple[str, dict[str, Any]]:
    if example is None:
        raise FcptsError("the onnx format needs an example input (input_shape / --input-shape C,H,W)")
    diff = export_onnx(model, example, tmp / ONNX_NAME)
    return ONNX_NAME, {"onnx_check": {"max_abs_diff": diff, "atol": ONNX_ATOL, "batch": len(example)}}


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; one :class:`FcptsError` for an unreadable, invalid or non-object file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FcptsError(f"cannot read {path}: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(value, dict):
        raise FcptsError(f"{path} holds a JSON {type(value).__name__}, not an object")
    return value


def recorded_spec(where: Path, spec: Any, trust_model_code: bool) -> str | None:
    """The model spec a directory records, refused if it would run code the user did not choose.

    A directory may come from someone else: its ``file.py:factory`` or ``package.module:factory``
    spec would import and run that code. Built-in names and ecosystem prefixes (``refcnn``,
    ``torchvision:NAME``, ``hf:DIR``...) are safe; a code spec needs ``trust_model_code=True``
    (``--trust-model-code``), or pass the model yourself.
    """
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec:
        raise FcptsError(f"{where}: model_spec must be a non-empty string, got {spec!r}")
    if imports_code(spec) and not trust_model_code:
        raise FcptsError(
            f"{where} records the model spec {spec!r}, which would import and run that code: pass the model "
            "yourself (fcpts.load(DIR, model=...)), or trust_model_code=True / --trust-model-code if you trust it"
        )
    return spec


def _model_from_dir(source: Path, trust_model_code: bool) -> tuple[nn.Module, str]:
    """The model of a ``fcpts prune`` output directory (report.json's spec + model.safetensors)."""
    report_path = source / REPORT_NAME
    if not report_path.is_file():
        raise FcptsError(f"{source} is not an fcpts output directory: no {REPORT_NAME}")
    spec = recorded_spec(report_path, read_json_object(report_path).get("model_spec"), trust_model_code)
    if not spec:
        raise FcptsError(f"{report_path} names no model_spec")
    return load_model(spec, source / MODEL_NAME), spec


def export(
    source: nn.Module | str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str,
    *,
    model_spec: str | None = None,
    input_shape: Sequence[int] | None = None,
    example_input: torch.Tensor | None = None,
    overwrite: bool = False,
    trust_model_code: bool = False,
) -> ExportInfo:
    """Export a model (an ``nn.Module``, or a ``fcpts prune`` output directory) to ``out`` in ``format``.

    ``model_spec`` (e.g. ``refcnn``, ``file.py:factory``) is recorded so that :func:`load` can
    rebuild the model; a prune directory brings its own. ``input_shape`` (without batch) gives the
    ONNX export its example input (default for built-in models), or pass ``example_input`` itself
    (batch of at least 2, e.g. token ids for a text model). ``out`` is written atomically.
    A prune directory whose recorded spec imports code needs ``trust_model_code`` (:func:`recorded_spec`).
    """
    FORMATS.get(format)  # an unknown format: one error naming the choices
    check_output_dir(Path(out), overwrite)
    if isinstance(source, nn.Module):
        model = source
    else:
        model, model_spec = _model_from_dir(Path(source), trust_model_code)
    if input_shape is None and model_spec in DEFAULT_INPUT_SHAPES:
        input_shape = DEFAULT_INPUT_SHAPES[model_spec]
    device = next(iter(model.parameters()), torch.empty(0)).device
    # A fixed, seeded example: the ONNX check compares both runtimes on the same numbers.
    example = example_input
    if example is None and input_shape is not None:
        example = torch.rand(4, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    dense_bytes = dense_safetensors_bytes(model.state_dict())
    with atomic_directory(out, overwrite) as tmp:
        filename, extra = FORMATS[format].write(model, tmp, example)
        sizes = {filename: (tmp / filename).stat().st_size}
        sizes.update({p.name: p.stat().st_size for p in tmp.iterdir() if p.name not in sizes})  # e.g. ONNX data
        manifest = {
            "format": format,
            "model_spec": model_spec,
            "input_shape": None if example is None else list(example.shape[1:]),
            "file": filename,
            "bytes": sizes,
            "dense_safetensors_bytes": dense_bytes,
            **extra,
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportInfo(format, Path(out), sizes, dense_bytes, model_spec, extra)


def load(
    directory: str | os.PathLike[str],
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    trust_model_code: bool = False,
) -> nn.Module:
    """The model stored in ``directory``: an :func:`export` directory of any format, or a prune output.

    For dense and compressed exports the weights go into ``model`` when given, else into the model
    rebuilt from the recorded spec; compressed weights come back bit for bit. An onnx export
    returns an :class:`OnnxModule` (onnxruntime, CPU; ``model`` and ``device`` do not apply).
    The directory's recorded spec never runs code unless ``trust_model_code`` (:func:`recorded_spec`).
    """
    directory = Path(directory)
    path, manifest = _manifest(directory)
    spec = None if model is not None else recorded_spec(path, manifest.get("model_spec"), trust_model_code)
    if manifest.get("format") not in FORMATS:
        raise FcptsError(f"{path}: unknown export format {manifest.get('format')!r}")
    file = manifest.get("file")
    if not isinstance(file, str) or Path(file).name != file or not (directory / file).is_file():
        raise FcptsError(f"{path}: 'file' must name a file in {directory}, got {file!r}")
    loaded = FORMATS[manifest["format"]].read(directory / file, model, spec)
    return loaded if isinstance(loaded, OnnxModule) else loaded.to(device)


def _manifest(directory: Path) -> tuple[Path, dict[str, Any]]:
    """``export.json`` of an export directory, or the equivalent of a prune output's ``report.json``."""
    manifest_path = directory / MANIFEST_NAME
    if manifest_path.is_file():
        return manifest_path, read_json_object(manifest_path)
    report_path = directory / REPORT_NAME
    if (directory / MODEL_NAME).is_file() and report_path.is_file():  # fcpts prune's output
        report = read_json_object(report_path)
        return report_path, {"format": "dense", "file": MODEL_NAME, "model_spec": report.get("model_spec")}
    raise FcptsError(f"{directory} holds no fcpts export ({MANIFEST_NAME}) or prune output ({REPORT_NAME})")
