"""``refdet``: the reference detector, a small FCOS (torchvision's) on a depthwise-separable backbone.

For 3×160×160 images of the Fashion-MNIST canvas benchmark (:mod:`fcpts.data.detection_canvas`,
10 classes, labels 1..10), with its committed weights trained from random initialisation by
``scripts/train_detector.py`` (no pretrained weights are used anywhere).

backbone: 3×3 conv stem (s2) → depthwise-separable blocks → C3 (32 ch, stride 8), C4 (64, 16),
C5 (96, 32) → FPN (64 channels) → FCOS head (2 convs per tower, GroupNorm), 3 levels with
anchor sizes 4, 8, 16 (FCOS's size ranges: P3 for objects up to ~64 px, P4 up to ~128).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .specs import BUILTIN_MODELS, BuiltinModel

#: Mean and standard deviation of the canvas pixels (per channel, images in [0, 1]).
CANVAS_MEAN, CANVAS_STD = (0.15, 0.15, 0.15), (0.22, 0.22, 0.22)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3×3 (``groups=cin``) then pointwise 1×1, each with BatchNorm and ReLU."""
    return nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1))


class SeparableFPNBackbone(nn.Module):
    """Depthwise-separable stages and an FPN; ``forward`` returns ``{"p3", "p4", "p5"}`` (``out_channels`` each).

    >>> feats = SeparableFPNBackbone()(torch.zeros(1, 3, 160, 160))
    >>> [tuple(f.shape[-2:]) for f in feats.values()]
    [(20, 20), (10, 10), (5, 5)]
    """

    def __init__(self, widths: tuple[int, ...] = (16, 24, 32, 64, 96), out_channels: int = 64) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        w = widths
        self.stem = _conv_bn(3, w[0], 3, 2)  # /2
        self.stage1 = _separable(w[0], w[1], 2)  # /4
        self.stage2 = nn.Sequential(_separable(w[1], w[2], 2), _separable(w[2], w[2], 1))  # /8
        self.stage3 = nn.Sequential(_separable(w[2], w[3], 2), _separable(w[3], w[3], 1))  # /16
        self.stage4 = nn.Sequential(_separable(w[3], w[4], 2), _separable(w[4], w[4], 1))  # /32
        self.fpn = FeaturePyramidNetwork([w[2], w[3], w[4]], out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        c3 = self.stage2(self.stage1(self.stem(x)))
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return self.fpn(OrderedDict([("p3", c3), ("p4", c4), ("p5", c5)]))


def reference_detector(num_classes: int = 11, image_size: int = 160) -> nn.Module:
    """torchvision's FCOS on :class:`SeparableFPNBackbone` (random initialisation; 11 = 10 classes + background).

    >>> det = reference_detector().eval()
    >>> out = det([torch.rand(3, 160, 160)])
    >>> sorted(out[0])
    ['boxes', 'labels', 'scores']
    """
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    backbone = SeparableFPNBackbone()
    anchors = AnchorGenerator(sizes=((4,), (8,), (16,)), aspect_ratios=((1.0,),) * 3)
    head = FCOSHead(backbone.out_channels, 1, num_classes, num_convs=2)
    return FCOS(
        backbone,
        num_classes,
        min_size=image_size,
        max_size=image_size,
        image_mean=list(CANVAS_MEAN),
        image_std=list(CANVAS_STD),
        anchor_generator=anchors,
        head=head,
        score_thresh=0.05,
        detections_per_img=50,
        topk_candidates=200,
    )


BUILTIN_MODELS.register("refdet", BuiltinModel(reference_detector, "refdet_canvas.safetensors"))
