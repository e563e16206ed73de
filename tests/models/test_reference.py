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
