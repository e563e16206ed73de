"""The registered method ``fcpts``: :func:`run_fcpts` ties the pieces together.

    L = L_rec(teacher(x), student(x)) + λ · |S(t) − S*|

:func:`run_fcpts` copies the dense model as the teacher, :func:`prepare_from_config` puts the
thresholds on the student (:func:`~fcpts.method.prepare.prepare` with every mask option of the
config, the importance score or N:M pattern they apply to from :func:`layer_score_fns`, and the
optional least-squares refit of the kept weights), :func:`~fcpts.method.learn.learn` learns
thresholds and kept weights, :func:`~fcpts.method.prepare.finalize` makes the count exact, and
BatchNorm is optionally recalibrated.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..api import METHODS, RunOptions, make_config, register_method
from ..core.activations import input_norms
from ..core.allocation import ALLOCATIONS
from ..core.batchnorm import recalibrate_batchnorm
from ..core.calibration import Calibration
from ..core.importance import get_importance
from ..core.patterns import block_spread, divides, nm_prune_flags, parse_pattern
from ..core.refit import refit_layers
from ..core.scoring import block_size_of, layer_filter_of, layer_scores, pattern_of, prunable
from ..errors import FcptsError
from . import budget
from .config import FCPTSConfig
from .keep_start import keep_better
from .learn import learn
from .prepare import Prepared, finalize, prepare
from .start import resolve_start
from .threshold_mask import LayerScore


def prepare_from_config(
    model: nn.Module, teacher: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> tuple[Prepared, FCPTSConfig]:
    """:func:`.prepare` ``model`` (in place) with every option of ``config``; the config :func:`learn` takes.

    The importance score and an N:M pattern decide what the thresholds apply to; with a pattern
    the mask is fixed (``learn_thresholds`` off in the returned config). With ``1xB`` blocks the
    thresholds apply to per-block scores (:func:`layer_score_fns`) of the layers whose input size
    divides by B, and the exact count is ``B·round(S*·N/B)``. ``refit_init`` fits the
    kept weights to ``teacher`` (the dense model) layer by layer before learning.
    """
    if config.init in ALLOCATIONS:
        score_fns, sparsities = layer_score_fns(model, calibration, config)
    else:  # a one-shot method's result: its masks, allocation and weights (already in ``model``)
        score_fns, sparsities = oneshot_score_fns(model, calibration, config)
    if pattern_of(config) is not None:
        config = dataclasses.replace(config, learn_thresholds=False)
    prepared = prepare(
        model,
        config.target_sparsity,
        config.init,
        layer_filter=layer_filter_of(config),
        kde_samples=config.kde_samples,
        bandwidth_rule=config.bandwidth,
        threshold_grad=config.threshold_grad,
        seed=config.seed,
        density=config.density,
        score_fns=score_fns,
        sparsities=sparsities,
    )
    if sparsities is not None:  # N:M (layers that do not divide stay dense), or a one-shot start: its own count
        zeros = sum(round(s * layer.numel) for s, layer in zip(sparsities, prepared.layers, strict=True))
        prepared.target_sparsity = zeros / prepared.total
    block = block_size_of(config)
    if block is not None:  # whole blocks: the exact count is a multiple of B (finalize's cut then falls between blocks)
        prepared.target_sparsity = block * round(prepared.target_sparsity * prepared.total / block) / prepared.total
    if config.refit_init:
        keeps = {}
        with torch.no_grad():
            for layer in prepared.layers:
                score = layer.mask.score(layer.weight).clone()  # weight-shaped: the dense model's scores
                keeps[layer.name] = (layer.weight, score > layer.mask.threshold)
                # "refitted": the thresholds rank the refitted weights, so the kept weights the refit
                # made small fall under them (16% of the kept ones on the reference CNN at 0.9, 29% on
                # the ViT) and learning starts above the target, off the refit's mask; "dense": they
                # rank the dense scores and the mask stays the refit's. Refitted measured better on the
                # CNN (README, Ablation), so it is the default.
                if config.refit_rank == "dense":
                    layer.mask.score_fn = functools.partial(_constant_score, score)
        refit_layers(model, teacher, keeps, first_rows(calibration, config.refit_samples), config.refit_damp)
    return prepared, config


@register_method(
    "fcpts", FCPTSConfig, "learned per-layer thresholds under a global target, with reconstruction", checkpoints=True
)
def run_fcpts(
    model: nn.Module, calibration: Calibration, config: FCPTSConfig, options: RunOptions
) -> list[dict[str, float]]:
    """FCPTS: prepare thresholds (initial allocation), learn them with the kept weights, finalize exactly.

    With ``config.pattern`` N:M the mask is fixed (N:M by ``config.importance`` on the dense
    weights) and only the kept weights are learned: thresholds have no meaning there. With a
    one-shot method as ``config.init`` (:func:`run_oneshot`, on the first ``config.start_samples``
    calibration rows), learning starts from its result, and with ``config.keep_start`` that result
    is returned if learning ended worse on the calibration data (:mod:`.keep_start`). ``init="auto"``
    chooses between ERK and a one-shot start by the time budget (:mod:`.start`).
    """
    started = budget.clock()  # a time budget counts from here
    # init "auto", lr_weight and batch_size None
    config, chosen = resolve_start(model, calibration, config, options, started)
    calibration = rebatched(calibration, config.batch_size)  # the batch chosen (after a one-shot start: 16)
    teacher = copy.deepcopy(model)
    start = None
    if config.init not in ALLOCATIONS:
        run_oneshot(model, first_rows(calibration, config.start_samples), config, options)
        start = copy.deepcopy(model) if config.keep_start else None  # the one-shot result, plain
    prepared, config = prepare_from_config(model, teacher, calibration, config)
    history = learn(prepared, teacher, calibration, config, options, started=started)
    # The report's config: the start, rate and batch this run took (the config may leave them to fcpts).
    history.run.update(
        init=config.init, allocation=config.allocation, lr_weight=config.lr_weight, batch_size=config.batch_size
    )
    if chosen:
        history.run["start"] = chosen
    finalize(prepared)
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    if start is not None and history:  # never below the start (fcpts.method.keep_start)
        history.run["start_check"] = keep_better(model, start, teacher, calibration, config)
    return history


def run_oneshot(model: nn.Module, calibration: Calibration, config: FCPTSConfig, options: RunOptions) -> None:
    """Prune ``model`` in place with the registered one-shot method ``config.init`` (fcpts' start).

    Through the method registry, with fcpts' target, pattern, layers, seed and batch size (and its
    importance score, where the method has one and fcpts' is not the default ``magnitude``), and
    ``config.allocation`` if set; the method's other settings are its defaults (e.g. SparseGPT's
    BatchNorm recalibration).
    """
    entry = METHODS.get(config.init)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    shared: dict[str, Any] = {
        "target_sparsity": config.target_sparsity,
        "pattern": config.pattern,
        "layer_filter": config.layer_filter,
        "seed": config.seed,
        "batch_size": config.batch_size,
    }
    if "importance" in fields and config.importance != "magnitude":
        shared["importance"] = config.importance
    if config.allocation is not None:
        if "allocation" not in fields:
            raise FcptsError(f"method {config.init!r} has no allocation to set (allocation {config.allocation!r})")
        shared["allocation"] = config.allocation
    entry.run(model, calibration, make_config(config.init, **shared), RunOptions(device=calibration.device))


def oneshot_score_fns(
    model: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> tuple[list[LayerScore | None] | None, list[float]]:
    """What the thresholds apply to after a one-shot start, and each layer's sparsity: its zeros.

    The one-shot method left its pruned weights at 0 and its kept ones updated: with each layer's
    sparsity its share of zeros, :func:`.prepare` places the threshold halfway between 0 and the
    smallest kept score, so every initial mask is the method's mask exactly (and the allocation
    is its allocation). The scores are those of :func:`layer_score_fns` (0 for a zero weight);
    with a pattern, each layer's fixed mask is the method's.
    """
    layers = prunable(model, config)
    with torch.no_grad():
        keeps = [module.weight != 0 for module in layers.values()]
    sparsities = [int((~keep).sum()) / keep.numel() for keep in keeps]
    if pattern_of(config) is not None:
        return [functools.partial(_constant_score, keep.float()) for keep in keeps], sparsities
    score_fns, _ = layer_score_fns(model, calibration, config)
    return score_fns, sparsities


def _constant_score(score: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A score fixed in advance, whatever the weights become (e.g. a fixed mask: 1 kept, 0 pruned)."""
    return score


