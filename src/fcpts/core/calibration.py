"""Calibration data plumbing: whatever the user passes becomes a stream of model inputs.

Accepted: a tensor ``(N, ...)`` (batched by fcpts, shuffled by the seed), a map-style
``Dataset`` (items: an input, or ``(input, label, ...)``), or any re-iterable of batches such as a
``DataLoader``. A batch is a tensor, a dict of tensors (passed as keyword arguments: Hugging Face
style), or a tuple/list whose first element is the input; labels are never used.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from ..errors import FcptsError
from .checks import check_finite, check_finite_inputs

CalibrationData = torch.Tensor | Dataset | Iterable[Any]


def model_input(batch: Any) -> Any:
    """The model input in a batch: the tensor, the dict, or the first item of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise FcptsError("calibration batch is an empty tuple")
        return batch[0]
    return batch


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move a tensor or a dict of tensors to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def rows(x: Any, index: Any) -> Any:
    """``x[index]`` of a tensor, or of every tensor of a dict (tokenizer outputs: same rows alike).

    >>> rows({"a": torch.arange(4), "b": torch.arange(4) * 10}, slice(1, 3))
    {'a': tensor([1, 2]), 'b': tensor([10, 20])}
    """
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


class TensorDictRows(Dataset):
    """A dict of tensors with the same first dimension (N, ...) as a map-style Dataset of dict rows.

    >>> TensorDictRows({"input_ids": torch.zeros(3, 5), "attention_mask": torch.ones(3, 5)})[0]["input_ids"].shape
    torch.Size([5])
    """

    def __init__(self, data: dict[str, torch.Tensor]) -> None:
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise FcptsError(f"calibration dict tensors differ in length: {sorted(lengths)}")
        self.data = data
        self.n = lengths.pop() if lengths else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def batch_size_of(inputs: Any) -> int:
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    return len(inputs)


def shard(batch: Any, rank: int, world_size: int) -> Any:
    """Part ``rank`` of ``world_size`` contiguous parts of a batch (a tensor, a dict of tensors, or None).

    Part sizes differ by at most one (``torch.tensor_split``); a dict's tensors are split alike.

    >>> [shard(torch.arange(5), r, 2).tolist() for r in (0, 1)]
    [[0, 1, 2], [3, 4]]
    """
    if isinstance(batch, torch.Tensor):
        return torch.tensor_split(batch, world_size)[rank]
    if isinstance(batch, dict):
        return {k: shard(v, rank, world_size) for k, v in batch.items()}
    return batch


