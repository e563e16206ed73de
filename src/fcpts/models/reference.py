"""The built-in reference models: ``refcnn`` (a small ResNet) and ``refvit`` (:mod:`.vit`), for
1×28×28 Fashion-MNIST images, with their committed weights (``models/weights/``, trained by
``scripts/train_reference.py`` and ``scripts/train_vit.py``)."""

from __future__ import annotations

import torch
from torch import nn

from .specs import BUILTIN_MODELS, BuiltinModel, load_model

#: Fashion-MNIST pixel mean and standard deviation (training split, pixels in [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


class Normalize(nn.Module):
    """``(x - mean) / std`` with fixed buffers, so the model takes images in ``[0, 1]``."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convs with BatchNorm and a (projected) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReferenceCNN(nn.Module):
    """The reference model: a small ResNet for 1×28×28 images (304k parameters, 10 classes).

    stem 3×3 conv (16) at 28×28 → blocks of 32 @14×14, 64 @7×7, 128 @4×4 → global pool → Linear.
    Prunable layers: 10 convs and the classifier, 303k weights.

    >>> ReferenceCNN()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.normalize = Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.layer1 = BasicBlock(widths[0], widths[1], 2)
        self.layer2 = BasicBlock(widths[1], widths[2], 2)
        self.layer3 = BasicBlock(widths[2], widths[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _reference_vit() -> nn.Module:
    from .vit import ReferenceViT  # vit imports this module (Normalize)

    return ReferenceViT()


BUILTIN_MODELS.register("refcnn", BuiltinModel(ReferenceCNN, "refcnn_fashion_mnist.safetensors"))
BUILTIN_MODELS.register("refvit", BuiltinModel(_reference_vit, "refvit_fashion_mnist.safetensors"))


def load_reference_model(device: str | torch.device = "cpu") -> nn.Module:
    """The reference CNN with its committed Fashion-MNIST weights, in eval mode.

    >>> model = load_reference_model()
    >>> sum(p.numel() for p in model.parameters()) > 300_000
    True
    """
    return load_model("refcnn", device=device)
