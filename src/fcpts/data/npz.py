"""The ``npz:PATH`` data spec: array ``x`` (N×C×H×W float32, or uint8 N×H×W[×C] scaled to [0, 1]) and
optional labels ``y``; read with ``allow_pickle=False``.
"""

from __future__ import annotations

import os
import zipfile
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
    _check_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz:
                raise FcptsError(f"{path} has no array named 'x' (found: {', '.join(npz.files) or 'none'})")
            x, y = npz["x"], npz.get("y")
    except FcptsError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # truncated or corrupt members
        raise FcptsError(f"cannot read {path} as npz: {str(exc).splitlines()[0]}") from exc
    images = _images_to_tensor(x)
    labels = None
    if y is not None:
        if y.shape != (len(images),):
            raise FcptsError(f"{path}: 'y' must have shape ({len(images)},), got {y.shape}")
        labels = torch.from_numpy(y.astype(np.int64))
    split = Split(images, labels)
    return DataSource(f"npz:{path}", split, split)


#: The first bytes of a zip archive (an .npz) and of a single .npy array.
_ZIP_MAGIC, _NPY_MAGIC = (b"PK\x03\x04", b"PK\x05\x06"), b"\x93NUMPY"


def _check_npz_file(path: Path) -> None:
    """One clear error for a missing, empty, .npy or non-zip file, before numpy guesses at it."""
    if not path.is_file():
        raise FcptsError(f"npz file not found: {path}")
    with path.open("rb") as f:
        head = f.read(6)
    if not head:
        raise FcptsError(f"cannot read {path} as npz: the file is empty")
    if head.startswith(_NPY_MAGIC):
        raise FcptsError(f"{path} is a single .npy array, not an .npz archive: save it with np.savez(path, x=...)")
    if not head.startswith(_ZIP_MAGIC):
        raise FcptsError(f"cannot read {path} as npz: not a zip archive of .npy arrays (np.savez writes one)")


@register_data_spec("npz", "npz:PATH")
def _npz_spec(arg: str, options: DataOptions) -> DataSource:
    return load_npz(arg)
