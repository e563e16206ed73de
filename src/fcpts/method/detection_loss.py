"""The ``detection`` reconstruction loss: a detector's raw outputs distilled, anchor by anchor.

On the :class:`~fcpts.models.detection.HeadOutputs` of the dense teacher ``t`` and the sparse
student ``s`` (``(N, anchors, ·)`` tensors, and the feature maps):

* classification: per anchor, the KL divergence between the teacher's and the student's class
  distributions at temperature ``T`` (times ``T²``): Bernoulli per class for sigmoid heads
  (``cls_logits``, ``bbox_ctrness``, ``objectness``), categorical for softmax heads
  (``softmax_logits``: SSD, the ROI head), summed over the classes;
* box regression (``bbox_regression``, ``rpn_bbox_regression``): smooth-L1 between the outputs;
* both weighted per anchor by the teacher's foreground probability ``w`` (its largest class
  probability, or ``1 − p(background)``) plus ``background_weight``, and normalised by ``Σ w``:
  the few anchors on objects, whose outputs become detections, count as much as the thousands of
  background anchors together — as RetinaNet and FCOS normalise by their positive anchors;
* optionally (``feature`` weight) the feature maps' MSE relative to the teacher's mean square.

``DETECTION_WEIGHTS`` are the default term weights (measured: ``benchmarks/bench_detection.py``
notes). :func:`make_detection_loss` builds one with other weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import FcptsError
from .losses import RECONSTRUCTION_LOSSES

#: Default weights of the classification, box-regression and feature terms, and of every anchor.
DETECTION_WEIGHTS = {"cls": 1.0, "box": 1.0, "feature": 0.0, "background_weight": 0.01}

SIGMOID_KEYS = ("cls_logits", "bbox_ctrness", "objectness")
SOFTMAX_KEYS = ("softmax_logits",)
BOX_KEYS = ("bbox_regression", "rpn_bbox_regression")


def _bernoulli_kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(Bernoulli(σ(t)) ‖ Bernoulli(σ(s)))`` from logits (0 where equal)."""
    p = torch.sigmoid(t)
    return p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))


def _per_anchor(t: torch.Tensor) -> torch.Tensor:
    """``(N, A)`` from ``(N, A, C)``, ``(N, A)`` as is."""
    return t if t.dim() == 2 else t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def foreground(teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher's foreground probability per anchor ``(N, A)`` of its main classification output."""
    if "cls_logits" in teacher:
        return torch.sigmoid(teacher["cls_logits"].float()).amax(-1)
    if "softmax_logits" in teacher:
        return 1 - torch.softmax(teacher["softmax_logits"].float(), -1)[..., 0]
    raise FcptsError("detection outputs without cls_logits or softmax_logits")


def make_detection_loss(
    cls: float = 1.0, box: float = 1.0, feature: float = 0.0, background_weight: float = 0.01
) -> Callable[[Any, Any, float], torch.Tensor]:
    """A ``detection`` loss ``fn(student outputs, teacher outputs, temperature)`` with these term weights."""

    def detection_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], temperature: float = 1.0):
        if not isinstance(student, dict) or not isinstance(teacher, dict):
            raise FcptsError(
                "the detection loss compares a detector's raw outputs (torchvision detectors), "
                f"not a {type(student).__name__}: use --loss kl, cosine or mse for this model"
            )
        T = temperature
        w = foreground(teacher) + background_weight
        norm = w.sum().clamp(min=1e-6)
        total = torch.zeros((), device=w.device)
        for key, value in teacher.items():
            s, t = student[key].float(), value.float()
            if key in SIGMOID_KEYS:
                term = cls * T * T * _per_anchor(_bernoulli_kl(s / T, t / T))
            elif key in SOFTMAX_KEYS:
                kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none")
                term = cls * T * T * kl.sum(-1)
            elif key in BOX_KEYS:
                if s.shape[:2] != w.shape:  # an RPN's anchors are not the head's: unweighted
                    total = total + box * F.smooth_l1_loss(s, t, reduction="sum") / s.shape[0] / max(1, s.shape[1])
                    continue
                term = box * _per_anchor(F.smooth_l1_loss(s, t, reduction="none"))
            elif key.startswith("features."):
                if feature:
                    total = total + feature * F.mse_loss(s, t) / t.pow(2).mean().clamp(min=1e-12)
                continue
            else:
                continue
            if term.shape == w.shape:
                total = total + (term * w).sum() / norm
            else:  # e.g. the RPN's objectness: its own anchors, mean per image
                total = total + term.sum() / term.shape[0] / max(1, term.shape[1])
        return total

    detection_loss.whole_output = True  # type: ignore[attr-defined]  # takes the whole dict of outputs
    return detection_loss


RECONSTRUCTION_LOSSES.register("detection", make_detection_loss(**DETECTION_WEIGHTS))
