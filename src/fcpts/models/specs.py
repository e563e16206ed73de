"""Model specs: built-in models, ecosystem prefixes (``torchvision:``, ``timm:``, ``hf:``), and factories.

Spec prefixes are registered with :func:`register_model_spec` (see :mod:`fcpts.zoo` for the
ecosystem ones); a spec ``PREFIX:ARG`` whose prefix is not registered is a ``file.py:factory`` or
``package.module:factory``.

A ``file.py:factory`` or ``package.module:factory`` spec imports and runs the user's own code,
exactly as ``python file.py`` would: only use specs you trust. Weights are never unpickled:
safetensors, or ``torch.load(weights_only=True)`` for a ``torch.save`` state dict.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import FcptsError

#: Fashion-MNIST pixel mean and standard deviation (training split, pixels in [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


class Normalize(nn.Module):
    """``(x - mean) / std`` with fixed buffers, so the model takes images in ``[0, 1]``."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with BatchNorm and a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReferenceCNN(nn.Module):
    """The reference model: a small ResNet for 1×28×28 images (304k parameters, 10 classes).

    stem 3×3 conv (16) at 28×28 → blocks of 32 @14×14, 64 @7×7, 128 @4×4 → global pool → Linear.
    Prunable layers: 10 convs and the classifier, 303k weights.

    >>> ReferenceCNN()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.normalize = Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.layer1 = BasicBlock(widths[0], widths[1], 2)
        self.layer2 = BasicBlock(widths[1], widths[2], 2)
        self.layer3 = BasicBlock(widths[2], widths[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _reference_vit() -> nn.Module:
    from .vit import ReferenceViT  # vit imports this module (Normalize)

    return ReferenceViT()


#: Built-in model names → (factory, packaged weights file or None).
BUILTIN_MODELS: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
    "refcnn": (ReferenceCNN, "refcnn_fashion_mnist.safetensors"),
    "refvit": (_reference_vit, "refvit_fashion_mnist.safetensors"),
}

#: ``build(arg, weights, random_weights) -> model``: ``weights`` is the user's file or None; a
#: builder that returns weights already loaded (its own local source) returns ``(model, True)``.
SpecBuilder = Callable[[str, "str | os.PathLike[str] | None", bool], "tuple[nn.Module, bool]"]


@dataclass(frozen=True)
class ModelSpec:
    """A registered spec prefix: ``PREFIX:ARG`` is built by ``build``; ``usage`` is shown in errors/help."""

    prefix: str
    build: SpecBuilder
    usage: str


#: Spec prefix → builder. Filled by :func:`register_model_spec` (``fcpts.zoo`` registers the ecosystem ones).
MODEL_SPECS: dict[str, ModelSpec] = {}


def register_model_spec(prefix: str, usage: str) -> Callable[[SpecBuilder], SpecBuilder]:
    """Decorator: build specs ``PREFIX:ARG`` with ``fn(arg, weights, random_weights) -> (model, loaded)``.

    >>> @register_model_spec("toy", "toy:N (a Linear with N outputs)")
    ... def _toy(arg, weights, random_weights):
    ...     return nn.Linear(2, int(arg)), random_weights
    >>> load_model("toy:3", random_weights=True).out_features
    3
    >>> del MODEL_SPECS["toy"]
    """

    def decorate(fn: SpecBuilder) -> SpecBuilder:
        MODEL_SPECS[prefix] = ModelSpec(prefix, fn, usage)
        return fn

    return decorate


def builtin_weights_path(name: str) -> Path:
    """Path of a built-in model's packaged weights file."""
    filename = BUILTIN_MODELS[name][1]
    assert filename is not None
    return Path(str(importlib.resources.files("fcpts") / "weights" / filename))


