"""How a learning step runs, apart from what it computes: the teacher's precision (the memory format
is every method's: :mod:`fcpts.core.memory_format`).

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

#: The choices of :attr:`FCPTSConfig.teacher_precision <fcpts.method.config.FCPTSConfig.teacher_precision>`.
TEACHER_PRECISIONS = ("float32", "bfloat16")


def teacher_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context of the teacher's forward: bf16 autocast on ``device`` for ``"bfloat16"``, else nothing."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cache_dtype(precision: str, output_dtype: torch.dtype) -> torch.dtype:
    """The dtype the teacher-output cache is kept in: bf16 for a bf16 teacher, else the output's own."""
    return torch.bfloat16 if precision == "bfloat16" and output_dtype.is_floating_point else output_dtype
