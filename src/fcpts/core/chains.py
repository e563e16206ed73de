"""Chains of a model: modules that run one after the other, each on the previous one's output.

:class:`~fcpts.core.replay.Replay` caches the inputs of one *unit* of a chain at a time. Two kinds:

* a ``nn.Sequential`` whose forward is Sequential's own (nested ones flattened, as EfficientNet's
  ``blocks`` of stages of blocks): its units call each other by construction;
* a ``nn.ModuleList`` that its parent's forward calls member by member in a loop, with extra
  arguments, as a Hugging Face encoder calls its layers (``encoder.layer``) with the attention mask.
  Nothing in the list says so: :func:`verify` watches a whole forward of a batch with hooks. The
  list is a chain if every member is called exactly once, in order, member ``j + 1``'s first
  positional input IS member ``j``'s output (its ``[0]`` when that is a tuple or list), unchanged
  in place, and every other argument, positional or keyword, is the very object member ``j`` got.
  Unit ``j``'s call is then ``unit(x, *args, **kwargs)``: ``x`` moves on, the rest stays.

The other arguments must be tensors, plain scalars, None or tuples of them: an object such as a
key/value cache may change with every call, and replaying a unit would then not repeat the forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from .calibration import call_model

#: One call of a unit: its first input, its other positional arguments, its keyword arguments.
Call = tuple[Any, tuple[Any, ...], dict[str, Any]]


class Chain(NamedTuple):
    """A chain's root module name, its units in order, and whether it is a ``nn.ModuleList`` (see the module)."""

    root: str
    units: list[str]
    listed: bool = False


