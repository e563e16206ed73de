"""Model specs: the built-in reference CNN, ``file.py:factory`` and ``package.module:factory``.

A ``file.py:factory`` or ``package.module:factory`` spec imports and runs the user's own code,
exactly as ``python file.py`` would: only use specs you trust. Weights are never unpickled:
safetensors, or ``torch.load(weights_only=True)`` for a ``torch.save`` state dict.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import os
from collections.abc import Callable
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


#: Built-in model names → (factory, packaged weights file or None).
BUILTIN_MODELS: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
    "refcnn": (ReferenceCNN, "refcnn_fashion_mnist.safetensors"),
}


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


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or from ``torch.save`` (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FcptsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise many types for a corrupt file
        raise FcptsError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FcptsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def load_model(
    spec: str, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build a model from a spec and load its weights; returns it in eval mode on ``device``.

    ``spec`` is a built-in name (``refcnn``), ``path/to/file.py:factory`` or
    ``package.module:factory``. ``weights`` (safetensors or a ``torch.save`` state dict) replaces
    the built-in model's packaged weights; a factory spec without weights keeps the factory's own.

    >>> load_model("refcnn").fc.out_features
    10
    """
    if spec in BUILTIN_MODELS:
        factory, packaged = BUILTIN_MODELS[spec]
        model = factory()
        if weights is None and packaged is not None:
            weights = builtin_weights_path(spec)
    elif ":" in spec:
        model = _import_factory(spec)()
        if not isinstance(model, nn.Module):
            raise FcptsError(f"model spec {spec!r} returned {type(model).__name__}, not an nn.Module")
    else:
        known = ", ".join(sorted(BUILTIN_MODELS))
        raise FcptsError(
            f"unknown model spec {spec!r}: expected a built-in name ({known}), "
            "'path/to/file.py:factory' or 'package.module:factory'"
        )
    if weights is not None:
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise FcptsError(f"weights in {weights} do not match model {spec!r}: {exc}") from exc
    return model.to(device).eval()
