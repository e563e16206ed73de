"""Detection quality by ``pycocotools``: mAP@0.5 (PASCAL VOC's IoU threshold) and mAP@[.5:.95] (COCO's).

:func:`detect` runs a torchvision detector as it is deployed (eval mode, its own post-processing:
score threshold, NMS, top detections); :func:`coco_map` scores the detections against the ground
truth with ``pycocotools.cocoeval.COCOeval`` (101-point interpolated AP, up to 100 detections per
image, ``iscrowd``/``difficult`` objects ignored); :func:`detection_map` is both. ``pycocotools``
is the ``detection`` extra.

>>> gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1])}]
>>> pred = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}]
>>> coco_map(pred, gt)
{'map50': 1.0, 'map': 1.0}
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import FcptsError

Target = dict[str, torch.Tensor]


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise FcptsError(
            "detection mAP needs pycocotools: install fcpts with the 'detection' extra: pip install 'fcpts[detection]'"
        ) from exc
    return COCO, COCOeval


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().double().cpu()
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


def coco_map(predictions: Sequence[Target], targets: Sequence[Target]) -> dict[str, float]:
    """``{"map50", "map"}`` of per-image detections (``boxes`` xyxy, ``labels``, ``scores``) against ``targets``.

    Categories are those of the ground truth; an image set without any object scores 0.
    """
    if len(predictions) != len(targets):
        raise FcptsError(f"{len(predictions)} predictions for {len(targets)} images")
    COCO, COCOeval = _pycocotools()
    images, annotations, labels = [], [], set()
    for i, t in enumerate(targets):
        images.append({"id": i + 1})
        crowd = t.get("iscrowd", torch.zeros(len(t["labels"]), dtype=torch.int64)).tolist()
        for box, label, c in zip(_xywh(t["boxes"]), t["labels"].tolist(), crowd, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": int(c),
                }
            )
            labels.add(int(label))
    if not annotations:
        return {"map50": 0.0, "map": 0.0}
    detections = []
    for i, p in enumerate(predictions):
        for box, label, score in zip(_xywh(p["boxes"]), p["labels"].tolist(), p["scores"].tolist(), strict=True):
            detections.append({"image_id": i + 1, "category_id": int(label), "bbox": box, "score": float(score)})
    if not detections:
        return {"map50": 0.0, "map": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in sorted(labels)]}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    # Rounded to 10 digits: the mean over 101 recall points leaves 1 − 1e-16 for a perfect score.
    return {"map50": round(max(0.0, float(stats[1])), 10), "map": round(max(0.0, float(stats[0])), 10)}


@torch.no_grad()
def detect(detector: nn.Module, images: torch.Tensor, batch_size: int = 32) -> list[Target]:
    """The post-processed detections of ``detector`` (eval mode) on images ``(N, 3, H, W)``, on CPU."""
    device = next(detector.parameters()).device
    was_training = detector.training
    detector.eval()
    out: list[Target] = []
    try:
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size].to(device)
            out += [{k: v.cpu() for k, v in d.items()} for d in detector(list(batch))]
    finally:
        detector.train(was_training)
    return out


def detection_map(detector: nn.Module, images: torch.Tensor, targets: Sequence[Target]) -> dict[str, float]:
    """mAP@0.5 and mAP@[.5:.95] (``{"map50", "map"}``) of ``detector`` on labelled images."""
    return coco_map(detect(detector, images), targets)
