"""Layer inputs on the already-pruned model, layer after layer, without a whole forward per layer.

SparseGPT and POT's refit visit the layers in forward order, and each layer reads its inputs on
the model whose earlier layers are already pruned. Running the model from its input up to each
layer costs about L²/2 layer forwards for L layers: on EfficientNet-Lite1 (65 layers) that is
some 30 whole forwards of the calibration set. :class:`Replay` keeps instead the inputs of the
current *unit* of a chain (:mod:`~fcpts.core.chains`): a ``nn.Sequential`` whose children run one
after the other, each on the previous one's output, or a ``nn.ModuleList`` that its parent calls
member by member the same way, with the same other arguments (a transformer's blocks and their
attention mask). A layer inside unit ``j`` then runs unit ``j`` alone on its cached call, and the
cache moves to unit ``j + 1`` by running unit ``j`` once, after its layers are pruned: about one
forward of the model in all (SparseGPT on EfficientNet-Lite1 runs its stem 7 times instead of
about 70; on a 6-block BERT encoder the embeddings run once per batch instead of once per layer).
The calls are exactly those of a whole forward (the same ops on the same tensors), so the results
are bit for bit the same.

A layer outside every chain (a stem, a head) uses whole forwards, as before, and so does a chain
that a whole forward does not run as one (checked on the first batch: :func:`~.chains.verify`),
whose cache would pass :data:`CACHE_BYTES`, or whose unit changes its cached inputs in place (a
rerun would not see what a whole forward sees); the chains inside such a chain's units take over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .calibration import call_model
from .chains import Call, Chain, chains, first_output, tensor_bytes, verify, versions

#: The most bytes of unit inputs a :class:`Replay` holds for the student and the reference together.
CACHE_BYTES = 8 << 30


class StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


def run_until_stop(model: nn.Module, inputs: Any) -> None:
    """``model(inputs)``, ended early by a hook's :class:`StopForward`."""
    with contextlib.suppress(StopForward):
        call_model(model, inputs)


