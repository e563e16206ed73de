"""Detection data specs: ``voc:DIR`` (PASCAL VOC layout) and ``coco:ANNOTATIONS.json[,IMAGES_DIR]``.

Calibration reads only the images: a float32 tensor ``(N, 3, S, S)`` in ``[0, 1]`` at one fixed
size (``--image-size S``; by default the images' own size when they all share it). Evaluation
keeps the boxes: a :class:`DetectionSplit`, whose ``targets[i]`` holds ``boxes`` ``(K, 4)``
(``x1, y1, x2, y2`` in pixels of the resized image, float32), ``labels`` ``(K,)`` (int64, 1..C;
0 is the background, torchvision's convention) and ``iscrowd`` ``(K,)`` (VOC's ``difficult``,
COCO's ``iscrowd``: such objects neither count as missed nor as matched).

``voc:DIR`` reads ``JPEGImages/``, ``Annotations/*.xml`` and ``ImageSets/Main/<split>.txt``:
calibration on ``train`` (else ``trainval``; ``--split``), evaluation on ``test`` (else ``val``;
``--eval-split``). Class names are numbered in the order of ``DIR/labels.txt`` if present, else
in PASCAL VOC's 20-class order when every name is a VOC class, else alphabetically. VOC boxes are
1-based and inclusive: ``xmin..xmax`` is ``[xmin - 1, xmax)`` here. ``coco:`` numbers the
categories by increasing id; both splits read the same file (``--eval-data`` for another one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import torch

from ..errors import FcptsError
from .specs import DataOptions, DataSource, Split, register_data_spec

#: PASCAL VOC's classes, in the standard label order (label = index + 1).
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

Target = dict[str, torch.Tensor]


@dataclass
class DetectionSplit(Split):
    """Images ``x`` (N, 3, S, S) with one target per image (``boxes``, ``labels``, ``iscrowd``); ``y`` is None.

    ``classes`` are the class names here (label = index + 1); construct it with keywords past ``y``.
    """

    targets: list[Target] = field(default_factory=list)
    classes: tuple[str, ...] = ()

    def first(self, n: int) -> DetectionSplit:
        if n >= len(self):
            return self
        return DetectionSplit(self.x[:n], None, targets=self.targets[:n], classes=self.classes)

    def subset(self, n: int | None, seed: int) -> DetectionSplit:
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        targets = [self.targets[i] for i in idx.tolist()] if self.targets else []
        return DetectionSplit(self.x[idx], None, targets=targets, classes=self.classes)


def _target(boxes: list[list[float]], labels: list[int], crowd: list[int], sx: float, sy: float) -> Target:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * torch.tensor([sx, sy, sx, sy])
    return {
        "boxes": b,
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(crowd, dtype=torch.int64),
    }


def _read_images(paths: list[Path], size: int | None, what: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """``(N, 3, S, S)`` float32 in [0, 1], and each image's original ``(width, height)``."""
    from PIL import Image

    if not paths:
        raise FcptsError(f"{what}: no images")
    arrays, sizes = [], []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                sizes.append(im.size)
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(im))
        except OSError as exc:
            raise FcptsError(f"{what}: cannot read image {path}: {exc}") from exc
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise FcptsError(f"{what}: the images differ in size ({len(shapes)} sizes): pass --image-size S to resize them")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255)
    return x.contiguous(), sizes


def _scale(size: int | None, width: int, height: int) -> tuple[float, float]:
    return (1.0, 1.0) if size is None else (size / width, size / height)


# -- voc:DIR --------------------------------------------------------------------------------------


def voc_classes(directory: Path) -> tuple[str, ...]:
    """The class names of a VOC directory in label order (see the module docstring)."""
    listed = directory / "labels.txt"
    if listed.is_file():
        return tuple(line.strip() for line in listed.read_text().splitlines() if line.strip())
    names = set()
    for xml in (directory / "Annotations").glob("*.xml"):
        names.update(o.findtext("name", "").strip() for o in ET.parse(xml).getroot().iter("object"))
    if names <= set(VOC_CLASSES):
        return VOC_CLASSES
    return tuple(sorted(names))


def _split_ids(directory: Path, split: str) -> list[str]:
    path = directory / "ImageSets" / "Main" / f"{split}.txt"
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _choose_split(directory: Path, wanted: str | None, defaults: tuple[str, ...], what: str) -> str:
    main = directory / "ImageSets" / "Main"
    found = sorted(p.stem for p in main.glob("*.txt"))
    for name in (wanted,) if wanted else defaults:
        if (main / f"{name}.txt").is_file():
            return name
    expected = wanted or " or ".join(defaults)
    raise FcptsError(f"voc:{directory}: no {what} split {expected}.txt in {main} (found: {', '.join(found) or 'none'})")