def load_reference_model(device: str | torch.device = "cpu") -> nn.Module:
    """The reference CNN with its committed Fashion-MNIST weights, in eval mode.

    >>> model = load_reference_model()
    >>> sum(p.numel() for p in model.parameters()) > 300_000
    True
    """
    return load_model("refcnn", device=device)


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
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise FcptsError(f"cannot import module {target!r} for model spec {spec!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FcptsError(f"model spec {spec!r}: {target} has no callable {attr!r}")
    return factory


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, cut at the first sentence (torch's run on)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def _brief(names: list[str], limit: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 7 more``: enough to recognise the problem, one line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or from ``torch.save`` (loaded with ``weights_only=True``).

    Every way a file can be wrong (truncated, not a weights file at all, pickled Python objects
    that ``weights_only`` refuses, a list or a checkpoint dict with non-tensor entries) becomes one
    :class:`FcptsError` naming the file; nothing is ever unpickled beyond tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FcptsError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise FcptsError(f"cannot read weights file {path}: the file is empty")
    unreadable = f"cannot read weights file {path} (truncated, corrupt or not a weights file)"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refused a Python object (a whole pickled model, a custom class...): say so
        # plainly instead of torch's multi-paragraph advice to turn the protection off.
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # "Unsupported global: GLOBAL x.y" or "... GLOBAL x.y whose"
        if found is None:
            detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(exc))
            raise FcptsError(f"{unreadable}: {detail.group(1) if detail else _first_line(exc)}") from exc
        raise FcptsError(
            f"cannot read weights file {path}: it holds a pickled Python object ({found.group(1)}), not only "
            "tensors, and fcpts never unpickles objects: save model.state_dict() with torch.save, or use safetensors"
        ) from exc
    except Exception as exc:  # safetensors and torch raise many types for a truncated or corrupt file
        raise FcptsError(f"{unreadable}: {_first_line(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FcptsError(
            f"weights file {path} holds a {type(state).__name__}, not a state dict (parameter name → tensor)"
        )
    bad = [f"{k!r} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FcptsError(f"weights file {path} is not a state dict of tensors: entries {_brief(bad)} are not tensors")
    return state


def check_state_dict_fits(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str = "the model"
) -> None:
    """One-line :class:`FcptsError` listing the missing, unexpected and mis-shaped keys, if any.

    ``torch``'s own message is a paragraph per problem; this one names the first few of each.

    >>> net = nn.Linear(2, 3)
    >>> check_state_dict_fits(net, {"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, "w.pt")
    >>> check_state_dict_fits(net, {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)}, "w.pt")
    Traceback (most recent call last):
    ...
    fcpts.errors.FcptsError: weights in w.pt do not match the model: missing keys: bias; unexpected keys: extra; ...
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label}: {_brief(names)}"
        for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if names
    ]
    if problems:
        raise FcptsError(f"weights in {source} do not match {model_name}: {'; '.join(problems)}")


def load_model(
    spec: str,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
) -> nn.Module:
    """Build a model from a spec and load its weights; returns it in eval mode on ``device``.

    ``spec`` is a built-in name (``refcnn``, ``refvit``, ``minilm``), a registered prefix
    (``torchvision:NAME``, ``timm:NAME``, ``hf:DIR``), ``path/to/file.py:factory`` or
    ``package.module:factory``. ``weights`` (safetensors or a ``torch.save`` state dict) replaces
    the model's own (packaged, cached or in its directory). ``random_weights`` allows a model
    without any weights (ecosystem specs refuse that otherwise); a built-in model keeps its
    initialisation instead of the packaged weights.

    >>> load_model("refcnn").fc.out_features
    10
    """
    from . import zoo as _zoo  # registers the torchvision:, timm:, hf: prefixes (their imports are lazy)

    prefix, _, arg = spec.partition(":")
    if spec in BUILTIN_MODELS:
        factory, packaged = BUILTIN_MODELS[spec]
        model = factory()
        if weights is None and packaged is not None and not random_weights:
            weights = builtin_weights_path(spec)
    elif spec in _zoo.ALIASES:
        return load_model(_zoo.ALIASES[spec](), weights, device, random_weights)
    elif prefix in MODEL_SPECS:
        if not arg:
            raise FcptsError(f"model spec {spec!r} is incomplete: expected {MODEL_SPECS[prefix].usage}")
        model, loaded = MODEL_SPECS[prefix].build(arg, weights, random_weights)
        if loaded:
            weights = None
    elif ":" in spec:
        model = _import_factory(spec)()
        if not isinstance(model, nn.Module):
            raise FcptsError(f"model spec {spec!r} returned {type(model).__name__}, not an nn.Module")
    else:
        known = ", ".join(sorted([*BUILTIN_MODELS, *_zoo.ALIASES]))
        prefixes = ", ".join(m.usage for m in MODEL_SPECS.values())
        raise FcptsError(
            f"unknown model spec {spec!r}: expected a built-in name ({known}), {prefixes}, "
            "'path/to/file.py:factory' or 'package.module:factory'"
        )
    if weights is not None:
        state = load_state_dict(weights)
        check_state_dict_fits(model, state, str(weights), f"model {spec!r}")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # e.g. a model's own load hooks rejecting the values
            raise FcptsError(f"weights in {weights} do not match model {spec!r}: {_first_line(exc)}") from exc
    return model.to(device).eval()
