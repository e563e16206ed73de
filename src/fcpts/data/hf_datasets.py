"""``hf-dataset:DIR``: a Hugging Face ``datasets`` directory written by ``save_to_disk``.

A ``Dataset`` serves calibration and evaluation alike; of a ``DatasetDict``, calibration reads
``DataOptions.split`` (default ``train``, or the only split) and evaluation ``eval_split``
(default ``test``, else ``validation``, else the calibration split). One column is the input:
an image column (an ``Image`` feature, else a column named image, img or pixel_values) gets
``imagefolder:``'s preprocessing; failing that, a text column (a string feature; among several,
the one named text or sentence) is tokenised as ``text:FILE``. Labels come from a ``label`` or
``labels`` column of integers (``ClassLabel`` or an int ``Value``); a split whose labels include
``-1`` (ClassLabel's "no label", as in GLUE's test splits) has none. ``--image-column``,
``--text-column`` and ``--label-column`` override the detection. ``datasets`` is imported only
here, when such a spec is loaded (the ``hf-datasets`` extra).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import FcptsError
from .images import _images_to_tensor, finish_images, preprocess_images
from .specs import DataOptions, DataSource, Split, register_data_spec
from .text import tokenize

#: Column names taken as images / text / labels when the features do not say.
IMAGE_NAMES = ("image", "img", "pixel_values")
TEXT_NAMES = ("text", "sentence")
LABEL_NAMES = ("label", "labels")


@dataclass(frozen=True)
class Columns:
    """The input column, whether it holds ``image`` or ``text``, and the label column (or None)."""

    input: str
    kind: str
    label: str | None


def _datasets() -> Any:
    try:
        return importlib.import_module("datasets")
    except ImportError as exc:
        raise FcptsError(
            f"hf-dataset: needs the datasets package ({exc}); "
            "install fcpts with the 'hf-datasets' extra: pip install 'fcpts[hf-datasets]'"
        ) from exc


def _is_string(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string") and type(feature).__name__ == "Value"


def _is_label(feature: Any) -> bool:
    kind = type(feature).__name__
    return kind == "ClassLabel" or (kind == "Value" and str(feature.dtype).startswith(("int", "uint")))


def detect_columns(features: dict[str, Any], options: DataOptions, where: str) -> Columns:
    """Pick the input and label columns from a dataset's ``features`` (column name → feature).

    Explicit ``options.image_column`` / ``text_column`` / ``label_column`` win; otherwise images
    come first (an image dataset's string columns are file names or captions), then text.

    >>> from datasets import ClassLabel, Value
    >>> f = {"sentence": Value("string"), "idx": Value("string"), "label": ClassLabel(names=["n", "p"])}
    >>> detect_columns(f, DataOptions(), "toy")
    Columns(input='sentence', kind='text', label='label')
    """
    names = ", ".join(features) or "none"
    for option, column in (("image", options.image_column), ("text", options.text_column)):
        if column is not None and column not in features:
            raise FcptsError(f"{where}: no column {column!r} (--{option}-column); columns: {names}")
    if options.image_column is not None and options.text_column is not None:
        raise FcptsError(f"{where}: give --image-column or --text-column, not both")
    if options.label_column is not None:
        if options.label_column not in features:
            raise FcptsError(f"{where}: no column {options.label_column!r} (--label-column); columns: {names}")
        if not _is_label(features[options.label_column]):
            raise FcptsError(f"{where}: label column {options.label_column!r} is not ClassLabel or integers")
        label = options.label_column
    else:
        label = next((c for c in LABEL_NAMES if c in features and _is_label(features[c])), None)

    if options.image_column is not None:
        return Columns(options.image_column, "image", label)
    if options.text_column is not None:
        if not _is_string(features[options.text_column]):
            raise FcptsError(f"{where}: text column {options.text_column!r} is {features[options.text_column]}")
        return Columns(options.text_column, "text", label)
    images = [c for c, f in features.items() if type(f).__name__ == "Image"] or [
        c for c in features if c in IMAGE_NAMES
    ]
    texts = [c for c, f in features.items() if _is_string(f)]
    if len(texts) > 1:
        texts = [c for c in texts if c in TEXT_NAMES] or texts
    for kind, found in (("image", images), ("text", texts)):
        if len(found) > 1:
            raise FcptsError(f"{where}: several {kind} columns ({', '.join(found)}); pick one with --{kind}-column")
        if found:
            return Columns(found[0], kind, label)
    raise FcptsError(
        f"{where}: no image column (an Image feature, or a column named {', '.join(IMAGE_NAMES)}) and no text "
        f"column (a string feature) among its columns ({names}); pass --image-column or --text-column"
    )


def _array_images(rows: Any, options: DataOptions, where: str) -> torch.Tensor:
    """Image arrays: integers in [0, 255] (H×W or H×W×C) become PIL images; float arrays are used as they are."""
    from PIL import Image

    arrays = [np.asarray(r) for r in rows]
    if arrays and np.issubdtype(arrays[0].dtype, np.floating):
        # Float pixels are taken as model-ready (N, C, H, W) like npz:; resizing them would need another resampler.
        if options.image_size is not None or options.channels is not None:
            raise FcptsError(f"{where}: float image arrays are used as they are; drop --image-size and --channels")
        if len({a.shape for a in arrays}) > 1:
            raise FcptsError(f"{where}: float image arrays of different shapes; they must all match")
        return finish_images(_images_to_tensor(np.stack(arrays)), options.crop, options.normalize)

    def pil() -> Any:
        for i, a in enumerate(arrays):
            if not np.issubdtype(a.dtype, np.integer) or (a.size and (a.min() < 0 or a.max() > 255)):
                raise FcptsError(f"{where} row {i}: image arrays must be integers in [0, 255] or floats")
            if a.ndim == 3 and a.shape[-1] == 1:
                a = a[..., 0]
            if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
                raise FcptsError(f"{where} row {i}: image arrays must be H×W or H×W×C (C 1, 3 or 4), got {a.shape}")
            yield f"{where} row {i}", Image.fromarray(a.astype(np.uint8))

    o = options
    return preprocess_images(pil(), o.image_size, o.channels, o.crop, o.normalize)


def load_split(dataset: Any, options: DataOptions, where: str) -> Split:
    """One ``datasets.Dataset`` → a :class:`Split` (images or token tensors, and labels if any)."""
    columns = detect_columns(dict(dataset.features), options, where)
    if len(dataset) == 0:
        raise FcptsError(f"{where} has no rows")
    labels = None
    if columns.label is not None:
        values = list(dataset[columns.label])
        # ClassLabel's -1 (or a missing value) marks unlabelled rows, as in GLUE's test splits: no labels then.
        if all(v is not None and v >= 0 for v in values):
            labels = torch.tensor(values, dtype=torch.int64)
    if columns.kind == "text":
        texts = [t.strip() if isinstance(t, str) else "" for t in dataset[columns.input]]  # None: missing
        keep = [i for i, t in enumerate(texts) if t]  # blank samples are skipped, as text:FILE skips blank lines
        if not keep:
            raise FcptsError(f"{where}: text column {columns.input!r} has no non-empty samples")
        tokenizer = options.get_tokenizer()
        if tokenizer is None:
            raise FcptsError(f"{where} holds text: it needs a model with a tokenizer (an hf:DIR model, or minilm)")
        x = tokenize([texts[i] for i in keep], tokenizer, options.max_length)
        return Split(x, None if labels is None else labels[keep])
    if type(dataset.features[columns.input]).__name__ == "Image":
        images = ((f"{where} row {i}", im) for i, im in enumerate(dataset[columns.input]))
        o = options
        return Split(preprocess_images(images, o.image_size, o.channels, o.crop, o.normalize), labels)
    return Split(_array_images(dataset.with_format("numpy")[columns.input], options, where), labels)


def pick_splits(names: list[str], options: DataOptions, where: str) -> tuple[str, str]:
    """(calibration, evaluation) split names of a ``DatasetDict`` with splits ``names``.

    >>> pick_splits(["train", "validation", "test"], DataOptions(), "d")
    ('train', 'test')
    >>> pick_splits(["all"], DataOptions(), "d")
    ('all', 'all')
    """
    calibration = options.split or ("train" if "train" in names or len(names) != 1 else names[0])
    evaluation = options.eval_split or next((n for n in ("test", "validation") if n in names), calibration)
    for option, name in (("split", calibration), ("eval-split", evaluation)):
        if name not in names:
            raise FcptsError(f"{where} has no split {name!r} (splits: {', '.join(names)}); pass --{option} NAME")
    return calibration, evaluation


@register_data_spec("hf-dataset", "hf-dataset:DIR")
def load_hf_dataset(arg: str, options: DataOptions) -> DataSource:
    """Load a ``save_to_disk`` directory (a ``Dataset`` or ``DatasetDict``) as calibration and evaluation splits."""
    directory = Path(arg)
    if not directory.is_dir():
        raise FcptsError(f"hf-dataset directory not found: {directory}")
    datasets = _datasets()
    try:
        loaded = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise FcptsError(f"cannot read {directory} as a save_to_disk dataset: {exc}") from exc
    name = f"hf-dataset:{directory}"
    if isinstance(loaded, datasets.DatasetDict):
        calibration, evaluation = pick_splits(list(loaded), options, name)
        cal = load_split(loaded[calibration], options, f"{name} split {calibration!r}")
        ev = (
            cal
            if evaluation == calibration
            else load_split(loaded[evaluation], options, f"{name} split {evaluation!r}")
        )
        return DataSource(name, cal, ev)
    if options.split is not None or options.eval_split is not None:
        raise FcptsError(f"{name} is a single Dataset, not a DatasetDict: drop --split/--eval-split")
    split = load_split(loaded, options, name)
    return DataSource(name, split, split)
