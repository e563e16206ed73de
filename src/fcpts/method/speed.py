"""How a learning step runs, apart from what it computes: the memory format and the teacher's precision.

* ``memory_format``: ``"channels_last"`` stores the student's and teacher's 4-D weights and the
  image batches as NHWC, which the CPU and GPU convolution kernels run faster; ``"contiguous"``
  keeps PyTorch's NCHW; ``"auto"`` (the default) is channels_last for a model with an
  ``nn.Conv2d`` and contiguous otherwise. The model comes back in the contiguous format. Measured
  on 2 AVX-512 cores, one thread, medians of alternating pairs: forward+backward of the prepared
  reference CNN (batch 64, 28×28) 157 → 118 ms, of a MobileNetV2 (timm ``mobilenetv2_100``, random
  weights, batch 8, 224×224) 1021 → 765 ms; the reference CNN's top-1 after 200 steps at 0.9 is
  the same (89.74% vs 89.71% contiguous).
* ``teacher_precision``: ``"bfloat16"`` runs the teacher's no-grad forward under bf16 autocast and
  keeps its cached outputs in bf16 (half the memory); the losses read them as float32. The student
  always learns in float32. The teacher's forward: 26.0 → 12.7 ms (reference CNN, channels_last),
  170 → 93 ms (MobileNetV2); but the reference CNN at 0.9 (200 steps, seeds 0–2) ends at 89.63,
  89.61, 89.84% against 89.74, 89.83, 89.82% in float32, so the default stays ``"float32"``.

``torch.compile`` of the student was tried on the reference CNN: 117 s to compile, then 198 ms a
step against 153 ms eager (the parametrized layers recompile per weight shape), so it is not offered.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

#: The choices of :attr:`FCPTSConfig.memory_format <fcpts.method.config.FCPTSConfig.memory_format>`.
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
#: The choices of :attr:`FCPTSConfig.teacher_precision <fcpts.method.config.FCPTSConfig.teacher_precision>`.
TEACHER_PRECISIONS = ("float32", "bfloat16")


def resolve_memory_format(model: nn.Module, option: str) -> torch.memory_format:
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


def teacher_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context of the teacher's forward: bf16 autocast on ``device`` for ``"bfloat16"``, else nothing."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cache_dtype(precision: str, output_dtype: torch.dtype) -> torch.dtype:
    """The dtype the teacher-output cache is kept in: bf16 for a bf16 teacher, else the output's own."""
    return torch.bfloat16 if precision == "bfloat16" and output_dtype.is_floating_point else output_dtype
