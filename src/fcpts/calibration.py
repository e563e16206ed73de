"""Calibration data plumbing: whatever the user passes becomes a stream of model inputs.

Accepted: a tensor ``(N, ...)`` (batched by fcpts, shuffled by the seed), a map-style
``Dataset`` (items: an input, or ``(input, label, ...)``), or any re-iterable of batches such as a
``DataLoader``. A batch is a tensor, a dict of tensors (passed as keyword arguments: Hugging Face
style), or a tuple/list whose first element is the input; labels are never used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import FcptsError

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


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict, else ``model(inputs)``."""
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def batch_size_of(inputs: Any) -> int:
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    return len(inputs)


class Calibration:
    """An endless, seeded stream of input batches over the calibration data, on ``device``.

    >>> cal = Calibration(torch.rand(10, 3), batch_size=4, seed=0)
    >>> [inputs.shape[0] for (inputs, _), _ in zip(cal.stream(), range(3))], len(list(cal.epoch()))
    ([4, 4, 4], 3)
    """

    def __init__(self, data: CalibrationData, batch_size: int = 64, seed: int = 0, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_size = batch_size
        if isinstance(data, torch.Tensor):
            if data.ndim == 0 or len(data) == 0:
                raise FcptsError("calibration data is empty")
            self.tensor: torch.Tensor | None = data
            self.source: Iterable[Any] | None = None
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            if len(data) == 0:  # type: ignore[arg-type]
                raise FcptsError("calibration data is empty")
            self.tensor = None
            self.source = DataLoader(data, batch_size=batch_size, shuffle=True, generator=self.generator)
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

    def _batches(self, shuffle: bool) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """One pass: ``(inputs on the device, their row indices)``; indices are None for iterables."""
        if self.tensor is not None:
            n = len(self.tensor)
            order = torch.randperm(n, generator=self.generator) if shuffle else torch.arange(n)
            for i in range(0, n, self.batch_size):
                index = order[i : i + self.batch_size]
                yield self.tensor[index].to(self.device), index
        else:
            assert self.source is not None
            for batch in self.source:
                yield to_device(model_input(batch), self.device), None

    def epoch(self) -> Iterator[Any]:
        """One pass over the data in order, in batches, each moved to the device."""
        for inputs, _ in self._batches(shuffle=False):
            yield inputs

    def stream(self) -> Iterator[tuple[Any, torch.Tensor | None]]:
        """Shuffled ``(inputs, row indices)`` forever; a tensor's last short batch is dropped."""
        while True:
            for inputs, index in self._batches(shuffle=True):
                full = index is None or len(index) == self.batch_size or len(self.tensor) < self.batch_size
                if full:
                    yield inputs, index

    def first(self) -> Any:
        return next(self.epoch())


def check_fits(model: nn.Module, inputs: Any) -> None:
    """Run the model on the first few samples; a shape mismatch becomes one clear FcptsError."""
    probe = inputs[:2] if isinstance(inputs, torch.Tensor) else inputs
    try:
        with torch.no_grad():
            call_model(model, probe)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        shape = tuple(probe.shape[1:]) if isinstance(probe, torch.Tensor) else type(probe).__name__
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FcptsError(f"calibration data of sample shape {shape} does not fit the model: {first_line}") from exc
