"""The depthwise reference: ``refmobile``, a MobileNetV2-style net for 1×28×28 Fashion-MNIST images.

Inverted-residual blocks (1×1 expand, 3×3 depthwise, 1×1 linear project, BatchNorm, ReLU6), the
architecture whose many small depthwise layers make a layer-wise allocation hard. Its committed
weights (``models/weights/refmobile_fashion_mnist.safetensors``) are trained by
``scripts/train_mobile.py``.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .reference import FASHION_MNIST_MEAN, FASHION_MNIST_STD, Normalize
from .specs import BUILTIN_MODELS, BuiltinModel


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) → BatchNorm (→ ReLU6): the unit of every block."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expand (×``expand``) → 3×3 depthwise (``stride``) → 1×1 linear project; identity add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden, 1)
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1, act=False)  # linear bottleneck: no activation
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class ReferenceMobileNet(nn.Module):
    """A MobileNetV2-style net for 1×28×28 images (10 classes): 6 inverted-residual blocks.

    stem 3×3 conv (16, stride 2) → blocks of 32 @14×14, 64 @7×7, 128 @4×4 (two each, the first of
    the last two with stride 2) → 1×1 conv to 256 → global pool → Linear. Prunable layers: 20 convs
    (6 depthwise) and the classifier.

    >>> model = ReferenceMobileNet()
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    284112
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128), head: int = 256) -> None:
        super().__init__()
        self.normalize = Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        self.stem = _conv_bn(1, widths[0], 3, stride=2)  # 28×28 → 14×14: a step costs a third less
        blocks: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
            blocks += [InvertedResidual(cin, cout, 1 if i == 0 else 2), InvertedResidual(cout, cout, 1)]
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn(widths[-1], head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.normalize(x)))  # (B, 1, 28, 28) → (B, 128, 4, 4)
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))  # (B, classes)


BUILTIN_MODELS.register("refmobile", BuiltinModel(ReferenceMobileNet, "refmobile_fashion_mnist.safetensors"))
