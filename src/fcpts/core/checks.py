"""Input checks shared by the library: non-finite weights, calibration data and model outputs.

One NaN in a weight or an input spreads through every loss and gradient it touches and ends as a
model of NaNs with a plausible-looking zero count, so fcpts refuses non-finite values where they
enter (weights in :func:`fcpts.prepare` and the magnitude baselines, data in :class:`fcpts.calibration.Calibration`, the
teacher's outputs in :func:`fcpts.learn`) with one :class:`FcptsError` that says where they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import FcptsError


def nonfinite_summary(x: torch.Tensor) -> str | None:
    """``None`` if every value of ``x`` is finite, else how many are NaN and ±Inf.

    The common (finite) case costs one ``isfinite().all()``; the counts are computed only on failure.

    >>> nonfinite_summary(torch.tensor([1.0, 2.0])) is None
    True
    >>> nonfinite_summary(torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]))
    '1 NaN and 2 Inf among 4 values'
    """
    if not (x.is_floating_point() or x.is_complex()):
        return None  # integer and bool tensors cannot hold NaN or Inf
    if bool(torch.isfinite(x).all()):
        return None
    nan = int(torch.isnan(x).sum())
    inf = int(torch.isinf(x).sum())
    return f"{nan} NaN and {inf} Inf among {x.numel()} values"


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise :class:`FcptsError` naming ``what`` if ``x`` holds a NaN or an Inf.

    >>> check_finite(torch.tensor([0.0, float("inf")]), "layer 'fc' weight")
    Traceback (most recent call last):
    ...
    fcpts.errors.FcptsError: layer 'fc' weight contains non-finite values (0 NaN and 1 Inf among 2 values)
    """
    summary = nonfinite_summary(x)
    if summary is not None:
        raise FcptsError(f"{what} contains non-finite values ({summary})")


def check_finite_weights(layers: Iterable[tuple[str, nn.Module]]) -> None:
    """:func:`check_finite` on the ``weight`` of every ``(name, module)``, naming the first bad layer."""
    for name, module in layers:
        check_finite(module.weight.detach(), f"the weight of layer {name!r}")


def check_finite_inputs(inputs: Any, what: str) -> None:
    """:func:`check_finite` on a model input: a tensor, or every tensor of a dict/tuple/list.

    >>> check_finite_inputs({"input_ids": torch.tensor([1, 2]), "x": torch.zeros(2)}, "batch 0")
    """
    if isinstance(inputs, torch.Tensor):
        check_finite(inputs, what)
    elif isinstance(inputs, dict):
        for key, value in inputs.items():
            check_finite_inputs(value, f"{what} (key {key!r})")
    elif isinstance(inputs, (tuple, list)):
        for i, value in enumerate(inputs):
            check_finite_inputs(value, f"{what} (item {i})")


def validate_target(target_sparsity: float) -> None:
    if not (isinstance(target_sparsity, (int, float)) and 0.0 < target_sparsity < 1.0):
        raise FcptsError(f"target sparsity must be in the open interval (0, 1), got {target_sparsity!r}")