def read_voc_annotation(path: Path, classes: tuple[str, ...]) -> tuple[list[list[float]], list[int], list[int]]:
    """Boxes (0-based, ``[x1, y1, x2, y2)``), labels (1..C) and difficult flags of one VOC XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise FcptsError(f"cannot read VOC annotation {path}: {exc}") from exc
    boxes, labels, difficult = [], [], []
    index = {name: i + 1 for i, name in enumerate(classes)}
    for obj in root.iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in index:
            raise FcptsError(f"{path}: class {name!r} is not one of the {len(classes)} classes")
        bb = obj.find("bndbox")
        if bb is None:
            raise FcptsError(f"{path}: object {name!r} has no bndbox")
        x1, y1, x2, y2 = (float(bb.findtext(t, "nan")) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        labels.append(index[name])
        difficult.append(int(obj.findtext("difficult", "0").strip() or 0))
    return boxes, labels, difficult


def read_voc_split(
    directory: str | os.PathLike[str], split: str, size: int | None = None, with_targets: bool = True
) -> DetectionSplit:
    """One split of a VOC directory: the images at ``size`` (and, ``with_targets``, their boxes)."""
    directory = Path(directory)
    ids = _split_ids(directory, split)
    x, sizes = _read_images([directory / "JPEGImages" / f"{i}.jpg" for i in ids], size, f"voc:{directory} {split}")
    classes = voc_classes(directory)
    targets = []
    if with_targets:
        for image_id, (w, h) in zip(ids, sizes, strict=True):
            boxes, labels, difficult = read_voc_annotation(directory / "Annotations" / f"{image_id}.xml", classes)
            targets.append(_target(boxes, labels, difficult, *_scale(size, w, h)))
    return DetectionSplit(x, None, targets=targets, classes=classes)


@register_data_spec("voc", "voc:DIR (PASCAL VOC layout: JPEGImages, Annotations, ImageSets/Main)")
def load_voc(arg: str, options: DataOptions) -> DataSource:
    directory = Path(arg)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        if not (directory / sub).is_dir():
            raise FcptsError(f"voc:{arg}: {directory / sub} is not a directory (PASCAL VOC layout expected)")
    calib = _choose_split(directory, options.split, ("train", "trainval"), "calibration")
    held = _choose_split(directory, options.eval_split, ("test", "val"), "evaluation")
    calibration = read_voc_split(directory, calib, options.image_size, with_targets=False)
    evaluation = read_voc_split(directory, held, options.image_size)
    return DataSource(f"voc:{arg} ({calib} / {held})", calibration, evaluation)


# -- coco:ANNOTATIONS.json[,IMAGES_DIR] ------------------------------------------------------------


def read_coco(annotations: str | os.PathLike[str], images: str | os.PathLike[str] | None, size: int | None):
    """Every image of a COCO annotation file with its boxes (categories numbered 1..C by id)."""
    path = Path(annotations)
    try:
        data = json.loads(path.read_text())
        cats = sorted(data["categories"], key=lambda c: c["id"])
        entries = sorted(data["images"], key=lambda e: e["id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FcptsError(f"coco:{path}: not a readable COCO annotation file ({type(exc).__name__}: {exc})") from exc
    if images is None:
        images = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    label = {c["id"]: i + 1 for i, c in enumerate(cats)}
    per_image: dict[int, list[dict]] = {e["id"]: [] for e in entries}
    for ann in data.get("annotations", []):
        if ann["image_id"] in per_image:
            per_image[ann["image_id"]].append(ann)
    x, sizes = _read_images([Path(images) / e["file_name"] for e in entries], size, f"coco:{path}")
    targets = []
    for entry, (w, h) in zip(entries, sizes, strict=True):
        anns = per_image[entry["id"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        targets.append(
            _target(
                boxes,
                [label[a["category_id"]] for a in anns],
                [int(a.get("iscrowd", 0)) for a in anns],
                *_scale(size, w, h),
            )
        )
    return DetectionSplit(x, None, targets=targets, classes=tuple(c["name"] for c in cats))


@register_data_spec("coco", "coco:ANNOTATIONS.json[,IMAGES_DIR]")
def load_coco(arg: str, options: DataOptions) -> DataSource:
    annotations, _, images = arg.partition(",")
    if not Path(annotations).is_file():
        raise FcptsError(f"coco:{arg}: annotation file {annotations} not found")
    evaluation = read_coco(annotations, images or None, options.image_size)
    calibration = DetectionSplit(evaluation.x, None, targets=[], classes=evaluation.classes)
    return DataSource(f"coco:{arg}", calibration, evaluation)
