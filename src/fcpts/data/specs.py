"""Datasets for calibration and evaluation: Fashion-MNIST, ``npz:``, ``imagefolder:``, ``text:`` (and ``hf-dataset:``).

Every loader returns a :class:`Split` of float32 images in ``[0, 1]`` shaped ``(N, C, H, W)``
and, where known, int64 labels ``(N,)``. Normalisation belongs to the model (the reference CNN
carries its own), so one data spec serves any model; ``imagefolder:`` can add a standard
``--normalize imagenet`` for ecosystem models that expect it. ``text:FILE`` gives tokenizer
outputs instead: ``x`` is a dict of ``(N, T)`` tensors (``input_ids``, ``attention_mask``, ...).

Spec prefixes are registered with :func:`register_data_spec`; :mod:`fcpts.hfdata` registers
``hf-dataset:DIR`` (a ``datasets`` ``save_to_disk`` directory).
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import rows
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
    """Images ``x`` (N, C, H, W) float32 in [0, 1] (or a dict of token tensors) and optional labels ``y`` (N,)."""

    x: torch.Tensor | dict[str, torch.Tensor]
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(next(iter(self.x.values()))) if isinstance(self.x, dict) else len(self.x)

    def subset(self, n: int | None, seed: int) -> Split:
        """``n`` samples drawn without replacement by ``seed`` (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(rows(self.x, idx), None if self.y is None else self.y[idx])


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


#: ``--normalize`` choices: name → (per-channel mean, std) applied after scaling pixels to [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision and most timm models
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # e.g. timm's ViT-B/16 augreg weights
}


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
    if name not in NORMALIZATIONS:
        raise FcptsError(f"unknown normalization {name!r}; choose from {', '.join(NORMALIZATIONS)}")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALIZATIONS[name])
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
            with Image.open(f) as im:
                yield str(f), im

    x = preprocess_images(opened(), image_size=image_size, channels=channels, crop=crop, normalize=normalize)
    labels = [label for _, label in files]
    split = Split(x, torch.tensor(labels, dtype=torch.int64))
    return DataSource(f"imagefolder:{directory}", split, split)


def load_text(path: str | os.PathLike[str], tokenizer: object, max_length: int = 128) -> DataSource:
    """``FILE`` with one sample per line (blank lines skipped), tokenised by the model's tokenizer.

    Padded to the longest sample (at most ``max_length`` tokens), so the rows stack into a dict of
    ``(N, T)`` tensors; the attention mask marks the padding. The same lines serve calibration and
    evaluation (give disjoint files to ``prune`` and ``eval`` to keep them apart).
    """
    path = Path(path)
    if not path.is_file():
        raise FcptsError(f"text file not found: {path}")
    if tokenizer is None:
        raise FcptsError(f"text:{path} needs a model with a tokenizer (an hf:DIR model, or minilm)")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise FcptsError(f"text file {path} has no non-empty lines")
    split = Split(tokenize(lines, tokenizer, max_length), None)
    return DataSource(f"text:{path}", split, split)


