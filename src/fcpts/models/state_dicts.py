"""State dicts from files: read safetensors or ``torch.save`` files without unpickling anything
(:func:`load_state_dict`), check that one fits a model (:func:`check_state_dict_fits`, one line
naming the first few problems), and map a checkpoint whose keys differ only in naming
(:data:`KEY_MAPS`: ``order`` pairs entries by position, every shape checked).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import FcptsError
from ..registry import Registry


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


def map_by_order(
    state: dict[str, torch.Tensor], model: nn.Module, source: str, model_name: str = "the model"
) -> dict[str, torch.Tensor]:
    """``state`` renamed to ``model``'s keys by position: the i-th entry of the file is the i-th of the
    model's ``state_dict()`` (parameters, buffers, BatchNorm's running stats and ``num_batches_tracked``).

    For a checkpoint of the same architecture in another naming (``_blocks.0._depthwise_conv`` vs
    ``blocks.0.0.conv_dw``). The counts must match and every pair's shape must agree, else one
    :class:`FcptsError` names the first pair that does not.

    >>> a = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    >>> b = nn.ModuleDict({"first": nn.Linear(2, 3), "second": nn.Linear(3, 1)})
    >>> list(map_by_order(a.state_dict(), b, "a.pt"))
    ['first.weight', 'first.bias', 'second.weight', 'second.bias']
    >>> map_by_order(a.state_dict(), nn.Linear(2, 3), "a.pt")
    Traceback (most recent call last):
    ...
    fcpts.errors.FcptsError: weights in a.pt do not map onto the model by order: 4 entries in the file, 2 in the model
    """
    expected = model.state_dict()
    problem = None
    for i, ((src, tensor), (dst, want)) in enumerate(zip(state.items(), expected.items(), strict=False)):
        if tensor.shape != want.shape or tensor.is_floating_point() != want.is_floating_point():
            found, wanted = f"{tuple(tensor.shape)} {tensor.dtype}", f"{tuple(want.shape)} {want.dtype}"
            problem = f"entry {i}, {src} {found} in the file vs {dst} {wanted} in the model"
            break
    if problem is None and len(state) != len(expected):
        problem = f"{len(state)} entries in the file, {len(expected)} in the model"
    if problem is not None:
        raise FcptsError(f"weights in {source} do not map onto {model_name} by order: {problem}")
    return dict(zip(expected, state.values(), strict=True))


#: ``--weights-map`` choices: name → ``map(state, model, source, model_name) -> state in the model's names``.
KEY_MAPS: Registry[Callable[..., dict[str, torch.Tensor]]] = Registry("weights map")
KEY_MAPS.register("order", map_by_order)
