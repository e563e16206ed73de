"""Run pruned layers with sparse kernels where a measurement says that is faster; dense elsewhere.

:func:`convert` times every prunable layer on the input it sees in one forward pass of an
example input, dense against each sparse kernel that applies to it, and replaces the layer by the
fastest one when it wins by ``min_speedup``. The kernels are in :mod:`.kernels`.

>>> net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))
>>> with torch.no_grad():
...     net[0].weight[:, 6:] = 0.0  # 90% zeros
>>> x = torch.randn(32, 64)
>>> fast = convert(net, x, ConvertConfig(min_speedup=0.0, kernels=("csr",)))  # 0: take it even if slower
>>> type(fast[0]).__name__
'CSRLinear'
>>> torch.allclose(fast(x), net(x), atol=1e-5)
True
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.evaluate import output_logits
from ..core.layers import LayerFilter, default_layer_filter, prunable_layers
from .kernels import KERNELS


@dataclass
class ConvertConfig:
    """How :func:`convert` chooses: ``repeats`` timed calls (median) after ``warmup`` per candidate;
    a sparse kernel replaces a layer when ``dense_time / kernel_time >= min_speedup``; its output
    must match the dense layer's within ``atol`` + ``rtol`` (else the layer stays dense).
    ``kernels``: the kernel names to try (default: every registered kernel)."""

    repeats: int = 10
    warmup: int = 2
    min_speedup: float = 1.1
    atol: float = 1e-4
    rtol: float = 1e-4
    layer_filter: LayerFilter = default_layer_filter
    kernels: tuple[str, ...] | None = None


@dataclass
class LayerChoice:
    """One layer's measurement: dense seconds, each applicable kernel's seconds, and the choice."""

    name: str
    sparsity: float
    dense_s: float
    kernel_s: dict[str, float]
    chosen: str  # "dense" or a kernel name

    @property
    def speedup(self) -> float:
        return self.dense_s / self.kernel_s[self.chosen] if self.chosen != "dense" else 1.0


def _median_time(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _layer_inputs(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input tensor each named layer receives in one forward pass of ``example_input``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: seen.setdefault(name, args[0].detach())
        )
        for name in names
    ]
    try:
        output_logits(model(example_input))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@torch.no_grad()
def plan(model: nn.Module, example_input: torch.Tensor, config: ConvertConfig | None = None) -> list[LayerChoice]:
    """Time every prunable layer dense and with each applicable kernel on its input from ``example_input``."""
    config = config or ConvertConfig()
    was_training = model.training
    model.eval()
    layers = prunable_layers(model, config.layer_filter)
    inputs = _layer_inputs(model, [name for name, _ in layers], example_input)
    choices = []
    for name, module in layers:
        if name not in inputs:  # not reached by this input: leave it alone
            continue
        x = inputs[name]
        dense_out = module(x)
        dense_s = _median_time(lambda m=module, x=x: m(x), config.repeats, config.warmup)
        kernel_s: dict[str, float] = {}
        for kernel, build in KERNELS.items():
            if config.kernels is not None and kernel not in config.kernels:
                continue
            replacement = build(module)
            if replacement is None:
                continue
            if not torch.allclose(replacement(x), dense_out, atol=config.atol, rtol=config.rtol):
                continue  # a kernel that disagrees with the dense layer is never chosen
            kernel_s[kernel] = _median_time(lambda m=replacement, x=x: m(x), config.repeats, config.warmup)
        best = min(kernel_s, key=kernel_s.__getitem__, default=None)
        chosen = best if best is not None and dense_s / kernel_s[best] >= config.min_speedup else "dense"
        sparsity = float((module.weight == 0).float().mean())
        choices.append(LayerChoice(name, sparsity, dense_s, kernel_s, chosen))
    model.train(was_training)
    return choices


def apply(model: nn.Module, choices: list[LayerChoice]) -> nn.Module:
    """Replace, in place, every layer whose choice is a kernel by that kernel's module; returns ``model``."""
    for choice in choices:
        if choice.chosen == "dense":
            continue
        parent_name, _, child = choice.name.rpartition(".")
        replacement = KERNELS[choice.chosen](model.get_submodule(choice.name))
        assert replacement is not None, f"kernel {choice.chosen} no longer applies to {choice.name}"
        setattr(model.get_submodule(parent_name), child, replacement)
    return model


def convert(model: nn.Module, example_input: torch.Tensor, config: ConvertConfig | None = None) -> nn.Module:
    """A copy of ``model`` (eval mode) whose layers run sparse kernels where :func:`plan` measured a gain.

    ``example_input`` should look like the inputs it will serve (the batch size matters: CSR wins
    at some batch sizes and loses at others). The input model is not modified.
    """
    converted = copy.deepcopy(model).eval()
    return apply(converted, plan(converted, example_input, config))