def tokenize(texts: list[str], tokenizer: Any, max_length: int = 128) -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` as ``text:FILE`` does: padded to the longest (at most ``max_length`` tokens).

    Returns the tokenizer's outputs as a dict of ``(N, T)`` tensors (``input_ids``, ``attention_mask``, ...).

    >>> def toy(texts, **kw):  # a stand-in tokenizer: one token per word
    ...     n = max(len(t.split()) for t in texts)
    ...     ids = [[len(w) for w in t.split()] + [0] * (n - len(t.split())) for t in texts]
    ...     return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) > 0).long()}
    >>> tokenize(["a bb", "ccc"], toy)["attention_mask"].tolist()
    [[1, 1], [1, 0]]
    """
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v for k, v in encoded.items()}


@dataclass(frozen=True)
class DataOptions:
    """Everything a data spec may use besides its argument; each loader reads the fields it needs."""

    data_dir: str | None = None  # fashion-mnist: the IDX directory
    image_size: int | None = None  # images: resize to a square
    channels: int | None = None  # images: 1 (grayscale) or 3 (RGB)
    crop: int | None = None  # images: central square crop after the resize
    normalize: str | None = None  # images: a NORMALIZATIONS name, or "none"
    tokenizer: Any = None  # text: the model's tokenizer ...
    tokenizer_loader: Callable[[], Any] | None = None  # ... or a function that loads it when text is found
    max_length: int = 128  # text: longest token sequence
    split: str | None = None  # hf-dataset: calibration split of a DatasetDict (default "train")
    eval_split: str | None = None  # hf-dataset: evaluation split (default "test", else "validation")
    image_column: str | None = None  # hf-dataset: override the column detection
    text_column: str | None = None
    label_column: str | None = None

    def get_tokenizer(self) -> Any:
        """The tokenizer, loading it now if only a loader was given (None without either)."""
        if self.tokenizer is None and self.tokenizer_loader is not None:
            return self.tokenizer_loader()
        return self.tokenizer


#: ``load(arg, options) -> DataSource``; ``arg`` is the text after ``PREFIX:`` ("" for a spec without one).
DataLoaderFn = Callable[[str, DataOptions], DataSource]


@dataclass(frozen=True)
class DataSpec:
    """A registered data spec: ``PREFIX:ARG`` (or the bare ``PREFIX`` when ``takes_arg`` is False)."""

    prefix: str
    load: DataLoaderFn
    usage: str
    takes_arg: bool = True


#: Spec prefix → loader. Filled by :func:`register_data_spec` (``fcpts.hfdata`` registers ``hf-dataset:``).
DATA_SPECS: dict[str, DataSpec] = {}


def register_data_spec(prefix: str, usage: str, takes_arg: bool = True) -> Callable[[DataLoaderFn], DataLoaderFn]:
    """Decorator: load specs ``PREFIX:ARG`` with ``fn(arg, options) -> DataSource``.

    >>> @register_data_spec("ones", "ones:N (N images of ones)")
    ... def _ones(arg, options):
    ...     split = Split(torch.ones(int(arg), 1, 2, 2))
    ...     return DataSource(f"ones:{arg}", split, split)
    >>> len(load_data("ones:3").calibration)
    3
    >>> del DATA_SPECS["ones"]
    """

    def decorate(fn: DataLoaderFn) -> DataLoaderFn:
        DATA_SPECS[prefix] = DataSpec(prefix, fn, usage, takes_arg)
        return fn

    return decorate


@register_data_spec("fashion-mnist", "fashion-mnist", takes_arg=False)
def _fashion_mnist_spec(arg: str, options: DataOptions) -> DataSource:
    return load_fashion_mnist(options.data_dir)


@register_data_spec("npz", "npz:PATH")
def _npz_spec(arg: str, options: DataOptions) -> DataSource:
    return load_npz(arg)


@register_data_spec("imagefolder", "imagefolder:DIR")
def _imagefolder_spec(arg: str, options: DataOptions) -> DataSource:
    o = options
    return load_imagefolder(arg, image_size=o.image_size, channels=o.channels, crop=o.crop, normalize=o.normalize)


@register_data_spec("text", "text:FILE")
def _text_spec(arg: str, options: DataOptions) -> DataSource:
    return load_text(arg, options.get_tokenizer(), options.max_length)


def load_data(
    spec: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    crop: int | None = None,
    normalize: str | None = None,
    tokenizer: object = None,
    max_length: int = 128,
    **options: Any,
) -> DataSource:
    """Resolve a data spec registered with :func:`register_data_spec`: ``fashion-mnist``, ``npz:PATH``,
    ``imagefolder:DIR``, ``text:FILE``, ``hf-dataset:DIR``.

    Keyword ``options`` are the other :class:`DataOptions` fields (``split``, ``text_column``, ...).
    """
    from . import hfdata as _hfdata  # noqa: F401  registers hf-dataset: (the datasets package is imported lazily)

    opts = DataOptions(data_dir, image_size, channels, crop, normalize, tokenizer, max_length=max_length, **options)
    prefix, colon, arg = spec.partition(":")
    found = DATA_SPECS.get(prefix)
    if found is not None and (bool(arg) if found.takes_arg else not colon):
        return found.load(arg, opts)
    usages = [f"'{d.usage}'" for d in DATA_SPECS.values()]
    raise FcptsError(f"unknown data spec {spec!r}: expected {', '.join(usages[:-1])} or {usages[-1]}")
