"""The ``fashion-mnist`` data spec: the 60k training images for calibration, the 10k test images for
evaluation, from the IDX files of Debian's ``dataset-fashion-mnist`` (or ``--data-dir``, or
``$FCPTS_FASHION_MNIST_DIR``).
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import FcptsError
from .images import _images_to_tensor
from .specs import DataOptions, DataSource, Split, register_data_spec

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
        calibration=Split(
            _images_to_tensor(arrays["train_x"]), torch.from_numpy(arrays["train_y"].astype(np.int64)), classes=10
        ),
        evaluation=Split(
            _images_to_tensor(arrays["test_x"]), torch.from_numpy(arrays["test_y"].astype(np.int64)), classes=10
        ),
    )


@register_data_spec("fashion-mnist", "fashion-mnist", takes_arg=False)
def _fashion_mnist_spec(arg: str, options: DataOptions) -> DataSource:
    return load_fashion_mnist(options.data_dir)
