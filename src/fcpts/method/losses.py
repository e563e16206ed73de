"""The losses of FCPTS: reconstruction of the teacher's outputs, and the control of the global sparsity.

``L_rec``: the KL divergence with temperature between the dense teacher's and the sparse student's
logits (``"kl"``), or, for a model whose output holds embeddings rather than logits (a sentence
encoder, ``last_hidden_state``), ``1 − cosine`` (``"cosine"``) or MSE (``"mse"``) on the output
vectors; ``"auto"`` (:func:`resolve_loss`) chooses kl or cosine by the output kind, or the loss an
output names itself (``fcpts_loss``: a detector's raw outputs name ``"detection"``,
:mod:`.detection_loss`). A loss with ``whole_output = True`` receives the whole outputs (a dict).
:data:`RECONSTRUCTION_LOSSES` names them. ``L_c`` (:func:`control_loss`): ``|S − S*|`` or its square.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..core.evaluate import is_logits_output, output_logits
from ..errors import FcptsError
from ..registry import Registry


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch (B, C).

    >>> distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 2.0).item()
    0.0
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``1 − cos(student, teacher)`` along the last dimension, averaged over the rest (B, [T,] D).

    Scale-free like the KL on logits (0 when equal, at most 2), so the control weight λ keeps its
    meaning; ``temperature`` is unused (one signature for every loss).

    >>> cosine_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item()
    1.0
    """
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean squared error between the output vectors (``temperature`` unused).

    >>> mse_loss(torch.zeros(2, 2), torch.ones(2, 2)).item()
    1.0
    """
    return F.mse_loss(student.float(), teacher.float())


#: ``loss`` name → ``fn(student output, teacher output, temperature)``.
RECONSTRUCTION_LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = Registry("loss")
RECONSTRUCTION_LOSSES.register("kl", distillation_loss)
RECONSTRUCTION_LOSSES.register("cosine", cosine_loss)
RECONSTRUCTION_LOSSES.register("mse", mse_loss)


def apply_loss(loss: Callable[..., torch.Tensor], output: Any, target: Any, temperature: float) -> torch.Tensor:
    """``loss`` of the student's ``output`` against the teacher's ``target``: on the whole outputs for a
    loss that reads them (``whole_output``: a detector's dict of raw outputs), else on their logits.

    >>> apply_loss(mse_loss, {"logits": torch.zeros(1, 2)}, torch.ones(1, 2), 1.0).item()
    1.0
    """
    if getattr(loss, "whole_output", False):
        return loss(output, target, temperature)
    return loss(output_logits(output), output_logits(target), temperature)


def resolve_loss(loss: str, output: Any) -> str:
    """The loss for a model output: ``loss`` itself, or for ``"auto"`` kl on logits, cosine on embeddings.

    >>> resolve_loss("auto", torch.zeros(1, 3)), resolve_loss("auto", {"last_hidden_state": 0}), resolve_loss("mse", 0)
    ('kl', 'cosine', 'mse')
    """
    named = getattr(output, "fcpts_loss", None)
    if loss != "auto":
        return loss
    if named is not None:
        return named
    return "kl" if is_logits_output(output) else "cosine"


def is_detections(output: Any) -> bool:
    """True for post-processed detections: a list of per-image dicts with ``boxes`` (a detector in eval mode).

    >>> is_detections([{"boxes": torch.zeros(0, 4)}]), is_detections([torch.zeros(1)]), is_detections([])
    (True, False, False)
    """
    return isinstance(output, (list, tuple)) and bool(output) and isinstance(output[0], dict) and "boxes" in output[0]


def check_output_has_loss(output: Any) -> None:
    """One clear error for a model output that no reconstruction loss fits: post-processed detections.

    Their number and order change with the weights (score threshold, NMS), so the student's boxes
    cannot be compared to the teacher's one by one; the first tensor in them (image 0's boxes) would
    otherwise be taken for the model's output. fcpts wraps a torchvision detector itself to read its
    raw head outputs (:mod:`fcpts.models.detection`), but not a module that calls one.
    """
    if is_detections(output):
        raise FcptsError(
            "this model returns post-processed detections (per-image boxes, labels, scores), which no reconstruction "
            "loss fits: their number changes with the weights. fcpts prunes a torchvision detector (SSD, RetinaNet, "
            "FCOS, Faster R-CNN) on its raw head outputs: pass the detector itself, not a module that calls it"
        )


def check_loss_fits(loss: str, output: Any) -> None:
    """One clear error when the loss ``loss`` does not fit the model's ``output``.

    An output that names its own loss (``fcpts_loss``: a detector's raw outputs) takes a loss that
    reads the whole output (``whole_output``); such a loss takes nothing else. Post-processed
    detections take no loss (:func:`check_output_has_loss`).

    >>> check_loss_fits("kl", torch.zeros(1, 3))
    """
    check_output_has_loss(output)
    named = getattr(output, "fcpts_loss", None)
    whole = getattr(RECONSTRUCTION_LOSSES.get(loss), "whole_output", False)
    if named is not None and not whole:
        raise FcptsError(
            f"the {loss!r} loss does not fit this model's outputs ({type(output).__name__}: a detector's raw "
            f"outputs): use --loss {named} (or auto)"
        )
    if named is None and whole:
        kind = type(output).__name__
        raise FcptsError(f"the {loss!r} loss does not fit this model's outputs (a {kind}, not a detector's)")


def control_loss(global_sparsity: torch.Tensor, target: float, kind: str = "abs") -> torch.Tensor:
    """``|S − S*|`` or ``(S − S*)²``.

    >>> s = torch.tensor(0.7)
    >>> round(control_loss(s, 0.8).item(), 6), round(control_loss(s, 0.8, "squared").item(), 6)
    (0.1, 0.01)
    """
    gap = global_sparsity - target
    return gap.abs() if kind == "abs" else gap * gap
