"""One registry type for every plug-in kind: methods, allocations, importance scores, model and data
specs, export formats, sparse kernels, reconstruction losses, KDE bandwidth rules and densities.

A plug-in registers itself in its own module (``@METHODS.register("wanda")``); a registry never
imports its plug-ins. Lookups of an unknown name raise one :class:`~fcpts.errors.FcptsError`
that names the kind and the choices.

>>> colours = Registry("colour")
>>> colours.register("red", (255, 0, 0))
(255, 0, 0)
>>> @colours.register("blue")
... def _blue():
...     return (0, 0, 255)
>>> colours.names(), "red" in colours, colours.get("blue")()
(['blue', 'red'], True, (0, 0, 255))
>>> colours.get("green")
Traceback (most recent call last):
...
fcpts.errors.FcptsError: unknown colour 'green'; choose from blue, red
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from .errors import FcptsError

T = TypeVar("T")

#: ``register(name)`` without an item: the decorator form (None is a value one may register).
_DECORATE = object()


class Registry(Generic[T]):
    """Name → plug-in, in registration order; a read-only mapping apart from :meth:`register`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, item: T) -> T: ...
    def register(self, name: str, item: Any = _DECORATE) -> Any:
        """Register ``item`` as ``name`` (returns it), or as a decorator without ``item``.

        Registering a name again replaces the earlier entry (a user may override a built-in).
        """
        if item is not _DECORATE:
            self._items[name] = item
            return item

        def decorate(obj: T) -> T:
            self._items[name] = obj
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a plug-in registered for a test); unknown names are an error."""
        self.get(name)
        del self._items[name]

    def get(self, name: str) -> T:
        """The plug-in registered as ``name``; one :class:`FcptsError` naming the choices otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise FcptsError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """``(name, plug-in)`` pairs in registration order."""
        return list(self._items.items())

    def values(self) -> list[T]:
        return list(self._items.values())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
