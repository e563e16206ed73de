"""torchvision detectors as models fcpts can prune: their outputs before post-processing, as tensors.

A detector in eval mode returns post-processed boxes (score threshold, NMS, top-k): lists of
dicts that no reconstruction loss can compare, and that move discontinuously with the weights.
:class:`DetectionOutputs` wraps one so that its forward on an image batch ``(N, 3, H, W)`` returns
what the detector computes before that (a :class:`HeadOutputs`, a dict of tensors):

* one-stage detectors (SSD/SSDlite, RetinaNet, FCOS): ``model.transform`` → ``model.backbone`` →
  ``model.head``: ``cls_logits`` (sigmoid per class: RetinaNet, FCOS) or ``softmax_logits``
  (SSD: softmax over the classes and the background), ``bbox_regression`` and FCOS's
  ``bbox_ctrness``, each ``(N, anchors, ·)``;
* two-stage detectors (Faster R-CNN): the RPN head's ``objectness`` and ``rpn_bbox_regression``
  on every anchor, and the ROI box head's ``softmax_logits`` and ``bbox_regression`` on a fixed
  grid of proposal boxes (:func:`grid_proposals`: the same boxes for the dense teacher and the
  sparse student, so the second stage is compared box by box; the detector's own proposals
  depend on the weights). Mask and keypoint heads are not reconstructed;
* ``features.NAME``: every backbone (FPN) feature map.

The wrapper holds the detector's own children under their own names, so its ``state_dict`` and
its layer names are the detector's: masks, reports and weight files carry over unchanged, and
:func:`unwrap` gives back the detector (sharing the pruned layers). :func:`fcpts.prune` wraps a
detector by itself (:func:`wrap`), and returns the detector.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Any

import torch
from torch import nn


class HeadOutputs(dict):
    """A detector's raw outputs (name → tensor); ``fcpts_loss`` names the reconstruction loss that fits them."""

    fcpts_loss = "detection"


def _detection_module() -> Any:
    return sys.modules.get("torchvision.models.detection")


def detector_kind(model: nn.Module) -> str | None:
    """``"one-stage"`` (SSD, RetinaNet, FCOS), ``"two-stage"`` (Faster/Mask R-CNN) or None (not a detector).

    Only a model of torchvision's detection classes is a detector (torchvision is not imported for it).

    >>> detector_kind(nn.Linear(2, 2)) is None
    True
    """
    tv = _detection_module()
    if tv is None:
        return None
    if isinstance(model, (tv.ssd.SSD, tv.retinanet.RetinaNet, tv.fcos.FCOS)):
        return "one-stage"
    if isinstance(model, tv.generalized_rcnn.GeneralizedRCNN):
        return "two-stage"
    return None


def is_detector(model: nn.Module) -> bool:
    """True for a torchvision detector, or for one already wrapped in :class:`DetectionOutputs`."""
    return isinstance(model, DetectionOutputs) or detector_kind(model) is not None


def grid_proposals(height: int, width: int, cells: int = 4, scales: tuple[float, ...] = (0.25, 0.5)) -> torch.Tensor:
    """Fixed proposal boxes ``(R, 4)``: squares of ``scales`` × the shorter side centred on a ``cells``² grid,
    and the whole image.

    >>> grid_proposals(64, 64, cells=2, scales=(0.5,))[[0, 3, 4]].tolist()
    [[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0], [0.0, 0.0, 64.0, 64.0]]
    """
    boxes = []
    for s in scales:
        half = s * min(height, width) / 2
        for i in range(cells):
            for j in range(cells):
                cx, cy = (j + 0.5) * width / cells, (i + 0.5) * height / cells
                boxes.append([max(0.0, cx - half), max(0.0, cy - half), min(width, cx + half), min(height, cy + half)])
    boxes.append([0.0, 0.0, float(width), float(height)])
    return torch.tensor(boxes, dtype=torch.float32)


class DetectionOutputs(nn.Module):
    """A torchvision detector whose forward returns its raw head outputs and feature maps (:class:`HeadOutputs`).

    >>> import torchvision
    >>> det = torchvision.models.detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    >>> out = DetectionOutputs(det.eval())(torch.rand(1, 3, 64, 64))
    >>> list(out)[:3], out["cls_logits"].shape[-1]
    (['cls_logits', 'bbox_regression', 'bbox_ctrness'], 3)
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        kind = detector_kind(detector)
        if kind is None:
            raise TypeError(f"{type(detector).__name__} is not a torchvision detector")
        for name, child in detector.named_children():
            self.add_module(name, child)  # the same modules: the same names, parameters and state dict
        self.__dict__["detector"] = detector  # not a submodule (its children are ours already)
        self.kind = kind

    def forward(self, images: torch.Tensor) -> HeadOutputs:
        det = self.detector
        image_list, _ = det.transform(list(images))
        features = det.backbone(image_list.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        maps = list(features.values())
        out = HeadOutputs()
        if self.kind == "one-stage":
            head = det.head(maps)
            softmax = isinstance(det, _detection_module().ssd.SSD)  # SSD: softmax over background + classes
            out["softmax_logits" if softmax else "cls_logits"] = head["cls_logits"]
            out.update((k, v) for k, v in head.items() if k != "cls_logits")
        else:
            self._two_stage(det, features, maps, image_list.image_sizes, out)
        out.update((f"features.{name}", f) for name, f in features.items())
        return out

    @staticmethod
    def _two_stage(det: Any, features: Any, maps: list[torch.Tensor], sizes: list[tuple[int, int]], out: dict) -> None:
        n = len(sizes)
        objectness, deltas = det.rpn.head(maps)  # per level: (N, A, H, W), (N, 4A, H, W)
        out["objectness"] = torch.cat([o.flatten(1) for o in objectness], 1)
        out["rpn_bbox_regression"] = torch.cat([d.flatten(1) for d in deltas], 1)
        proposals = [grid_proposals(h, w).to(maps[0].device) for h, w in sizes]
        box_features = det.roi_heads.box_head(det.roi_heads.box_roi_pool(features, proposals, sizes))
        class_logits, box_regression = det.roi_heads.box_predictor(box_features)
        out["softmax_logits"] = class_logits.reshape(n, -1, class_logits.shape[-1])
        out["bbox_regression"] = box_regression.reshape(n, -1, box_regression.shape[-1])


def wrap(model: nn.Module) -> nn.Module:
    """``model`` as fcpts prunes it: a detector in :class:`DetectionOutputs`, any other model as it is."""
    if isinstance(model, DetectionOutputs) or detector_kind(model) is None:
        return model
    return DetectionOutputs(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The detector of a :class:`DetectionOutputs` (with the wrapper's children, pruned), or ``model`` itself."""
    if not isinstance(model, DetectionOutputs):
        return model
    detector = model.detector
    for name, child in model.named_children():
        setattr(detector, name, child)  # a method that replaced a child replaced it in the detector too
    return detector.train(model.training)