class Calibration:
    """An endless, seeded stream of input batches over the calibration data, on ``device``.

    >>> cal = Calibration(torch.rand(10, 3), batch_size=4, seed=0)
    >>> [inputs.shape[0] for (inputs, _), _ in zip(cal.stream(), range(3))], len(list(cal.epoch()))
    ([4, 4, 4], 3)
    """

    def __init__(self, data: CalibrationData, batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.seed = seed
        self.batch_size = batch_size
        self.dataset: Dataset | None = None  # a map-style Dataset, indexed by fcpts (tensor: self.tensor)
        if isinstance(data, dict):  # tokenizer outputs {input_ids (N, T), attention_mask (N, T), ...}
            data = TensorDictRows(data)
        if isinstance(data, torch.Tensor):
            if data.ndim == 0 or len(data) == 0:
                raise FcptsError("calibration data is empty")
            check_finite(data, "calibration data")  # once here; streamed batches are checked as they come
            self.tensor: torch.Tensor | None = data
            self.source: Iterable[Any] | None = None
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            if len(data) == 0:  # type: ignore[arg-type]
                raise FcptsError("calibration data is empty")
            # Indexed and collated here rather than by a shuffling DataLoader: the stream's order is
            # then fcpts' own, recomputable at any position (see stream).
            self.tensor, self.source, self.dataset = None, None, data
        elif isinstance(data, Iterator):
            # A one-shot iterator (a generator) cannot be replayed: keep its batches (calibration
            # sets are small) so that every epoch sees them all.
            self.tensor, self.source = None, list(data)
        elif isinstance(data, Iterable):
            self.tensor, self.source = None, data
        else:
            raise FcptsError(f"cannot use {type(data).__name__} as calibration data")
        if self.source is not None and next(iter(self.source), None) is None:
            raise FcptsError("calibration data is empty")

    @property
    def rows(self) -> int | None:
        """The number of samples of a tensor or Dataset; None for an iterable of batches."""
        if self.tensor is not None:
            return len(self.tensor)
        return None if self.dataset is None else len(self.dataset)  # type: ignore[arg-type]

    def _batches(self, order: torch.Tensor | None = None) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """One pass: ``(inputs on the device, their row indices)``; indices are None for iterables.

        A tensor or Dataset is read in batches of the rows in ``order`` (default: all, in order).
        """
        if self.source is not None:
            for i, batch in enumerate(self.source):
                inputs = to_device(model_input(batch), self.device)
                check_finite_inputs(inputs, f"calibration batch {i}")
                yield inputs, None
            return
        order = torch.arange(self.rows or 0) if order is None else order
        for i in range(0, len(order), self.batch_size):
            index = order[i : i + self.batch_size]
            if self.tensor is not None:
                yield self.tensor[index].to(self.device), index
            else:
                assert self.dataset is not None
                inputs = to_device(model_input(default_collate([self.dataset[j] for j in index.tolist()])), self.device)
                check_finite_inputs(inputs, f"calibration batch {i // self.batch_size}")
                yield inputs, index

    def epoch(self) -> Iterator[Any]:
        """One pass over the data in order, in batches, each moved to the device."""
        for inputs, _ in self._batches():
            yield inputs

    def stream(self, start_step: int = 0, replacement: bool = False) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """``(inputs, row indices)`` forever, from the ``start_step``-th batch on.

        A tensor or Dataset is shuffled: epoch ``e`` reads the ``e``-th permutation drawn from a
        generator seeded by ``seed``, in full batches (the last short batch is dropped, unless the
        data is smaller than one batch). With ``replacement`` every batch is instead
        ``batch_size`` rows drawn uniformly with replacement, from the same seeded generator. The
        batch at any position is thus a function of the seed and the position alone, and a resumed
        run reads the same batches as an uninterrupted one.
        An iterable of batches is read in its own order, again and again; its first ``start_step``
        batches are read and skipped (exact when it yields the same batches on every pass).

        >>> cal = Calibration(torch.arange(10.0).unsqueeze(1), batch_size=3, seed=0)
        >>> [i.tolist() for (_, i), _ in zip(cal.stream(), range(5))][3:] == [
        ...     i.tolist() for (_, i), _ in zip(cal.stream(start_step=3), range(2))]
        True
        """
        if self.source is not None:
            if replacement:
                raise FcptsError("batches drawn with replacement need a tensor or Dataset, not an iterable of batches")
            batches = (batch for _ in itertools.count() for batch in self._batches())
            yield from itertools.islice(batches, start_step, None)
            return
        n = self.rows or 0
        if replacement:
            yield from self._drawn(n, start_step)
            return
        per_epoch = max(1, n // self.batch_size)  # full batches per epoch (one short one if n < batch)
        generator = torch.Generator().manual_seed(self.seed)
        epoch, skip = divmod(start_step, per_epoch)
        for _ in range(epoch):
            torch.randperm(n, generator=generator)  # replay the skipped epochs' draws (cheap: no data)
        while True:
            order = torch.randperm(n, generator=generator)
            yield from self._batches(order[skip * self.batch_size : per_epoch * self.batch_size])
            skip = 0

    def _drawn(self, n: int, start_step: int) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """Batches of ``batch_size`` rows drawn with replacement, from the ``start_step``-th on."""
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(start_step):
            torch.randint(n, (self.batch_size,), generator=generator)  # replay the skipped draws (no data)
        while True:
            yield from self._batches(torch.randint(n, (self.batch_size,), generator=generator))

    def first(self) -> Any:
        return next(self.epoch())


def check_fits(model: nn.Module, inputs: Any, what: str = "calibration data") -> Any:
    """Run the model on the first few samples and return its output; a shape mismatch becomes one clear FcptsError."""
    probe = inputs[:2] if isinstance(inputs, torch.Tensor) else inputs
    try:
        with torch.no_grad():
            return call_model(model, probe)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shape = tuple(probe.shape[1:]) if isinstance(probe, torch.Tensor) else type(probe).__name__
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FcptsError(f"{what} of sample shape {shape} does not fit the model: {first_line}") from exc
