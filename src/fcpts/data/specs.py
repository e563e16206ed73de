"""Datasets for calibration and evaluation: Fashion-MNIST, ``npz:``, ``imagefolder:``, ``text:`` (and ``hf-dataset:``).

Every loader returns a :class:`Split` of float32 images in ``[0, 1]`` shaped ``(N, C, H, W)``
and, where known, int64 labels ``(N,)``. Normalisation belongs to the model (the reference CNN
carries its own), so one data spec serves any model; ``imagefolder:`` can add a standard
``--normalize imagenet`` for ecosystem models that expect it. ``text:FILE`` gives tokenizer
outputs instead: ``x`` is a dict of ``(N, T)`` tensors (``input_ids``, ``attention_mask``, ...).

Spec prefixes are registered with :func:`register_data_spec`, each by its own module:
:mod:`.fashion_mnist`, :mod:`.npz`, :mod:`.images` (``imagefolder:``), :mod:`.text` and
:mod:`.hf_datasets` (``hf-dataset:DIR``, a ``datasets`` ``save_to_disk`` directory).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.calibration import rows
from ..errors import FcptsError
from ..registry import Registry


@dataclass
class Split:
    """Images ``x`` (N, C, H, W) float32 in [0, 1] (or a dict of token tensors) and optional labels ``y`` (N,).

    ``classes`` is how many classes the labels name, where the data spec knows it (Fashion-MNIST: 10):
    a model with another number of outputs is judged by fidelity to the dense model, not top-1.
    """

    x: torch.Tensor | dict[str, torch.Tensor]
    y: torch.Tensor | None = None
    classes: int | None = None

    def __len__(self) -> int:
        return len(next(iter(self.x.values()))) if isinstance(self.x, dict) else len(self.x)

    def first(self, n: int) -> Split:
        """The first ``n`` samples (all of them when there are fewer), in order.

        >>> len(Split(torch.zeros(5, 2)).first(3)), len(Split(torch.zeros(2, 2)).first(3))
        (3, 2)
        """
        if n >= len(self):
            return self
        return dataclasses.replace(self, x=rows(self.x, slice(0, n)), y=None if self.y is None else self.y[:n])

    def subset(self, n: int | None, seed: int) -> Split:
        """``n`` samples drawn without replacement by ``seed`` (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(rows(self.x, idx), None if self.y is None else self.y[idx], self.classes)


@dataclass
class DataSource:
    """A calibration split (labels unused) and an evaluation split (labels used if present)."""

    name: str
    calibration: Split
    evaluation: Split


@dataclass(frozen=True)
class DataOptions:
    """Everything a data spec may use besides its argument; each loader reads the fields it needs."""

    data_dir: str | None = None  # fashion-mnist: the IDX directory
    image_size: int | None = None  # images: resize to a square
    channels: int | None = None  # images: 1 (grayscale) or 3 (RGB)
    crop: int | None = None  # images: central square crop after the resize
    normalize: str | None = None  # images: a NORMALIZATIONS name, or "none"
    tokenizer: Any = None  # text: the model's tokenizer ...
    tokenizer_loader: Callable[[], Any] | None = None  # ... or a function that loads it when text is found
    max_length: int = 128  # text: longest token sequence
    split: str | None = None  # hf-dataset: calibration split of a DatasetDict (default "train")
    eval_split: str | None = None  # hf-dataset: evaluation split (default "test", else "validation")
    image_column: str | None = None  # hf-dataset: override the column detection
    text_column: str | None = None
    label_column: str | None = None

    def get_tokenizer(self) -> Any:
        """The tokenizer, loading it now if only a loader was given (None without either)."""
        if self.tokenizer is None and self.tokenizer_loader is not None:
            return self.tokenizer_loader()
        return self.tokenizer


#: ``load(arg, options) -> DataSource``; ``arg`` is the text after ``PREFIX:`` ("" for a spec without one).
DataLoaderFn = Callable[[str, DataOptions], DataSource]


@dataclass(frozen=True)
class DataSpec:
    """A registered data spec: ``PREFIX:ARG`` (or the bare ``PREFIX`` when ``takes_arg`` is False)."""

    prefix: str
    load: DataLoaderFn
    usage: str
    takes_arg: bool = True


#: Spec prefix → loader (:func:`register_data_spec`).
DATA_SPECS: Registry[DataSpec] = Registry("data spec")


def register_data_spec(prefix: str, usage: str, takes_arg: bool = True) -> Callable[[DataLoaderFn], DataLoaderFn]:
    """Decorator: load specs ``PREFIX:ARG`` with ``fn(arg, options) -> DataSource``.

    >>> @register_data_spec("ones", "ones:N (N images of ones)")
    ... def _ones(arg, options):
    ...     split = Split(torch.ones(int(arg), 1, 2, 2))
    ...     return DataSource(f"ones:{arg}", split, split)
    >>> len(load_data("ones:3").calibration)
    3
    >>> DATA_SPECS.unregister("ones")
    """

    def decorate(fn: DataLoaderFn) -> DataLoaderFn:
        DATA_SPECS.register(prefix, DataSpec(prefix, fn, usage, takes_arg))
        return fn

    return decorate


def load_data(
    spec: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    crop: int | None = None,
    normalize: str | None = None,
    tokenizer: object = None,
    max_length: int = 128,
    **options: Any,
) -> DataSource:
    """Resolve a data spec registered with :func:`register_data_spec`: ``fashion-mnist``, ``npz:PATH``,
    ``imagefolder:DIR``, ``text:FILE``, ``hf-dataset:DIR``.

    Keyword ``options`` are the other :class:`DataOptions` fields (``split``, ``text_column``, ...).
    """
    opts = DataOptions(data_dir, image_size, channels, crop, normalize, tokenizer, max_length=max_length, **options)
    prefix, colon, arg = spec.partition(":")
    found = DATA_SPECS.get(prefix) if prefix in DATA_SPECS else None
    if found is not None and (bool(arg) if found.takes_arg else not colon):
        return found.load(arg, opts)
    usages = [f"'{d.usage}'" for d in DATA_SPECS.values()]
    raise FcptsError(f"unknown data spec {spec!r}: expected {', '.join(usages[:-1])} or {usages[-1]}")
