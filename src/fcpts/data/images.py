"""Images: the ``imagefolder:DIR`` data spec (``DIR/<class>/<image>``) and the preprocessing every
image spec shares (resize, central crop, channels, a named per-channel normalisation).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FcptsError
from ..registry import Registry
from .specs import DataOptions, DataSource, Split, register_data_spec


def _images_to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]; float (N, C, H, W) as is."""
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4:
            x = x.transpose(0, 3, 1, 2)
        else:
            raise FcptsError(f"uint8 images must be N×H×W or N×H×W×C, got shape {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    if np.issubdtype(x.dtype, np.floating):
        if x.ndim < 2:
            raise FcptsError(f"float inputs must be N×..., got shape {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    raise FcptsError(f"inputs must be uint8 or float, got {x.dtype}")


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


#: ``--normalize`` choices: name → (per-channel mean, std) applied after scaling pixels to [0, 1].
NORMALIZATIONS: Registry[tuple[tuple[float, ...], tuple[float, ...]]] = Registry("normalization")
NORMALIZATIONS.register("imagenet", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))  # torchvision, most timm models
NORMALIZATIONS.register("inception", ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))  # e.g. timm's ViT-B/16 augreg weights


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size``×``size`` window of images ``x`` (N, C, H, W).

    >>> center_crop(torch.arange(16.0).view(1, 1, 4, 4), 2).flatten().tolist()
    [5.0, 6.0, 9.0, 10.0]
    """
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise FcptsError(f"crop {size} is larger than the images ({h}×{w})")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def normalize_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """``(x - mean) / std`` per channel with a named normalisation (:data:`NORMALIZATIONS`).

    >>> normalize_images(torch.full((1, 3, 1, 1), 0.5), "inception").flatten().tolist()
    [0.0, 0.0, 0.0]
    """
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALIZATIONS.get(name))
    if x.shape[1] != mean.shape[1]:
        raise FcptsError(f"normalization {name!r} is for {mean.shape[1]} channels, the images have {x.shape[1]}")
    return (x - mean) / std


def preprocess_images(
    images: Iterable[tuple[str, Any]],
    image_size: int | None = None,
    channels: int | None = None,
    crop: int | None = None,
    normalize: str | None = None,
) -> torch.Tensor:
    """PIL images ``(where, image)`` → float32 ``(N, C, H, W)``: convert, resize, crop, normalise.

    ``channels`` 1 (grayscale) or 3 (RGB), default: the first image's; ``image_size`` resizes to a
    square (bilinear), default: the first image's size, and then all must match (``where`` names
    the odd one in the error); then ``crop`` (central square) and ``normalize``
    (:data:`NORMALIZATIONS`, or ``"none"``).

    >>> from PIL import Image
    >>> im = Image.fromarray(np.full((4, 6), 51, np.uint8))
    >>> x = preprocess_images([("a", im)], channels=3, crop=2)
    >>> tuple(x.shape), round(float(x.max()), 6)
    ((1, 3, 2, 2), 0.2)
    """
    from PIL import Image  # Pillow comes with matplotlib; imported here to keep import time low

    arrays = []
    size = None if image_size is None else (image_size, image_size)
    for where, im in images:
        mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if im.mode in ("L", "1", "I;16") else "RGB")
        im = im.convert(mode)
        channels = 1 if mode == "L" else 3
        size = size or im.size
        if im.size != size:
            if image_size is None:
                raise FcptsError(
                    f"{where} is {im.size[0]}×{im.size[1]}, others are {size[0]}×{size[1]}; pass --image-size"
                )
            im = im.resize(size, Image.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8).reshape(size[1], size[0], channels))
    if not arrays:
        raise FcptsError("no images to preprocess")
    return finish_images(_images_to_tensor(np.stack(arrays)), crop, normalize)


def finish_images(x: torch.Tensor, crop: int | None = None, normalize: str | None = None) -> torch.Tensor:
    """The tensor steps of the standard preprocessing: central ``crop``, then ``normalize`` (``"none"``: skip).

    >>> finish_images(torch.full((1, 3, 4, 4), 0.5), crop=2, normalize="inception").abs().sum().item()
    0.0
    """
    if crop is not None:
        x = center_crop(x, crop)
    if normalize is not None and normalize != "none":
        x = normalize_images(x, normalize)
    return x


def load_imagefolder(
    directory: str | os.PathLike[str],
    image_size: int | None = None,
    channels: int | None = None,
    crop: int | None = None,
    normalize: str | None = None,
) -> DataSource:
    """``DIR/<class>/<image>`` as in torchvision's ImageFolder: classes are the sorted sub-folders.

    Images are converted to ``channels`` (1: grayscale, 3: RGB; default: the first image's) and
    resized to ``image_size``×``image_size`` (default: the first image's size; then all must match).
    Standard evaluation preprocessing: resize to ``image_size``, then ``crop`` (a central square),
    then ``normalize`` (``imagenet``: torchvision's mean and std). The same images serve
    calibration and evaluation.
    """
    from PIL import Image  # Pillow comes with matplotlib; imported here to keep import time low

    directory = Path(directory)
    if not directory.is_dir():
        raise FcptsError(f"imagefolder directory not found: {directory}")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    files = [
        (f, label)
        for label, c in enumerate(classes)
        for f in sorted((directory / c).iterdir())
        if f.suffix.lower() in _IMAGE_SUFFIXES
    ]
    if not files:
        raise FcptsError(f"no images found under {directory}/<class>/")

    def opened() -> Iterator[tuple[str, Image.Image]]:
        for f, _ in files:
            try:
                with Image.open(f) as im:
                    im.load()  # decode now: a truncated file fails here, by name
                    yield str(f), im
            except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
                raise FcptsError(f"cannot read image {f}: {str(exc).splitlines()[0] or type(exc).__name__}") from exc

    x = preprocess_images(opened(), image_size=image_size, channels=channels, crop=crop, normalize=normalize)
    labels = [label for _, label in files]
    split = Split(x, torch.tensor(labels, dtype=torch.int64), classes=len(classes))
    return DataSource(f"imagefolder:{directory}", split, split)


@register_data_spec("imagefolder", "imagefolder:DIR")
def _imagefolder_spec(arg: str, options: DataOptions) -> DataSource:
    o = options
    return load_imagefolder(arg, image_size=o.image_size, channels=o.channels, crop=o.crop, normalize=o.normalize)
