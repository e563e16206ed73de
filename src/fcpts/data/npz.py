"""The ``npz:PATH`` data spec: array ``x`` (N×C×H×W float32, or uint8 N×H×W[×C] scaled to [0, 1]) and
optional labels ``y``; read with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import FcptsError
from .images import _images_to_tensor
from .specs import DataOptions, DataSource, Split, register_data_spec


def load_npz(path: str | os.PathLike[str]) -> DataSource:
    """An ``.npz`` with ``x`` (N×C×H×W float32, or uint8 N×H×W[×C]) and optional ``y`` labels.

    The same arrays serve calibration and evaluation.
    """
    path = Path(path)
    if not path.is_file():
        raise FcptsError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz:
                raise FcptsError(f"{path} has no array named 'x' (found: {', '.join(npz.files) or 'none'})")
            x, y = npz["x"], npz.get("y")
    except (OSError, ValueError) as exc:
        if isinstance(exc, FcptsError):
            raise
        raise FcptsError(f"cannot read {path} as npz: {exc}") from exc
    images = _images_to_tensor(x)
    labels = None
    if y is not None:
        if y.shape != (len(images),):
            raise FcptsError(f"{path}: 'y' must have shape ({len(images)},), got {y.shape}")
        labels = torch.from_numpy(y.astype(np.int64))
    split = Split(images, labels)
    return DataSource(f"npz:{path}", split, split)


@register_data_spec("npz", "npz:PATH")
def _npz_spec(arg: str, options: DataOptions) -> DataSource:
    return load_npz(arg)