class BoundUnit(nn.Module):
    """A unit with the other arguments of its call bound: ``BoundUnit(unit, args, kwargs)(x)`` is
    ``unit(x, *args, **kwargs)``; what :meth:`Replay.feeds` hands out for a list chain's unit.

    >>> BoundUnit(nn.Identity(), (), {})(torch.ones(1)).tolist()
    [1.0]
    """

    def __init__(self, unit: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.unit, self.args, self.kwargs = unit, args, kwargs

    def forward(self, x: Any) -> Any:
        return self.unit(x, *self.args, **self.kwargs)


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
        self.chains: list[Chain] = []
        self.units: dict[str, tuple[int, int]] = {}  # unit name → (chain, position)
        self._add(chains(model))
        self.at: tuple[int, int] | None = None  # the unit whose calls are cached
        self.cached: list[Call] = []  # per batch: unit `at`'s (first input, other args, kwargs)
        self.cached_ref: list[Call] = []
        self.stamps: list[list[int | None]] = []  # the cached tensors' versions when cached
        self.broken: set[int] = set()  # chains found not to run as chains, or too large to cache

    def feeds(self, name: str) -> Iterable[tuple[nn.Module, Any, nn.Module | None, Any, Any]]:
        """What to run for layer ``name``, batch by batch (see the class). Call it before hooking the
        layer: moving the cache runs forwards that the layer's hooks must not see."""
        place = self._unit_of(name)
        while place is not None and place[0] not in self.broken and not self._move_to(place):
            place = self._unit_of(name)  # the chain broke: a chain inside its unit may hold the layer
        if place is None or place[0] in self.broken:
            return ((self.model, batch, self.reference, batch, batch) for batch in self.epoch())
        student = [_bound(self._module(self.model, place), call) for call in self.cached]
        if self.reference is None:
            return [(root, x, None, None, b) for (root, x), b in zip(student, self.batches, strict=True)]
        dense = [_bound(self._module(self.reference, place), call) for call in self.cached_ref]
        return [(*s, *d, b) for s, d, b in zip(student, dense, self.batches, strict=True)]

    def _add(self, found: list[Chain]) -> None:
        for chain in found:
            self.units.update({unit: (len(self.chains), j) for j, unit in enumerate(chain.units)})
            self.chains.append(chain)

    def _unit_of(self, name: str) -> tuple[int, int] | None:
        """The innermost unit holding layer ``name`` (a broken chain's units hold later-found chains)."""
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            place = self.units.get(".".join(parts[:k]))
            if place is not None:
                return place
        return None

    def _module(self, model: nn.Module, place: tuple[int, int]) -> nn.Module:
        return model.get_submodule(self.chains[place[0]].units[place[1]])

    def _move_to(self, place: tuple[int, int]) -> bool:
        """Cache the calls of unit ``place``; False (chain marked broken) if that cannot be done."""
        chain, position = place
        stale = self.at is None or self.at[0] != chain or self.at[1] > position
        # A unit that changed a cached tensor in place (x.mul_ before its layers) would see it changed
        # again when rerun; the runs so far read it before the change, as a whole forward does.
        if (stale and not self._capture(chain)) or not self._intact():
            self.broken.add(chain)
            # Its units may hold chains of their own (a list of Sequentials called on different inputs).
            self._add([c for unit in self.chains[chain].units for c in chains(self.model.get_submodule(unit), unit)])
            self.at, self.cached, self.cached_ref, self.stamps = None, [], [], []
            return False
        assert self.at is not None
        while self.at[1] < position:  # the earlier units' layers are final: run each once
            self.cached = [self._step(self.model, call) for call in self.cached]
            if self.reference is not None:
                self.cached_ref = [self._step(self.reference, call) for call in self.cached_ref]
            self.at = (chain, self.at[1] + 1)
            self.stamps = self._versions()
        return True

    def _versions(self) -> list[list[int | None]]:
        return [versions(call) for call in self.cached + self.cached_ref]

    def _intact(self) -> bool:
        """True if no run changed a cached tensor in place since it was cached."""
        return self._versions() == self.stamps

    def _step(self, model: nn.Module, call: Call) -> Call:
        """The next unit's call: unit ``at`` run on ``call``, its output (a list chain: its ``[0]``) as input."""
        assert self.at is not None
        x, args, kwargs = call
        out = self._module(model, self.at)(x, *args, **kwargs)
        return (first_output(out) if self.chains[self.at[0]].listed else out), args, kwargs

    def _capture(self, chain: int) -> bool:
        """The calls of the chain's first unit on every batch, from whole forwards stopped there."""
        if not self.batches:
            self.batches = list(self.epoch())
        found = self.chains[chain]
        if not self.batches or not verify(self.model, found, self.batches[0]):
            return False
        self.cached = _unit_calls(self.model, found, self.batches)
        self.cached_ref = []
        if self.reference is not None:
            self.cached_ref = _unit_calls(self.reference, found, self.batches)
        captured = [self.cached] + ([self.cached_ref] if self.reference is not None else [])
        if any(len(calls) != len(self.batches) for calls in captured):
            return False  # a batch did not reach the first unit, or not as its chain calls it
        sizes = [tensor_bytes(call) for call in self.cached + self.cached_ref]
        if any(size is None for size in sizes) or sum(s or 0 for s in sizes) > CACHE_BYTES:
            return False
        self.at, self.stamps = (chain, 0), self._versions()
        return True


def _bound(unit: nn.Module, call: Call) -> tuple[nn.Module, Any]:
    """``(root, x)`` with ``root(x)`` the cached call: the unit itself, or it with the other arguments bound."""
    x, args, kwargs = call
    return (unit if not args and not kwargs else BoundUnit(unit, args, kwargs)), x


def _unit_calls(model: nn.Module, chain: Chain, batches: list[Any]) -> list[Call]:
    """The call of the chain's first unit on each batch; an empty list if a batch does not call it as the chain does.

    A Sequential's unit gets one positional input; a list chain's unit its first input and the rest.
    """
    seen: list[Call | None] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        plain = len(args) == 1 and not kwargs
        seen.append((args[0], args[1:], dict(kwargs)) if args and (chain.listed or plain) else None)
        raise StopForward

    handle = model.get_submodule(chain.units[0]).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out: list[Call] = []
        for batch in batches:
            seen.clear()
            run_until_stop(model, batch)
            call = seen[0] if len(seen) == 1 else None
            if call is None:
                return []
            x = call[0].detach() if isinstance(call[0], torch.Tensor) else call[0]
            out.append((x, call[1], call[2]))
        return out
    finally:
        handle.remove()