def layer_score_fns(
    model: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> tuple[list[LayerScore | None] | None, list[float] | None]:
    """What each layer's threshold applies to, and fixed per-layer sparsities for an N:M pattern.

    ``|W|`` (None, the paper) unless ``config.importance`` is another score: then the score of the
    current weights with the input norms measured once on the dense model. With a pattern, each
    layer's score is its fixed N:M keep-mask (1/0) and its sparsity N/M (0 for a layer whose input
    size does not divide by M: it stays dense). With ``1xB`` blocks, each weight's score is its
    block's mean score (:func:`~fcpts.core.patterns.block_spread`): a threshold keeps or prunes
    whole blocks.
    """
    importance = get_importance(config.importance)
    block = block_size_of(config)
    if config.pattern is None and importance.name == "magnitude":
        return None, None
    layers = prunable(model, config)
    if pattern_of(config) is not None:
        n, m = parse_pattern(config.pattern)
        fns: list[LayerScore | None] = []
        sparsities = []
        for score in layer_scores(model, layers, calibration, config.importance):
            ok = divides(score, m)
            keep = ~nm_prune_flags(score, n, m) if ok else torch.ones_like(score, dtype=torch.bool)
            fns.append(functools.partial(_constant_score, keep.float()))  # 1/0: any t in (0, 1)
            sparsities.append(n / m if ok else 0.0)
        return fns, sparsities
    norms: dict[str, torch.Tensor] = {}
    if importance.needs_inputs:
        norms = input_norms(model, layers, calibration.epoch())
    fns = [functools.partial(_score_with, importance.score, norms.get(name), block or 1) for name in layers]
    return fns, None


def _score_with(score: Any, input_norms: torch.Tensor | None, block: int, weight: torch.Tensor) -> torch.Tensor:
    return score(weight, input_norms) if block == 1 else block_spread(score(weight, input_norms), block)


def first_rows(calibration: Calibration, samples: int) -> Calibration:
    """The first ``samples`` rows of a tensor or Dataset calibration set (a token dict is a Dataset here):
    what the refit and a one-shot start read. All of it for 0, or for an iterable of batches.

    >>> first_rows(Calibration({"input_ids": torch.zeros(8, 3)}, 4), 5).rows
    5
    """
    rows = calibration.rows
    if rows is None or samples <= 0 or samples >= rows:
        return calibration
    data = (
        calibration.tensor[:samples] if calibration.tensor is not None else Subset(calibration.dataset, range(samples))
    )
    return Calibration(data, calibration.batch_size, calibration.seed, calibration.device)


def rebatched(calibration: Calibration, batch_size: int) -> Calibration:
    """``calibration`` cut into batches of ``batch_size`` (itself if it already is, or holds ready-made batches).

    >>> rebatched(Calibration(torch.zeros(8, 3), 4), 2).batch_size
    2
    """
    if calibration.batch_size == batch_size or calibration.rows is None:
        return calibration
    data = calibration.tensor if calibration.tensor is not None else calibration.dataset
    return Calibration(data, batch_size, calibration.seed, calibration.device)
