"""Data specs for calibration and evaluation: ``fashion-mnist``, ``npz:``, ``imagefolder:``, ``text:``,
``hf-dataset:``, ``voc:``, ``coco:``; :func:`load_data` resolves them (:mod:`.specs`).

Importing this package registers the built-in specs (each in its own module).
"""

from . import detection, fashion_mnist, hf_datasets, images, npz, text
from .detection import DetectionSplit
from .specs import DATA_SPECS, DataOptions, DataSource, Split, load_data, register_data_spec

__all__ = [
    "DATA_SPECS",
    "DataOptions",
    "DataSource",
    "DetectionSplit",
    "Split",
    "detection",
    "fashion_mnist",
    "hf_datasets",
    "images",
    "load_data",
    "npz",
    "register_data_spec",
    "text",
]
