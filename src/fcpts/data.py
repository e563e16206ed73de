"""Datasets for calibration and evaluation: the IDX reader, Fashion-MNIST, ``npz:`` and ``imagefolder:``.

Every loader returns a :class:`Split` of float32 images in ``[0, 1]`` shaped ``(N, C, H, W)``
and, where known, int64 labels ``(N,)``. Normalisation belongs to the model (the reference CNN
carries its own), so one data spec serves any model.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import FcptsError

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable that overrides :data:`DEFAULT_FASHION_MNIST_DIR`.
FASHION_MNIST_ENV = "FCPTS_FASHION_MNIST_DIR"

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class Split:
    """Images ``x`` (N, C, H, W) float32 in [0, 1] and optional labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, n: int | None, seed: int) -> Split:
        """``n`` samples drawn without replacement by ``seed`` (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.x[idx], None if self.y is None else self.y[idx])


@dataclass
class DataSource:
    """A calibration split (labels unused) and an evaluation split (labels used if present)."""

    name: str
    calibration: Split
    evaluation: Split


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    >>> import gzip, tempfile, numpy as np
    >>> p = tempfile.mktemp(suffix=".gz")
    >>> with gzip.open(p, "wb") as f:
    ...     _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
    >>> read_idx(p).tolist()
    [7, 8, 9]
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise FcptsError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise FcptsError(f"{path}: IDX header promises shape {shape}, file size disagrees")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> DataSource:
    """Fashion-MNIST: 60k training images (calibration) and 10k test images (evaluation).

    The directory is ``data_dir``, else ``$FCPTS_FASHION_MNIST_DIR``, else the Debian package's
    ``/usr/share/datasets/fashion-mnist``.
    """
    directory = Path(data_dir or os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR)
    stems = {
        "train_x": "train-images-idx3-ubyte",
        "train_y": "train-labels-idx1-ubyte",
        "test_x": "t10k-images-idx3-ubyte",
        "test_y": "t10k-labels-idx1-ubyte",
    }
    paths = {key: _find_idx(directory, stem) for key, stem in stems.items()}
    missing = [stems[k] for k, p in paths.items() if p is None]
    if missing:
        raise FcptsError(
            f"Fashion-MNIST IDX files not found in {directory} (missing {', '.join(missing)}). "
            "Install them with `apt-get install dataset-fashion-mnist`, or point --data-dir "
            f"(or ${FASHION_MNIST_ENV}) at a directory holding the four IDX files."
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}  # type: ignore[arg-type]
    return DataSource(
        "fashion-mnist",
        calibration=Split(_images_to_tensor(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64))),
        evaluation=Split(_images_to_tensor(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64))),
    )


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


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def load_imagefolder(
    directory: str | os.PathLike[str], image_size: int | None = None, channels: int | None = None
) -> DataSource:
    """``DIR/<class>/<image>`` as in torchvision's ImageFolder: classes are the sorted sub-folders.

    Images are converted to ``channels`` (1: grayscale, 3: RGB; default: the first image's) and
    resized to ``image_size``×``image_size`` (default: the first image's size; then all must match).
    The same images serve calibration and evaluation.
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
    images, labels = [], []
    size = None if image_size is None else (image_size, image_size)
    for f, label in files:
        with Image.open(f) as im:
            mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if im.mode in ("L", "1", "I;16") else "RGB")
            im = im.convert(mode)
            channels = 1 if mode == "L" else 3
            size = size or im.size
            if im.size != size:
                if image_size is None:
                    raise FcptsError(
                        f"{f} is {im.size[0]}×{im.size[1]}, others are {size[0]}×{size[1]}; pass --image-size"
                    )
                im = im.resize(size, Image.BILINEAR)
            images.append(np.asarray(im, dtype=np.uint8).reshape(size[1], size[0], channels))
        labels.append(label)
    split = Split(_images_to_tensor(np.stack(images)), torch.tensor(labels, dtype=torch.int64))
    return DataSource(f"imagefolder:{directory}", split, split)


def load_data(
    spec: str, data_dir: str | None = None, image_size: int | None = None, channels: int | None = None
) -> DataSource:
    """Resolve a data spec: ``fashion-mnist``, ``npz:PATH`` or ``imagefolder:DIR``."""
    kind, _, arg = spec.partition(":")
    if spec == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if kind == "npz" and arg:
        return load_npz(arg)
    if kind == "imagefolder" and arg:
        return load_imagefolder(arg, image_size=image_size, channels=channels)
    raise FcptsError(f"unknown data spec {spec!r}: expected 'fashion-mnist', 'npz:PATH' or 'imagefolder:DIR'")
