"""Run pruned layers with sparse kernels where a measurement says that is faster; dense elsewhere.

:func:`convert` folds eval-mode BatchNorm into the layer before it (:mod:`.fold`), then times every
prunable layer on the input it sees in one forward pass of an example input, dense against each
sparse kernel that applies to it, and replaces the layer by the fastest one only when it is surely
faster: the two take turns (paired calls, the order alternating, so that a change in the machine's
load hits both), and the kernel must win by ``min_speedup`` on the median of the paired ratios and
be faster than dense in at least ``min_win_fraction`` of the pairs. Otherwise the layer stays dense.
Last, the converted model is timed against the dense one the same way and kept only if it is
faster as a whole (:func:`keep_if_faster`). The kernels are in :mod:`.kernels`.

>>> net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))
>>> with torch.no_grad():
...     net[0].weight[:, 6:] = 0.0  # 90% zeros
>>> x = torch.randn(32, 64)
>>> take = ConvertConfig(min_speedup=0.0, model_repeats=0, kernels=("csr",))  # take it even if slower
>>> fast = convert(net, x, take)
>>> type(fast[0]).__name__
'CSRLinear'
>>> torch.allclose(fast(x), net(x), atol=1e-5)
True
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.evaluate import output_logits
from ..core.layers import LayerFilter, default_layer_filter, prunable_layers
from .fold import fold_batchnorm
from .kernels import KERNELS


@dataclass
class ConvertConfig:
    """How :func:`convert` chooses: ``repeats`` pairs of timed calls (dense and kernel, the order
    alternating) after ``warmup`` of each; a sparse kernel replaces a layer when the median of
    ``dense_time / kernel_time`` over the pairs is ``>= min_speedup`` and at least
    ``min_win_fraction`` of the pairs have a ratio ``>= min(1, min_speedup)``; its output must match
    the dense layer's within ``atol`` + ``rtol`` (else the layer stays dense). ``kernels``: the
    kernel names to try (default: every registered kernel). ``fold_batchnorm``: :func:`convert`
    folds BatchNorm into the layer before it first (:mod:`.fold`). ``model_repeats``,
    ``min_model_speedup``: :func:`convert`'s whole-model check (:func:`keep_if_faster`)."""

    repeats: int = 10
    warmup: int = 2
    min_speedup: float = 1.1
    min_win_fraction: float = 0.8
    atol: float = 1e-4
    rtol: float = 1e-4
    layer_filter: LayerFilter = default_layer_filter
    kernels: tuple[str, ...] | None = None
    fold_batchnorm: bool = True
    model_repeats: int = 5
    min_model_speedup: float = 1.02


@dataclass
class LayerChoice:
    """One layer's measurement: dense seconds (median), each applicable kernel's median seconds and
    median paired speedup (dense / kernel), and the choice."""

    name: str
    sparsity: float
    dense_s: float
    kernel_s: dict[str, float]
    chosen: str  # "dense" or a kernel name
    kernel_speedup: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        if self.chosen == "dense":
            return 1.0
        return self.kernel_speedup.get(self.chosen, self.dense_s / self.kernel_s[self.chosen])


