"""Layer inputs on the already-pruned model, layer after layer, without a whole forward per layer.

SparseGPT and POT's refit visit the layers in forward order, and each layer reads its inputs on
the model whose earlier layers are already pruned. Running the model from its input up to each
layer costs about L²/2 layer forwards for L layers: on EfficientNet-Lite1 (65 layers) that is
some 30 whole forwards of the calibration set. :class:`Replay` keeps instead the inputs of the
current *unit* of a chain: a chain is a ``nn.Sequential`` (nested ones flattened, as
EfficientNet's ``blocks`` of stages of blocks), whose children run one after the other, each on
the previous one's output. A layer inside unit ``j`` then runs unit ``j`` alone on its cached
inputs, and the cache moves to unit ``j + 1`` by running unit ``j`` once, after its layers are
pruned: about one forward of the model in all (SparseGPT on EfficientNet-Lite1 runs its stem 7
times instead of about 70). The inputs are exactly those of a whole forward (the same ops on the same
tensors), so the results are bit for bit the same.

A layer outside every chain (a stem, a head) uses whole forwards, as before, and so does a chain
whose root or units a whole forward does not call exactly once each (checked on the first batch),
or whose cache would pass :data:`CACHE_BYTES`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .calibration import call_model

#: The most bytes of unit inputs a :class:`Replay` holds for the student and the reference together.
CACHE_BYTES = 8 << 30


class StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


def run_until_stop(model: nn.Module, inputs: Any) -> None:
    """``model(inputs)``, ended early by a hook's :class:`StopForward`."""
    with contextlib.suppress(StopForward):
        call_model(model, inputs)


def _is_chain(module: nn.Module) -> bool:
    """A ``nn.Sequential`` whose forward is Sequential's own: its children run one on the other's output."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def chains(model: nn.Module) -> list[tuple[str, list[str]]]:
    """``(root, units)`` of every outermost chain of ``model`` (:func:`_is_chain`), nested chains flattened.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    >>> chains(nn.ModuleDict({"body": net}))
    [('body', ['body.0', 'body.1.0', 'body.1.1'])]
    """

    def units(prefix: str, seq: nn.Module) -> list[str]:
        out = []
        for child, module in seq.named_children():
            name = f"{prefix}.{child}" if prefix else child
            out.extend(units(name, module) if _is_chain(module) else [name])
        return out

    found: list[tuple[str, list[str]]] = []
    todo = [("", model)]
    while todo:
        prefix, module = todo.pop(0)
        if _is_chain(module):
            found.append((prefix, units(prefix, module)))
            continue
        todo.extend((f"{prefix}.{child}" if prefix else child, sub) for child, sub in module.named_children())
    return found


class Replay:
    """The calibration batches replayed for one layer at a time, in forward order (see the module).

    ``epoch()`` gives the batches afresh (e.g. ``Calibration.epoch``): a layer outside every chain
    reads them as they stream, as a whole forward would; a chain holds them from its capture on.
    ``feeds(name)`` gives ``(student root, its input, reference root, its input, batch)``: run
    the roots until the layer's hook stops them. ``reference`` is the dense model (POT's refit);
    its cache moves with the student's.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> replay = Replay(net, lambda: [torch.ones(4, 2)])
    >>> [type(root).__name__ for root, *_ in replay.feeds("2")]
    ['Linear']
    """

    def __init__(
        self, model: nn.Module, epoch: Callable[[], Iterable[Any]], reference: nn.Module | None = None
    ) -> None:
        self.model, self.reference, self.epoch = model, reference, epoch
        self.batches: list[Any] = []  # one epoch, held once a chain is captured
        self.units: dict[str, tuple[int, int]] = {}  # unit name → (chain, position)
        found = chains(model)
        self.roots = [root for root, _ in found]
        self.chains = [units for _, units in found]
        for c, chain in enumerate(self.chains):
            self.units.update({unit: (c, j) for j, unit in enumerate(chain)})
        self.at: tuple[int, int] | None = None  # the unit whose inputs are cached
        self.cached: list[Any] = []
        self.cached_ref: list[Any] = []
        self.broken: set[int] = set()  # chains found not to run once per forward, or too large to cache

    def feeds(self, name: str) -> Iterable[tuple[nn.Module, Any, nn.Module | None, Any, Any]]:
        """What to run for layer ``name``, batch by batch (see the class). Call it before hooking the
        layer: moving the cache runs forwards that the layer's hooks must not see."""
        place = self._unit_of(name)
        if place is None or place[0] in self.broken or not self._move_to(place):
            return ((self.model, batch, self.reference, batch, batch) for batch in self.epoch())
        unit = self._module(self.model, place)
        ref_unit = None if self.reference is None else self._module(self.reference, place)
        refs = self.cached_ref if self.reference is not None else [None] * len(self.cached)
        return [(unit, x, ref_unit, ref_x, b) for x, ref_x, b in zip(self.cached, refs, self.batches, strict=True)]

    def _unit_of(self, name: str) -> tuple[int, int] | None:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            place = self.units.get(".".join(parts[:k]))
            if place is not None:
                return place
        return None

    def _module(self, model: nn.Module, place: tuple[int, int]) -> nn.Module:
        return model.get_submodule(self.chains[place[0]][place[1]])

    def _move_to(self, place: tuple[int, int]) -> bool:
        """Cache the inputs of unit ``place``; False (chain marked broken) if that cannot be done."""
        chain, position = place
        stale = self.at is None or self.at[0] != chain or self.at[1] > position
        if stale and not self._capture(chain):
            self.broken.add(chain)
            self.at, self.cached, self.cached_ref = None, [], []
            return False
        assert self.at is not None
        while self.at[1] < position:  # the earlier units' layers are final: run each once
            self.cached = [call_model(self._module(self.model, self.at), x) for x in self.cached]
            if self.reference is not None:
                self.cached_ref = [call_model(self._module(self.reference, self.at), x) for x in self.cached_ref]
            self.at = (chain, self.at[1] + 1)
        return True

    def _capture(self, chain: int) -> bool:
        """The inputs of the chain's first unit on every batch, from whole forwards stopped there."""
        if not self.batches:
            self.batches = list(self.epoch())
        if not self.batches or not _runs_once(self.model, [self.roots[chain], *self.chains[chain]], self.batches[0]):
            return False
        self.cached = _unit_inputs(self.model, self.chains[chain][0], self.batches)
        self.cached_ref = []
        if self.reference is not None:
            self.cached_ref = _unit_inputs(self.reference, self.chains[chain][0], self.batches)
        sizes = [_nbytes(x) for x in self.cached + self.cached_ref]
        if any(size is None for size in sizes) or sum(s or 0 for s in sizes) > CACHE_BYTES:
            return False
        self.at = (chain, 0)
        return True


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


def _unit_inputs(model: nn.Module, unit: str, batches: list[Any]) -> list[Any]:
    """The one positional input of ``unit`` on each batch; an empty list if it is not called exactly once."""
    seen: list[Any] = []

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0] if len(args) == 1 else None)
        raise StopForward

    handle = model.get_submodule(unit).register_forward_pre_hook(hook)
    try:
        out = []
        for batch in batches:
            seen.clear()
            run_until_stop(model, batch)
            if len(seen) != 1 or seen[0] is None:
                return []
            out.append(seen[0].detach() if isinstance(seen[0], torch.Tensor) else seen[0])
        return out
    finally:
        handle.remove()


def _nbytes(x: Any) -> int | None:
    """Bytes of a cached tensor input; None for anything else (not cached: whole forwards instead)."""
    return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else None
