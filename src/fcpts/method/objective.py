"""What fcpts minimises on a batch: ``L = L_rec + feature_weight · L_feat + λ · L_c``.

:class:`_Objective` holds the teacher's outputs (cached once for a tensor calibration set while they
fit :data:`TEACHER_CACHE_BYTES`, else one teacher forward per batch), the feature taps of
``feature_modules`` (block-wise MSE) and the reconstruction loss chosen from the student's first
output; :class:`_Losses` is one step's result and its all-reduced history entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import distributed
from ..core.calibration import Calibration, call_model
from ..core.checks import check_finite
from ..core.evaluate import output_logits
from ..core.memory_format import in_format
from ..errors import FcptsError
from .config import FCPTSConfig
from .losses import (
    RECONSTRUCTION_LOSSES,
    apply_loss,
    check_loss_fits,
    check_output_has_loss,
    control_loss,
    resolve_loss,
)
from .prepare import Prepared
from .speed import cache_dtype, teacher_autocast


class _FeatureTap:
    """Forward hooks that record the outputs of the named modules of one model (removed on close)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise FcptsError(f"feature_modules not found in the model: {', '.join(missing)}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output_logits(output)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


#: Largest teacher-output cache, in bytes, :func:`learn` keeps for tensor calibration data; above
#: it the teacher runs on every batch instead, so memory does not grow with N × output size.
#: 256 MiB holds 4096 samples of a 16k-way float32 output.
TEACHER_CACHE_BYTES = 256 * 2**20


#: How a non-finite teacher output is named in the error (the dense model is the teacher).
TEACHER_OUTPUTS = "the dense model's output on the calibration data"


@torch.no_grad()
def cache_teacher_outputs(
    teacher: nn.Module,
    calibration: Calibration,
    batch_size: int,
    budget_bytes: int,
    *,
    memory_format: torch.memory_format = torch.contiguous_format,
    precision: str = "float32",
) -> torch.Tensor | None:
    """The teacher's outputs on every row of a tensor calibration set, on its device; None to stream.

    One sample gives the output size; the cache (preallocated: no list + concatenate peak) is
    built only if ``N × output size`` fits ``budget_bytes``. The batches go in ``memory_format``;
    a ``"bfloat16"`` ``precision`` runs the teacher under bf16 autocast and keeps the cache in bf16.
    """
    x, device = calibration.tensor, calibration.device
    if x is None:
        return None
    with teacher_autocast(precision, device):
        raw = call_model(teacher, in_format(x[:1].to(device), memory_format))
    if getattr(raw, "fcpts_loss", None) is not None:  # outputs for a whole-output loss (a detector's): streamed
        return None
    check_output_has_loss(raw)  # before image 0's boxes are taken for the first sample's output
    probe = output_logits(raw)  # (1, C...)
    dtype = cache_dtype(precision, probe.dtype)
    if len(x) * probe[0].numel() * dtype.itemsize > budget_bytes:
        return None
    cached = torch.empty((len(x), *probe.shape[1:]), dtype=dtype, device=device)
    for i in range(0, len(x), batch_size):
        with teacher_autocast(precision, device):
            batch = in_format(x[i : i + batch_size].to(device), memory_format)
            cached[i : i + batch_size] = output_logits(call_model(teacher, batch))
    check_finite(cached, TEACHER_OUTPUTS)
    return cached


@dataclass
class _Losses:
    """One step's losses on this rank's shard: the total, its reconstruction and feature parts, and ``S(t)``."""

    total: torch.Tensor
    rec: torch.Tensor
    feature: torch.Tensor
    sparsity: torch.Tensor

    def logged(self, step: int, share: float) -> dict[str, float]:
        """The history entry: the global batch's losses (weighted sum over ranks, as for the gradients)."""
        stats = torch.stack([self.total.detach(), self.rec.detach(), self.feature.detach()]).float() * share
        loss, rec, feature = distributed.all_reduce_sum_(stats).tolist()
        return {"step": step, "loss": loss, "rec": rec, "feature": feature, "sparsity": self.sparsity.item()}


class _Objective:
    """``L = L_rec + feature_weight · L_feat + λ · L_c`` on a batch; a context manager that removes its hooks.

    Without feature matching, the teacher's outputs on a tensor calibration set are computed once
    (N, C) instead of once per step (a quarter of the step time on the reference CNN), while they
    fit :data:`TEACHER_CACHE_BYTES`; otherwise (and for streamed data) once per batch. The
    reconstruction loss is chosen from the student's first output (``"auto"``: logits or embeddings).
    """

    def __init__(
        self,
        prepared: Prepared,
        teacher: nn.Module,
        calibration: Calibration,
        config: FCPTSConfig,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.prepared, self.teacher, self.config = prepared, teacher, config
        self.memory_format, self.device = memory_format, calibration.device
        self.teacher_tap = _FeatureTap(teacher, config.feature_modules)
        self.student_tap = _FeatureTap(prepared.model, config.feature_modules)
        self.reconstruction: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None
        self.cached = None  # (only without feature matching: then the taps hold no hook)
        if calibration.tensor is not None and not config.feature_modules:
            self.cached = cache_teacher_outputs(
                teacher,
                calibration,
                config.batch_size,
                TEACHER_CACHE_BYTES,
                memory_format=memory_format,
                precision=config.teacher_precision,
            )

    def __enter__(self) -> _Objective:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.teacher_tap.close()
        self.student_tap.close()

    def target(self, inputs: Any, index: torch.Tensor | None, whole: bool = False) -> Any:
        """The teacher's outputs on the batch: cached rows, or a forward pass (checked finite); all with ``whole``."""
        if self.cached is not None and index is not None:
            return self.cached[index.to(self.cached.device)]
        with torch.no_grad(), teacher_autocast(self.config.teacher_precision, self.device):
            raw = call_model(self.teacher, inputs)
        target = raw if whole else output_logits(raw)
        for t in target.values() if whole else (target,):
            check_finite(t, TEACHER_OUTPUTS)
        return target

    def __call__(self, inputs: Any, index: torch.Tensor | None) -> _Losses:
        config = self.config
        inputs = in_format(inputs, self.memory_format)
        output = call_model(self.prepared.model, inputs)
        if self.reconstruction is None:
            loss = resolve_loss(config.loss, output)
            check_loss_fits(loss, output)
            self.reconstruction = RECONSTRUCTION_LOSSES[loss]
        whole = getattr(self.reconstruction, "whole_output", False)  # e.g. a detector's dict of raw outputs
        target = self.target(inputs, index, whole)
        rec = apply_loss(self.reconstruction, output, target, config.temperature)
        student, teacher = self.student_tap.outputs, self.teacher_tap.outputs
        feat = sum(
            (F.mse_loss(student[n].float(), teacher[n].float()) for n in config.feature_modules),
            torch.zeros((), device=rec.device),
        )
        sparsity = self.prepared.global_sparsity()
        ctrl = control_loss(sparsity, config.target_sparsity, config.control_loss)
        total = rec + config.feature_weight * feat + config.control_weight * ctrl
        return _Losses(total, rec, feat, sparsity)