def _paired_times(
    dense: Callable[[], object], kernel: Callable[[], object], repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` calls of each, taking turns (dense first on even pairs, kernel first on odd)."""
    for _ in range(warmup):
        dense()
        kernel()
    pairs = []
    for i in range(repeats):
        order = (dense, kernel) if i % 2 == 0 else (kernel, dense)
        times = []
        for fn in order:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        pairs.append(times if i % 2 == 0 else times[::-1])
    return [d for d, _ in pairs], [k for _, k in pairs]


def _layer_inputs(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input tensor each named layer receives in one forward pass of ``example_input`` (its first
    call's, for a layer called more than once, e.g. a detector head shared by every feature level)."""
    seen: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(_module: nn.Module, args: tuple) -> None:  # returns None: the layer's input is left as it is
            seen.setdefault(name, args[0].detach())

        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
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
        choices.append(_choose(name, module, inputs[name], config))
    model.train(was_training)
    return choices


def _choose(name: str, module: nn.Module, x: torch.Tensor, config: ConvertConfig) -> LayerChoice:
    """Time ``module`` on ``x`` against each applicable kernel, paired; keep dense unless a kernel surely wins."""
    dense_out = module(x)
    dense_times: list[float] = []
    kernel_s, speedup, wins = {}, {}, {}
    for kernel, build in KERNELS.items():
        if config.kernels is not None and kernel not in config.kernels:
            continue
        replacement = build(module)
        if replacement is None:
            continue
        if not torch.allclose(replacement(x), dense_out, atol=config.atol, rtol=config.rtol):
            continue  # a kernel that disagrees with the dense layer is never chosen
        dense_t, kernel_t = _paired_times(lambda: module(x), lambda m=replacement: m(x), config.repeats, config.warmup)
        ratios = [d / k for d, k in zip(dense_t, kernel_t, strict=True)]
        dense_times += dense_t
        kernel_s[kernel], speedup[kernel] = statistics.median(kernel_t), statistics.median(ratios)
        # a pair is a win when the kernel is faster (min_speedup < 1, e.g. 0 to force it: as fast as asked)
        wins[kernel] = sum(r >= min(1.0, config.min_speedup) for r in ratios) / len(ratios)
    sure = [k for k in speedup if speedup[k] >= config.min_speedup and wins[k] >= config.min_win_fraction]
    chosen = max(sure, key=speedup.__getitem__, default="dense")
    if not dense_times:  # no kernel applies: one timing of the dense layer, for the record
        dense_times, _ = _paired_times(lambda: module(x), lambda: None, max(config.repeats, 1), config.warmup)
    sparsity = float((module.weight == 0).float().mean())
    return LayerChoice(name, sparsity, statistics.median(dense_times), kernel_s, chosen, speedup)


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
    return convert_with_choices(model, example_input, config)[0]


def convert_with_choices(
    model: nn.Module, example_input: torch.Tensor, config: ConvertConfig | None = None
) -> tuple[nn.Module, list[LayerChoice]]:
    """:func:`convert`'s model and the layer choices it holds: every choice ``"dense"`` where the
    whole-model check (:func:`keep_if_faster`) kept the dense model.

    >>> net = nn.Sequential(nn.Linear(64, 64))
    >>> slower = ConvertConfig(min_speedup=0.0, kernels=("csr",), model_repeats=1, min_model_speedup=float("inf"))
    >>> fast, choices = convert_with_choices(net, torch.randn(8, 64), slower)  # CSR planned, then not fast enough
    >>> type(fast[0]).__name__, [c.chosen for c in choices]
    ('Linear', ['dense'])
    """
    config = config or ConvertConfig()
    dense = copy.deepcopy(model).eval()
    if config.fold_batchnorm:
        fold_batchnorm(dense, example_input)
    choices = plan(dense, example_input, config)
    if all(c.chosen == "dense" for c in choices):
        return dense, choices
    converted = keep_if_faster(dense, apply(copy.deepcopy(dense), choices), example_input, config)
    if converted is dense:
        choices = [dataclasses.replace(c, chosen="dense") for c in choices]
    return converted, choices


@torch.no_grad()
def keep_if_faster(
    dense: nn.Module, converted: nn.Module, example_input: torch.Tensor, config: ConvertConfig
) -> nn.Module:
    """``converted`` if ``config.model_repeats`` paired whole-model timings say it is at least
    ``config.min_model_speedup`` × faster than ``dense`` (median), else ``dense``: layers that each
    won alone can still lose together (caches, the machine's load); 0 repeats: ``converted``."""
    if config.model_repeats <= 0:
        return converted
    dense_t, converted_t = _paired_times(
        lambda: dense(example_input), lambda: converted(example_input), config.model_repeats, 1
    )
    ratio = statistics.median(d / c for d, c in zip(dense_t, converted_t, strict=True))
    return converted if ratio >= config.min_model_speedup else dense
