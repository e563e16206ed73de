"""What a run reports about its pruned model on the held-out split: top-1, detection mAP, fidelity.

The pipeline (:mod:`fcpts.pipeline`) and ``fcpts eval`` ask the same questions of a model and a
:class:`~fcpts.data.Split`: does its output hold logits (a classifier) or embeddings; do the
labels name the model's classes (else top-1 means nothing: fidelity to the dense model instead);
is it a detector on labelled boxes (mAP); are its weights or the data non-finite.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .core.calibration import check_fits, rows, to_device
from .core.checks import nonfinite_summary
from .core.detection_metrics import detection_map
from .core.evaluate import accuracy, is_logits_output, output_logits
from .data import DetectionSplit, Split
from .errors import FcptsError
from .models.detection import is_detector

#: Held-out samples a classifier's fidelity reads when ``Job.eval_samples`` is None: it runs two
#: models (dense and sparse) on data whose labels mean nothing to them, and 1000 samples give its
#: top-1 agreement to about ±1.5 points, where all 10k Fashion-MNIST test images at 240×240 would
#: take EfficientNet-Lite1 about 15 minutes on 2 cores.
FIDELITY_SAMPLES = 1000


def probe_output(model: nn.Module, split: Split) -> Any:
    """The model's output on the first samples of ``split``; one clear error if it does not fit or holds no tensor."""
    probe = to_device(rows(split.x, slice(0, 2)), next(model.parameters()).device)
    output = check_fits(model, probe, what="the data")
    try:
        logits = output_logits(output)
    except (TypeError, StopIteration, KeyError):
        logits = None
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        kind = type(output).__name__ if logits is None else f"a {logits.dtype} tensor"
        raise FcptsError(f"the model returned {kind}, not float scores or embeddings")
    return output


def outputs_embeddings(model: nn.Module, split: Split) -> bool:
    """True if the model's output on a sample holds embeddings (no logits): report fidelity, not accuracy."""
    return not is_logits_output(probe_output(model, split))


def split_accuracy(model: nn.Module, split: Split) -> float | None:
    """Top-1 on a labelled split of a classifier; None without labels, for an embedding model, or
    when the data names its class count and the model has another (ImageNet logits on Fashion-MNIST)."""
    # An embedding model's argmax is no prediction (e.g. a labelled hf-dataset).
    if split.y is None:
        return None
    output = probe_output(model, split)
    if not is_logits_output(output):
        return None
    logits = output_logits(output)
    if logits.dim() != 2:
        raise FcptsError(f"the model returned scores of shape {tuple(logits.shape)}, not (N, classes)")
    if split.classes is not None and split.classes != logits.shape[1]:
        return None  # the class indices mean nothing to this model: fidelity instead
    labels = split.y
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < logits.shape[1]:
        raise FcptsError(
            f"labels run from {int(labels.min())} to {int(labels.max())} but the model has {logits.shape[1]} classes"
        )
    return accuracy(model, split.x, split.y)


def split_detection_map(model: nn.Module, split: Split) -> dict[str, float] | None:
    """mAP@0.5 and mAP@[.5:.95] (``{"map50", "map"}``) of a detector on a labelled detection split, else None."""
    if not isinstance(split, DetectionSplit) or not split.targets:
        return None
    if not is_detector(model):
        raise FcptsError(
            f"detection data needs a torchvision detector (the model is a {type(model).__name__}): "
            "e.g. refdet or torchvision:ssdlite320_mobilenet_v3_large,num_classes=N"
        )
    return detection_map(model, split.x, split.targets)


def evaluation_warnings(model: nn.Module, split: Split) -> list[str]:
    """Why a top-1 on ``model`` and ``split`` may mean nothing: non-finite weights or inputs."""
    warnings = []
    for name, param in model.named_parameters():
        summary = nonfinite_summary(param.detach())
        if summary is not None:
            warnings.append(f"weight {name!r} holds non-finite values ({summary}): the outputs are not meaningful")
    tensors = split.x.values() if isinstance(split.x, dict) else [split.x]
    for x in tensors:
        summary = nonfinite_summary(x)
        if summary is not None:
            warnings.append(f"the evaluation data holds non-finite values ({summary})")
    return warnings
