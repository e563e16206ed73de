"""The memory format a run holds a model in: channels_last (NHWC) for convolutional models.

The CPU (oneDNN) and GPU convolution kernels run NHWC faster: on 2 AVX-512 cores a no-grad
forward of EfficientNet-Lite1 (batch 64, 240×240) takes 5.00 s in NCHW and 2.75 s in
channels_last, a forward+backward of the reference CNN (batch 64) 157 → 118 ms. A convolution
whose weight is channels_last returns channels_last whatever its input's layout, so converting the
model is enough; :func:`in_format` also converts image batches where a copy is made anyway.
Every method runs in the format of :attr:`PruneConfig.memory_format <fcpts.PruneConfig>`
(``"auto"``: channels_last iff the model has an ``nn.Conv2d``), and so does evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: The choices of :attr:`PruneConfig.memory_format <fcpts.PruneConfig>`.
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")


def resolve_memory_format(model: nn.Module, option: str = "auto") -> torch.memory_format:
    """The memory format a run uses: ``option``, with ``"auto"`` → channels_last iff ``model`` has a Conv2d.

    >>> resolve_memory_format(nn.Sequential(nn.Conv2d(1, 2, 3)), "auto"), resolve_memory_format(nn.Linear(2, 2), "auto")
    (torch.channels_last, torch.contiguous_format)
    """
    if option == "auto":
        option = "channels_last" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "contiguous"
    return torch.channels_last if option == "channels_last" else torch.contiguous_format


def in_format(inputs: Any, memory_format: torch.memory_format) -> Any:
    """A 4-D tensor batch in ``memory_format`` (other inputs, dicts of token ids, unchanged).

    >>> in_format(torch.zeros(2, 3, 4, 5), torch.channels_last).stride()
    (60, 1, 15, 3)
    """
    if memory_format is torch.channels_last and isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
        return inputs.contiguous(memory_format=memory_format)
    return inputs


@contextlib.contextmanager
def held_in(model: nn.Module, memory_format: torch.memory_format) -> Iterator[nn.Module]:
    """Hold ``model``'s 4-D weights in ``memory_format`` inside the block; contiguous again after it.

    The parameters stay the same objects (their ``.data`` is replaced), so optimizers and hooks
    that hold them keep working. Nothing is done for the contiguous format, nor for a model whose
    4-D weights are all in ``memory_format`` already (a nested use leaves the outer one's format).

    >>> net = nn.Conv2d(1, 2, 3)
    >>> with held_in(net, torch.channels_last):
    ...     net.weight.is_contiguous(memory_format=torch.channels_last)
    True
    >>> net.weight.is_contiguous()
    True
    """
    weights = [p for p in model.parameters() if p.dim() == 4]
    if memory_format is torch.contiguous_format or all(p.is_contiguous(memory_format=memory_format) for p in weights):
        yield model
        return
    model.to(memory_format=memory_format)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
