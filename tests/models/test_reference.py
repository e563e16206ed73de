"""The built-in reference CNN and its packaged weights."""

from __future__ import annotations

import fcpts
from fcpts.data.specs import load_data


def test_reference_model_is_accurate(fashion_subset):
    data = load_data("fashion-mnist", str(fashion_subset))
    model = fcpts.load_reference_model()
    assert not model.training
    assert fcpts.accuracy(model, data.evaluation.x, data.evaluation.y) > 0.85
    assert [n for n, _ in fcpts.prunable_layers(model)][-1] == "fc"
    assert len(fcpts.prunable_layers(model)) == 11


def test_refmobile_is_accurate_and_depthwise(fashion_subset):
    """The depthwise reference (scripts/train_mobile.py): its committed weights on the first 1000 test images."""
    from torch import nn

    from fcpts.models import load_model

    data = load_data("fashion-mnist", str(fashion_subset))
    model = load_model("refmobile")
    assert not model.training
    assert fcpts.accuracy(model, data.evaluation.x, data.evaluation.y) > 0.88
    assert fcpts.accuracy(load_model("refmobile", random_weights=True), data.evaluation.x, data.evaluation.y) < 0.3
    layers = fcpts.prunable_layers(model)
    assert len(layers) == 21 and layers[-1][0] == "fc"
    depthwise = [n for n, m in layers if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise == [f"blocks.{i}.depthwise.0" for i in range(6)]