def _is_chain(module: nn.Module) -> bool:
    """A ``nn.Sequential`` whose forward is Sequential's own: its children run one on the other's output."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _is_list(module: nn.Module) -> bool:
    """A non-empty ``nn.ModuleList``: a chain if a forward calls it as one (:func:`verify`)."""
    return isinstance(module, nn.ModuleList) and len(module) > 0


def chains(model: nn.Module, prefix: str = "") -> list[Chain]:
    """Every outermost chain of ``model`` (names under ``prefix``), nested Sequential chains flattened.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    >>> found = chains(nn.ModuleDict({"body": net, "heads": nn.ModuleList([nn.ReLU()])}))
    >>> [(chain.root, chain.units, chain.listed) for chain in found]
    [('body', ['body.0', 'body.1.0', 'body.1.1'], False), ('heads', ['heads.0'], True)]
    """

    def units(prefix: str, seq: nn.Module) -> list[str]:
        out = []
        for child, module in seq.named_children():
            name = f"{prefix}.{child}" if prefix else child
            out.extend(units(name, module) if _is_chain(module) else [name])
        return out

    found: list[Chain] = []
    todo = [(prefix, model)]
    while todo:
        prefix, module = todo.pop(0)
        if _is_chain(module):
            found.append(Chain(prefix, units(prefix, module)))
            continue
        if _is_list(module):
            found.append(Chain(prefix, [f"{prefix}.{i}" if prefix else str(i) for i in range(len(module))], True))
            continue
        todo.extend((f"{prefix}.{child}" if prefix else child, sub) for child, sub in module.named_children())
    return found


def verify(model: nn.Module, chain: Chain, batch: Any) -> bool:
    """True if a whole forward of ``batch`` runs ``chain`` as a chain (see the module).

    >>> class Net(nn.Module):
    ...     def __init__(self, glue):
    ...         super().__init__()
    ...         self.layers, self.glue = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)]), glue
    ...     def forward(self, x):
    ...         for layer in self.layers:
    ...             x = self.glue(layer(x))
    ...         return x
    >>> [verify(Net(glue), chains(Net(glue))[0], torch.ones(1, 2)) for glue in (nn.Identity(), nn.ReLU())]
    [True, False]
    """
    if not chain.listed:  # Sequential's forward is the glue: each unit, the root too, is called once
        return _runs_once(model, [chain.root, *chain.units], batch)
    return _list_glue_holds(model, chain.units, batch)


def _runs_once(model: nn.Module, names: list[str], batch: Any) -> bool:
    """True if a whole forward of ``batch`` calls each of the modules ``names`` exactly once."""
    calls = dict.fromkeys(names, 0)

    def counter(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            calls[name] += 1

        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(counter(name)) for name in names]
    try:
        call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return all(count == 1 for count in calls.values())


def _list_glue_holds(model: nn.Module, units: list[str], batch: Any) -> bool:
    """True if a whole forward of ``batch`` calls the modules ``units`` as a list chain (see the module)."""
    # Of the forward so far: members started and finished, the last one's output and its tensor
    # version (an in-place change of an identical object changes it), the last call's other arguments
    # and their versions.
    state: dict[str, Any] = dict(ok=True, started=0, done=0, out=None, version=None, rest=None, rest_versions=None)

    def before(j: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            rest = (args[1:], kwargs)
            # In order, none inside another, and a tensor first input: what the cache holds and moves on.
            ok = state["started"] == state["done"] == j and bool(args) and isinstance(args[0], torch.Tensor)
            ok = ok and _plain(rest) and None not in versions((args, kwargs))
            if ok and j > 0:
                out, prev = state["out"], state["rest"]
                ok = args[0] is out and versions(args[0]) == state["version"]
                ok = ok and _same(rest, prev) and versions(rest) == state["rest_versions"]
            state.update(ok=state["ok"] and ok, started=j + 1, rest=rest, rest_versions=versions(rest))

        return hook

    def after(j: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            out = first_output(output)
            state.update(ok=state["ok"] and state["started"] == j + 1, done=j + 1, out=out, version=versions(out))

        return hook

    modules = [model.get_submodule(name) for name in units]
    handles = [m.register_forward_pre_hook(before(j), with_kwargs=True) for j, m in enumerate(modules)]
    handles += [m.register_forward_hook(after(j)) for j, m in enumerate(modules)]
    try:
        call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return bool(state["ok"]) and state["done"] == len(units)


def first_output(output: Any) -> Any:
    """What a list chain's next unit gets from a unit's ``output``: its ``[0]`` if a tuple or list.

    >>> first_output((torch.zeros(1), None)).shape, first_output(torch.zeros(2)).shape
    (torch.Size([1]), torch.Size([2]))
    """
    return output[0] if isinstance(output, (tuple, list)) and output else output


def _same(a: tuple[tuple[Any, ...], dict[str, Any]], b: tuple[tuple[Any, ...], dict[str, Any]]) -> bool:
    """The same objects, position by position and keyword by keyword."""
    (args_a, kw_a), (args_b, kw_b) = a, b
    return (
        len(args_a) == len(args_b)
        and all(x is y for x, y in zip(args_a, args_b, strict=True))
        and kw_a.keys() == kw_b.keys()
        and all(kw_a[k] is kw_b[k] for k in kw_a)
    )


def _leaves(value: Any) -> list[Any]:
    """The values inside tuples, lists and dicts, depth first."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _plain(rest: tuple[tuple[Any, ...], dict[str, Any]]) -> bool:
    """Other arguments that a call cannot change except in place (checked by version): no lists, no objects."""

    def plain(value: Any) -> bool:
        if isinstance(value, tuple):
            return all(plain(item) for item in value)
        return value is None or isinstance(value, (torch.Tensor, bool, int, float, str, torch.dtype, torch.device))

    args, kwargs = rest
    return plain(args) and all(plain(value) for value in kwargs.values())


def versions(value: Any) -> list[int | None]:
    """The version counters of the tensors in ``value`` (an in-place change bumps them); None for an
    inference tensor (it has none).

    >>> x = torch.zeros(2)
    >>> before = versions((x, {"m": x}))
    >>> x.add_(1) is x, versions((x, {"m": x})) == [v + 1 for v in before]
    (True, True)
    """
    return [None if leaf.is_inference() else leaf._version for leaf in _leaves(value) if isinstance(leaf, torch.Tensor)]


def tensor_bytes(call: Call) -> int | None:
    """Bytes of the tensors of a cached call; None if its first input is no tensor (not cached).

    >>> tensor_bytes((torch.zeros(2, 3), (torch.zeros(4, dtype=torch.uint8), None), {"n": 1}))
    28
    """
    if not isinstance(call[0], torch.Tensor):
        return None
    return sum(t.numel() * t.element_size() for t in _leaves(call) if isinstance(t, torch.Tensor))
