"""The imagefolder: data spec."""

from __future__ import annotations

import numpy as np
import pytest

import fcpts
from fcpts.data.images import load_imagefolder
from fcpts.data.specs import load_data


def test_imagefolder(tmp_path):
    from PIL import Image

    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 5), 40 * label + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_data(f"imagefolder:{tmp_path}")
    assert data.calibration.x.shape == (4, 1, 6, 5)
    assert data.calibration.y.tolist() == [0, 0, 1, 1]
    assert float(data.calibration.x[3].max()) == pytest.approx(41 / 255)
    resized = load_imagefolder(tmp_path, image_size=4, channels=3)
    assert resized.calibration.x.shape == (4, 3, 4, 4)
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(fcpts.FcptsError, match="--image-size"):
        load_imagefolder(tmp_path)
    with pytest.raises(fcpts.FcptsError, match="no images"):
        load_imagefolder(tmp_path / "cat")  # no class sub-folders
