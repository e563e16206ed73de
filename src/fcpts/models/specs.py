"""Model specs: built-in models, ecosystem prefixes (``torchvision:``, ``timm:``, ``hf:``), and factories.

Built-in names live in :data:`BUILTIN_MODELS` (:mod:`.reference` registers ``refcnn`` and ``refvit``,
:mod:`.efficientnet_lite` ``efficientnet_lite1`` and ``efficientnet_lite2``, with an :class:`InputConfig`)
and :data:`ALIASES` (:mod:`.zoo`: ``minilm``); spec prefixes in :data:`MODEL_SPECS` (:mod:`.zoo`: the
ecosystem ones); a spec ``PREFIX:ARG`` whose prefix is not registered is a ``file.py:factory`` or
``package.module:factory``.

A ``file.py:factory`` or ``package.module:factory`` spec imports and runs the user's own code,
exactly as ``python file.py`` would: only use specs you trust. Weights are never unpickled:
safetensors, or ``torch.load(weights_only=True)`` for a ``torch.save`` state dict. A state dict in
another naming of the same architecture loads with ``key_map="order"`` (``--weights-map order``,
:func:`map_by_order`): entries paired by position, every shape checked.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import FcptsError
from ..registry import Registry
from .state_dicts import KEY_MAPS, _first_line, check_state_dict_fits, load_state_dict

#: ``build(arg, weights, random_weights) -> model``: ``weights`` is the user's file or None; a
#: builder that returns weights already loaded (its own local source) returns ``(model, True)``.
SpecBuilder = Callable[[str, "str | os.PathLike[str] | None", bool], "tuple[nn.Module, bool]"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered spec prefix: ``PREFIX:ARG`` is built by ``build``; ``usage`` is shown in errors/help."""

    prefix: str
    build: SpecBuilder
    usage: str


#: Spec prefix → builder (:func:`register_model_spec`).
MODEL_SPECS: Registry[ModelSpec] = Registry("model spec prefix")


