"""A real-image detection benchmark: Fashion-MNIST items placed on larger canvases, in PASCAL VOC layout.

:func:`make_detection_dataset` draws, by a seed, 1–4 Fashion-MNIST photos per canvas (scaled to
28–72 pixels, tinted, possibly overlapping: at most ``max_iou`` with any other object), each with
its tight box (the scaled item's pixels above 0.1), and writes ``JPEGImages/``, ``Annotations/*.xml``,
``ImageSets/Main/{train,val,test}.txt`` and ``labels.txt`` (class names in label order), which the
``voc:DIR`` data spec reads. Train canvases use Fashion-MNIST's training items, val and test its
test items, so no item is in two splits. ``scripts/make_detection_data.py`` is its command line.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import torch
import torch.nn.functional as F

from .fashion_mnist import load_fashion_mnist

#: Fashion-MNIST's class names, in label order (detection label = index + 1; 0 is the background).
FASHION_CLASSES = (
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _canvas(
    items: torch.Tensor,
    labels: torch.Tensor,
    rng: np.random.Generator,
    size: int,
    max_objects: int,
    max_iou: float,
    scale: tuple[int, int],
) -> tuple[np.ndarray, list[tuple[int, list[int]]]]:
    """One canvas (H, W, 3) uint8 and its objects ``(label index, [x1, y1, x2, y2])`` (pixels, inclusive-exclusive)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy, base = rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), rng.uniform(0.02, 0.12)
    image = base + gx * xx + gy * yy + rng.normal(0.0, 0.03, (size, size))  # a faint gradient and noise
    image = np.repeat(image[..., None], 3, axis=2)
    objects: list[tuple[int, list[int]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = int(rng.integers(scale[0], scale[1] + 1))
            x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            k = int(rng.integers(0, len(items)))
            patch = F.interpolate(items[k][None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]
            patch = patch.clamp(0, 1).numpy()
            ys, xs = np.nonzero(patch > 0.1)
            if len(ys) == 0:
                continue
            box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], dtype=float)
            if any(_iou(box, np.array(b, dtype=float)) > max_iou for _, b in objects):
                continue
            tint = rng.uniform(0.55, 1.0, 3)
            region = image[y0 : y0 + side, x0 : x0 + side]
            np.maximum(region, patch[..., None] * tint, out=region)  # later items cover earlier ones' background
            objects.append((int(labels[k]), [int(v) for v in box]))
            break
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), objects


def _annotation(name: str, size: int, objects: list[tuple[int, list[int]]], classes: tuple[str, ...]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    dims = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(dims, tag).text = str(value)
    for label, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[label]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based and inclusive: pixel columns x1..x2-1 are x1+1..x2.
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(box, tag).text = str(value)
    return ET.tostring(root)


def make_detection_dataset(
    out: str | os.PathLike[str],
    counts: dict[str, int],
    size: int = 160,
    seed: int = 0,
    max_objects: int = 4,
    max_iou: float = 0.3,
    scale: tuple[int, int] = (28, 72),
    fashion_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write ``counts[split]`` canvases per split (e.g. ``{"train": 3000, "val": 300, "test": 500}``) under ``out``.

    Same arguments, same files (JPEG quality 95). ``train`` draws from Fashion-MNIST's training
    images, every other split from its test images.
    """
    from PIL import Image

    out = Path(out)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    fashion = load_fashion_mnist(fashion_dir)
    (out / "labels.txt").write_text("\n".join(FASHION_CLASSES) + "\n")
    for i, (split, n) in enumerate(counts.items()):
        source = fashion.calibration if split == "train" else fashion.evaluation
        rng = np.random.default_rng([seed, i])
        names = []
        for j in range(n):
            name = f"{split}_{j:05d}"
            image, objects = _canvas(source.x, source.y, rng, size, max_objects, max_iou, scale)
            Image.fromarray(image).save(out / "JPEGImages" / f"{name}.jpg", quality=95)
            (out / "Annotations" / f"{name}.xml").write_bytes(_annotation(name, size, objects, FASHION_CLASSES))
            names.append(name)
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return out