@dataclass(frozen=True)
class InputConfig:
    """The images a model was trained on: ``channels``×``image_size``×``image_size``, normalised with
    ``normalize`` (a :data:`fcpts.data.images.NORMALIZATIONS` name) after scaling pixels to [0, 1].

    ImageNet evaluation resizes to ``round(image_size / crop_pct)`` and crops the central
    ``image_size`` square (:meth:`resize_and_crop`: ``--image-size`` and ``--crop`` for ``imagefolder:``).

    >>> InputConfig(240, normalize="inception", crop_pct=0.882).resize_and_crop()
    (272, 240)
    """

    image_size: int
    channels: int = 3
    normalize: str = "none"
    crop_pct: float = 1.0

    def resize_and_crop(self) -> tuple[int, int]:
        """``(resize, crop)`` of the standard evaluation preprocessing."""
        return round(self.image_size / self.crop_pct), self.image_size


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model name: ``factory()`` builds it; ``weights`` is its file in ``fcpts/models/weights/``
    or a function that finds it (e.g. in an installed package, raising :class:`FcptsError` if absent);
    ``key_map`` (a :data:`KEY_MAPS` name) maps that file's names onto the model's; ``input_config``
    says what images the model expects."""

    factory: Callable[[], nn.Module]
    weights: str | Callable[[], Path] | None = None
    input_config: InputConfig | None = None
    key_map: str | None = None

    def weights_path(self) -> Path | None:
        """Path of the packaged weights file (None for a model without one)."""
        if self.weights is None:
            return None
        if callable(self.weights):
            return self.weights()
        return Path(str(importlib.resources.files("fcpts.models") / "weights" / self.weights))


#: Built-in model name → factory and packaged weights.
BUILTIN_MODELS: Registry[BuiltinModel] = Registry("built-in model")

#: Built-in names that stand for a spec found at run time (e.g. a package's model directory).
ALIASES: Registry[Callable[[], str]] = Registry("model alias")


def register_model_spec(prefix: str, usage: str) -> Callable[[SpecBuilder], SpecBuilder]:
    """Decorator: build specs ``PREFIX:ARG`` with ``fn(arg, weights, random_weights) -> (model, loaded)``.

    >>> @register_model_spec("toy", "toy:N (a Linear with N outputs)")
    ... def _toy(arg, weights, random_weights):
    ...     return nn.Linear(2, int(arg)), random_weights
    >>> load_model("toy:3", random_weights=True).out_features
    3
    >>> MODEL_SPECS.unregister("toy")
    """

    def decorate(fn: SpecBuilder) -> SpecBuilder:
        MODEL_SPECS.register(prefix, ModelSpec(prefix, fn, usage))
        return fn

    return decorate


def imports_code(spec: str) -> bool:
    """Whether building ``spec`` imports code named by the spec itself (``file.py:factory``, ``module:factory``).

    >>> imports_code("refcnn"), imports_code("timm:resnet18"), imports_code("net.py:build"), imports_code("pkg.mod:f")
    (False, False, True, True)
    """
    prefix = spec.partition(":")[0]
    return ":" in spec and spec not in BUILTIN_MODELS and spec not in ALIASES and prefix not in MODEL_SPECS


def resolved_spec(spec: str) -> str:
    """``spec`` with its file path made absolute, so that it works from any directory (report.json).

    >>> import os; resolved_spec("net.py:build") == os.path.abspath("net.py") + ":build", resolved_spec("refcnn")
    (True, 'refcnn')
    """
    prefix, _, arg = spec.partition(":")
    target, _, attr = spec.rpartition(":")
    if imports_code(spec) and target.endswith(".py"):
        return f"{os.path.abspath(target)}:{attr}"
    if prefix == "hf" and arg and Path(arg).exists():  # hf:DIR, a local model directory
        return f"hf:{os.path.abspath(arg)}"
    return spec


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FcptsError(f"model file not found: {path}")
        module_name = f"_fcpts_user_{path.stem}"
        mod_spec = importlib.util.spec_from_file_location(module_name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise FcptsError(f"cannot import {path}")
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: a SyntaxError, a failing import, anything it raises
            raise FcptsError(f"cannot import model file {path}: {_exception_line(exc)}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise FcptsError(
                f"cannot import module {target!r} for model spec {spec!r}: {_exception_line(exc)}"
            ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FcptsError(f"model spec {spec!r}: {target} has no callable {attr!r}")
    return factory


def _exception_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (with the line number for a SyntaxError)."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def model_input_config(spec: str) -> InputConfig | None:
    """The :class:`InputConfig` of a built-in model (None for other specs, whose inputs fcpts does not know).

    >>> model_input_config("refcnn") is None
    True
    """
    return BUILTIN_MODELS[spec].input_config if spec in BUILTIN_MODELS else None


def load_model(
    spec: str,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
    key_map: str | None = None,
) -> nn.Module:
    """Build a model from a spec and load its weights; returns it in eval mode on ``device``.

    ``spec`` is a built-in name (``refcnn``, ``refvit``, ``efficientnet_lite1/2``, ``minilm``), a registered prefix
    (``torchvision:NAME``, ``timm:NAME``, ``hf:DIR``), ``path/to/file.py:factory`` or
    ``package.module:factory``. ``weights`` (safetensors or a ``torch.save`` state dict) replaces
    the model's own (packaged, cached or in its directory). ``random_weights`` allows a model
    without any weights (ecosystem specs refuse that otherwise); a built-in model keeps its
    initialisation instead of the packaged weights. ``key_map`` (:data:`KEY_MAPS`: ``"order"``)
    loads a ``weights`` file whose names differ from the model's (another implementation of the
    same architecture): entries are paired by position, and every shape is checked.

    >>> load_model("refcnn").fc.out_features
    10
    """
    if key_map is not None:
        KEY_MAPS.get(key_map)  # an unknown name fails before any loading
        if weights is None:
            raise FcptsError(f"a weights map ({key_map!r}) applies to a weights file: pass --weights FILE with it")
    if spec in ALIASES:
        return load_model(ALIASES[spec](), weights, device, random_weights, key_map)
    model, weights, key_map = _build(spec, weights, random_weights, key_map)
    if weights is not None:
        state = load_state_dict(weights)
        if key_map is not None:
            state = KEY_MAPS.get(key_map)(state, model, str(weights), f"model {spec!r}")
        check_state_dict_fits(model, state, str(weights), f"model {spec!r}")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # e.g. a model's own load hooks rejecting the values
            raise FcptsError(f"weights in {weights} do not match model {spec!r}: {_first_line(exc)}") from exc
    return model.to(device).eval()


def _build(
    spec: str, weights: str | os.PathLike[str] | None, random_weights: bool, key_map: str | None
) -> tuple[nn.Module, str | os.PathLike[str] | None, str | None]:
    """The model of ``spec`` and the weights file (and its key map) still to load into it, if any."""
    prefix, _, arg = spec.partition(":")
    if spec in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[spec]
        model = builtin.factory()
        if weights is None and not random_weights:
            weights, key_map = builtin.weights_path(), builtin.key_map
    elif prefix in MODEL_SPECS:
        if not arg:
            raise FcptsError(f"model spec {spec!r} is incomplete: expected {MODEL_SPECS[prefix].usage}")
        model, loaded = MODEL_SPECS[prefix].build(arg, weights, random_weights)
        if loaded:
            weights = None
    elif ":" in spec:
        factory = _import_factory(spec)
        try:
            model = factory()
        except Exception as exc:  # the user's factory failed: say so in one line, not a traceback
            raise FcptsError(f"model spec {spec!r}: the factory raised {_exception_line(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise FcptsError(f"model spec {spec!r} returned {type(model).__name__}, not an nn.Module")
    else:
        known = ", ".join(sorted([*BUILTIN_MODELS, *ALIASES]))
        prefixes = ", ".join(m.usage for m in MODEL_SPECS.values())
        raise FcptsError(
            f"unknown model spec {spec!r}: expected a built-in name ({known}), {prefixes}, "
            "'path/to/file.py:factory' or 'package.module:factory'"
        )
    return model, weights, key_map
