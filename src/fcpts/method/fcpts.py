"""FCPTS (Gong et al., AAAI 2024) in one file: losses, the learning loop, and the method.

    L = L_rec(teacher(x), student(x)) + λ · |S(t) − S*|

* every prunable layer has one threshold ``t_l``; its mask is ``|W_l| > t_l`` (:mod:`fcpts.sparsify`);
* ``S(t) = Σ n_l s_l(t_l) / Σ n_l`` is exact in value, and differentiable through the KDE bridge
  ``ds_l/dt_l = p̂_l(t_l)`` (:mod:`fcpts.bridge`), so the control loss moves the thresholds;
* ``L_rec``: KL divergence with temperature between the dense teacher's and the sparse student's
  logits (``loss="kl"``), or, for a model whose output holds embeddings rather than logits (a
  sentence encoder, ``last_hidden_state``), ``1 − cosine`` (``"cosine"``) or MSE (``"mse"``) on the
  output vectors; ``"auto"`` chooses kl or cosine by the output kind. Plus optional MSE on chosen
  intermediate modules (block-wise feature matching);
* thresholds and the kept weights are optimised jointly (Adam); the reconstruction loss reaches
  the thresholds through a sigmoid surrogate of the mask (``threshold_grad``);
* for the last 10% of the steps (``freeze_masks_at``) the masks are held at finalize's exact
  global count, so the kept weights adapt to the final masks and :func:`fcpts.sparsify.finalize`
  (zero count exactly ``round(S* · N)``) changes no mask; the ablation measured it against learning
  the thresholds to the last step (README, Ablation).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .activations import input_norms
from .allocation import ALLOCATIONS
from .api import PruneConfig, register_method
from .batchnorm import recalibrate_batchnorm
from .bridge import BANDWIDTH_RULES, SMOOTH_CDFS
from .calibration import Calibration, batch_size_of, call_model, shard
from .checkpoint import has_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from .checks import check_finite
from .errors import FcptsError
from .evaluate import is_logits_output, output_logits
from .importance import get_importance
from .oneshot import layer_scores, prunable
from .patterns import divides, nm_prune_flags, parse_pattern
from .pot import refit_layers
from .sparsify import THRESHOLD_GRADS, LayerScore, Prepared, exact_keep_masks, finalize, prepare


@dataclass
class FCPTSConfig(PruneConfig):
    """FCPTS options; the defaults were measured on the reference CNN (README, Benchmark).

    >>> FCPTSConfig(target_sparsity=0.9).init
    'erk'
    """

    iters: int = 1000
    lr_threshold: float = 0.02  # Adam on log t: a relative step of ~2% per iteration at most
    lr_weight: float = 1e-3  # Adam on the kept weights (and biases, norms); 0 freezes them
    learn_thresholds: bool = True  # False: the initial masks stay fixed (reconstruction only)
    freeze_masks_at: float = 0.9  # after this fraction of iters, hold finalize's exact masks (1: learn t to the end)
    control_weight: float = 10.0  # λ
    control_loss: str = "abs"  # "abs": λ|S − S*|, "squared": λ(S − S*)²
    temperature: float = 1.0  # of the KL distillation on the outputs
    loss: str = "auto"  # reconstruction loss on the outputs: auto (kl for logits, cosine otherwise), kl, mse, cosine
    feature_modules: tuple[str, ...] = ()  # names of modules whose outputs are matched by MSE
    feature_weight: float = 1.0
    init: str = "erk"  # initial allocation: erk, uniform, global, lamp
    threshold_grad: str = "surrogate"  # "surrogate" or "none" (control loss only moves t)
    bandwidth: str | float = "silverman"
    density: str = "kde"  # the bridge's ds/dt: "kde" (the paper) or "histogram" (ablation)
    kde_samples: int = 4096
    recalibrate_bn: bool = False
    checkpoint_dir: str | None = None  # where learn() keeps checkpoint.pt (replaced atomically)
    checkpoint_every: int = 0  # save the training state every N steps; 0: never
    resume: bool = False  # continue from the checkpoint in checkpoint_dir: same options, same result
    importance: str = "magnitude"  # what the thresholds apply to: |W| (the paper), "wanda", or any registered score
    refit_init: bool = False  # before learning, refit the kept weights layer by layer (POT's least squares)
    refit_damp: float = 0.01
    refit_samples: int = 1024  # calibration samples the refit reads (its cost grows with them; 0: all)
    refit_rank: str = "refitted"  # after the refit, thresholds rank the refitted weights, or the "dense" scores

    method = "fcpts"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iters < 0:
            raise FcptsError(f"iters must be ≥ 0, got {self.iters}")
        if self.control_loss not in ("abs", "squared"):
            raise FcptsError(f"control_loss must be 'abs' or 'squared', got {self.control_loss!r}")
        for name in ("lr_threshold", "lr_weight", "control_weight", "feature_weight"):
            if not getattr(self, name) >= 0:
                raise FcptsError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")
        if self.loss != "auto" and self.loss not in RECONSTRUCTION_LOSSES:
            raise FcptsError(f"unknown loss {self.loss!r}; choose from auto, {', '.join(RECONSTRUCTION_LOSSES)}")
        if not self.temperature > 0:
            raise FcptsError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.freeze_masks_at <= 1.0:
            raise FcptsError(f"freeze_masks_at must be in [0, 1], got {self.freeze_masks_at!r}")
        if self.refit_rank not in ("dense", "refitted"):
            raise FcptsError(f"refit_rank must be 'dense' or 'refitted', got {self.refit_rank!r}")
        if self.refit_samples < 0:
            raise FcptsError(f"refit_samples must be ≥ 0 (0: all), got {self.refit_samples}")
        if self.kde_samples < 2:
            raise FcptsError(f"kde_samples must be ≥ 2, got {self.kde_samples}")
        get_importance(self.importance)
        if self.init not in ALLOCATIONS:
            raise FcptsError(f"unknown init {self.init!r}; choose from {', '.join(sorted(ALLOCATIONS))}")
        if isinstance(self.bandwidth, str) and self.bandwidth not in BANDWIDTH_RULES:
            raise FcptsError(
                f"unknown bandwidth rule {self.bandwidth!r}; choose from {sorted(BANDWIDTH_RULES)} or a number"
            )
        if not isinstance(self.bandwidth, str) and not self.bandwidth > 0:
            raise FcptsError(f"bandwidth must be a rule name or a number > 0, got {self.bandwidth!r}")
        if self.threshold_grad not in THRESHOLD_GRADS:
            raise FcptsError(f"threshold_grad must be one of {THRESHOLD_GRADS}, got {self.threshold_grad!r}")
        if self.density not in SMOOTH_CDFS:
            raise FcptsError(f"density must be one of {sorted(SMOOTH_CDFS)}, got {self.density!r}")
        self.feature_modules = tuple(self.feature_modules)
        if self.checkpoint_every < 0:
            raise FcptsError(f"checkpoint_every must be ≥ 0, got {self.checkpoint_every}")
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        elif self.checkpoint_every or self.resume:
            raise FcptsError("checkpoint_every and resume need a checkpoint_dir")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch (B, C).

    >>> distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 2.0).item()
    0.0
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``1 − cos(student, teacher)`` along the last dimension, averaged over the rest (B, [T,] D).

    Scale-free like the KL on logits (0 when equal, at most 2), so the control weight λ keeps its
    meaning; ``temperature`` is unused (one signature for every loss).

    >>> cosine_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item()
    1.0
    """
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean squared error between the output vectors (``temperature`` unused).

    >>> mse_loss(torch.zeros(2, 2), torch.ones(2, 2)).item()
    1.0
    """
    return F.mse_loss(student.float(), teacher.float())


#: ``loss`` name → ``fn(student output, teacher output, temperature)``.
RECONSTRUCTION_LOSSES = {"kl": distillation_loss, "cosine": cosine_loss, "mse": mse_loss}


def resolve_loss(loss: str, output: Any) -> str:
    """The loss for a model output: ``loss`` itself, or for ``"auto"`` kl on logits, cosine on embeddings.

    >>> resolve_loss("auto", torch.zeros(1, 3)), resolve_loss("auto", {"last_hidden_state": 0}), resolve_loss("mse", 0)
    ('kl', 'cosine', 'mse')
    """
    if loss != "auto":
        return loss
    return "kl" if is_logits_output(output) else "cosine"


def control_loss(global_sparsity: torch.Tensor, target: float, kind: str = "abs") -> torch.Tensor:
    """``|S − S*|`` or ``(S − S*)²``.

    >>> s = torch.tensor(0.7)
    >>> round(control_loss(s, 0.8).item(), 6), round(control_loss(s, 0.8, "squared").item(), 6)
    (0.1, 0.01)
    """
    gap = global_sparsity - target
    return gap.abs() if kind == "abs" else gap * gap


class _FeatureTap:
    """Forward hooks that record the outputs of the named modules of one model (removed on close)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise FcptsError(f"feature_modules not found in the model: {', '.join(missing)}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output_logits(output)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


#: Largest teacher-output cache, in bytes, :func:`learn` keeps for tensor calibration data; above
#: it the teacher runs on every batch instead, so memory does not grow with N × output size.
#: 256 MiB holds 4096 samples of a 16k-way float32 output.
TEACHER_CACHE_BYTES = 256 * 2**20

#: How a non-finite teacher output is named in the error (the dense model is the teacher).
TEACHER_OUTPUTS = "the dense model's output on the calibration data"


@torch.no_grad()
def cache_teacher_outputs(
    teacher: nn.Module, calibration: Calibration, batch_size: int, budget_bytes: int
) -> torch.Tensor | None:
    """The teacher's outputs on every row of a tensor calibration set, on its device; None to stream.

    One sample gives the output size; the cache (preallocated: no list + concatenate peak) is
    built only if ``N × output size`` fits ``budget_bytes``.
    """
    x, device = calibration.tensor, calibration.device
    if x is None:
        return None
    probe = output_logits(call_model(teacher, x[:1].to(device)))  # (1, C...)
    if len(x) * probe[0].numel() * probe.element_size() > budget_bytes:
        return None
    cached = torch.empty((len(x), *probe.shape[1:]), dtype=probe.dtype, device=device)
    for i in range(0, len(x), batch_size):
        cached[i : i + batch_size] = output_logits(call_model(teacher, x[i : i + batch_size].to(device)))
    check_finite(cached, TEACHER_OUTPUTS)
    return cached


def learn(
    prepared: Prepared, teacher: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> list[dict[str, float]]:
    """Minimise ``L_rec + L_c`` over thresholds and kept weights; returns the per-step loss history.

    **Data parallel.** Inside an initialised process group (``torchrun``, or your own
    ``init_process_group``), ``config.batch_size`` is the *global* batch: every rank reads the same
    global batch and computes on its own contiguous shard of it (``batch_size / world_size``
    samples; shard sizes differ by at most one), and each rank's gradients, weighted by its share of
    the batch, are summed over the ranks before every step (:mod:`fcpts.distributed`). Every rank
    thus takes the step one process takes on the whole batch (equal up to float rounding: the sums
    run in another order) and all ranks end with identical thresholds and weights. The data and the
    model must be the same on every rank; rank 0's weights are broadcast at the start and the end.

    **Checkpoints.** With ``config.checkpoint_every = N`` the training state (step, student with
    thresholds, optimizer, scheduler, RNG, history) goes to ``config.checkpoint_dir`` every N steps
    (by rank 0); ``config.resume`` continues from it and reaches the same result, bit for bit, as
    an uninterrupted run with the same options (:mod:`fcpts.checkpoint`).
    """
    student = prepared.model
    teacher.eval().requires_grad_(False)
    student.eval()  # BatchNorm uses the dense running statistics; the kept weights adapt to them
    thresholds = prepared.threshold_parameters()
    for p in thresholds:
        p.requires_grad_(config.learn_thresholds)
    if not config.learn_thresholds:
        # A fixed allocation: hold the initial masks, so that the kept weights learning cannot move
        # weights across the (fixed) thresholds. Before a resume restores the learned weights, so
        # a resumed run freezes the same masks.
        for layer in prepared.layers:
            layer.mask.freeze(layer.weight)
    threshold_ids = {id(p) for p in thresholds}
    weights = [p for p in student.parameters() if p.requires_grad and id(p) not in threshold_ids]
    if config.lr_weight <= 0:
        weights = []
    # Thresholds keep a constant rate to track the target to the end; the weights decay (cosine) to 0.
    groups, schedules = [], []
    if config.learn_thresholds:
        groups.append({"params": thresholds, "lr": config.lr_threshold})
        schedules.append(lambda i: 1.0)
    if weights:
        groups.append({"params": weights, "lr": config.lr_weight})
        schedules.append(lambda i: 0.5 * (1 + math.cos(math.pi * i / config.iters)))
    if not groups or config.iters == 0:
        return []
    if config.checkpoint_every and not config.resume and has_checkpoint(config.checkpoint_dir):  # type: ignore[arg-type]
        raise FcptsError(
            f"{config.checkpoint_dir} already holds a checkpoint: resume it (--resume) or choose another directory"
        )
    rank, world = distributed.rank(), distributed.world_size()
    if config.batch_size < world:
        raise FcptsError(f"batch_size {config.batch_size} (the global batch) is smaller than the {world} processes")
    # Every rank starts from rank 0's model (one built without a fixed seed differs between processes).
    distributed.broadcast_module(student)
    distributed.broadcast_module(teacher)
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    # Parameters outside the optimizer need no gradient; their flags are restored at the end.
    flags = [(p, p.requires_grad) for p in student.parameters()]
    trained = {id(p) for g in groups for p in g["params"]}
    for p, _ in flags:
        p.requires_grad_(id(p) in trained)
    teacher_tap = _FeatureTap(teacher, config.feature_modules)
    student_tap = _FeatureTap(student, config.feature_modules)
    # Without feature matching, the teacher's outputs on a tensor calibration set are computed
    # once (N, C) instead of once per step: a quarter of the step time on the reference CNN.
    # Only while they fit TEACHER_CACHE_BYTES; otherwise (and for streamed data) once per batch.
    reconstruction = None  # chosen from the student's first output (logits or embeddings: the "auto" loss)
    cached = None
    if calibration.tensor is not None and not config.feature_modules:
        cached = cache_teacher_outputs(teacher, calibration, config.batch_size, TEACHER_CACHE_BYTES)
    history: list[dict[str, float]] = []
    start = 0
    # The step that freezes the masks (none with fixed masks; at iters or beyond: never reached).
    freeze_step = math.ceil(config.freeze_masks_at * config.iters) if config.learn_thresholds else None
    if config.resume:
        state = load_checkpoint(config.checkpoint_dir, config.to_dict())  # type: ignore[arg-type]
        start, history = restore_checkpoint(state, student, optimizer, scheduler)
        if state.get("frozen_masks") is not None:  # frozen before the checkpoint: the masks of then
            _hold_masks(prepared, thresholds, state["frozen_masks"])
    trained_params = [p for g in groups for p in g["params"]]
    stream = calibration.stream(start_step=start)
    progress = config.progress and distributed.is_main()
    try:
        steps = range(start, config.iters)
        # disable=None: tqdm hides the bar when stderr is not a terminal (CI logs, pipes).
        disable = None if progress else True
        for step in tqdm(steps, desc="fcpts", initial=start, total=config.iters, disable=disable, leave=False):
            if step == freeze_step:  # allocation learned: the remaining steps only reconstruct
                _hold_masks(prepared, thresholds)
            # The weights changed in the last step: every learning layer's KDE bandwidth at once,
            # before the forward pass's surrogate masks and the bridge read them.
            prepared.refresh_bandwidths()
            inputs, index = next(stream)
            total = batch_size_of(inputs)
            if world > 1:  # this rank's shard of the global batch
                if total < world:
                    raise FcptsError(f"a calibration batch of {total} samples cannot be split over {world} processes")
                inputs, index = shard(inputs, rank, world), shard(index, rank, world)
            share = batch_size_of(inputs) / total
            if cached is not None and index is not None:
                target_logits = cached[index.to(cached.device)]
            else:
                with torch.no_grad():
                    target_logits = output_logits(call_model(teacher, inputs))
                check_finite(target_logits, TEACHER_OUTPUTS)
            output = call_model(student, inputs)
            if reconstruction is None:
                reconstruction = RECONSTRUCTION_LOSSES[resolve_loss(config.loss, output)]
            rec = reconstruction(output_logits(output), target_logits, config.temperature)
            feat = sum(
                (
                    F.mse_loss(student_tap.outputs[n].float(), teacher_tap.outputs[n].float())
                    for n in config.feature_modules
                ),
                torch.zeros((), device=rec.device),
            )
            sparsity = prepared.global_sparsity()
            ctrl = control_loss(sparsity, config.target_sparsity, config.control_loss)
            loss = rec + config.feature_weight * feat + config.control_weight * ctrl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_gradients(trained_params, share)
            optimizer.step()
            scheduler.step()
            # The logged losses are the global batch's (weighted sum over ranks, as for the gradients).
            stats = torch.stack([loss.detach(), rec.detach(), feat.detach()]).float() * share
            loss_value, rec_value, feat_value = distributed.all_reduce_sum_(stats).tolist()
            history.append(
                {"step": step, "loss": loss_value, "rec": rec_value, "feature": feat_value, "sparsity": sparsity.item()}
            )
            if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and distributed.is_main():
                save_checkpoint(
                    config.checkpoint_dir,  # type: ignore[arg-type]
                    step + 1,
                    student,
                    optimizer,
                    scheduler,
                    history,
                    config.to_dict(),
                    _frozen_masks(prepared),
                )
        # Identical on every rank whatever the backend's reduction order: rank 0's result for all.
        distributed.broadcast_module(student)
    finally:
        teacher_tap.close()
        student_tap.close()
        for p, flag in flags:
            p.requires_grad_(flag)
    return history


def _hold_masks(prepared: Prepared, thresholds: list[nn.Parameter], masks: list[torch.Tensor] | None = None) -> None:
    """Freeze every layer's mask at the exact target count, or at ``masks`` (a checkpoint's); t stops learning.

    The exact count is finalize's (:func:`fcpts.sparsify.exact_keep_masks`): the remaining steps
    reconstruct under the final masks, and finalize then changes no mask.
    """
    masks = exact_keep_masks(prepared) if masks is None else masks
    for layer, keep in zip(prepared.layers, masks, strict=True):
        layer.mask.frozen_keep = keep.to(layer.weight.device)
    for p in thresholds:
        p.requires_grad_(False)
        p.grad = None  # Adam skips a parameter without a gradient


def _frozen_masks(prepared: Prepared) -> list[torch.Tensor] | None:
    """Every layer's frozen mask, or None while the masks still follow the thresholds."""
    masks = [layer.mask.frozen_keep for layer in prepared.layers]
    return None if any(m is None for m in masks) else masks  # type: ignore[return-value]


def prepare_from_config(
    model: nn.Module, teacher: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> tuple[Prepared, FCPTSConfig]:
    """:func:`fcpts.prepare` ``model`` (in place) with every option of ``config``; the config :func:`learn` takes.

    The importance score and an N:M pattern decide what the thresholds apply to; with a pattern
    the mask is fixed (``learn_thresholds`` off in the returned config). ``refit_init`` fits the
    kept weights to ``teacher`` (the dense model) layer by layer before learning.
    """
    score_fns, sparsities = layer_score_fns(model, calibration, config)
    if config.pattern is not None:
        config = dataclasses.replace(config, learn_thresholds=False)
    prepared = prepare(
        model,
        config.target_sparsity,
        config.init,
        config.layer_filter,
        config.kde_samples,
        config.bandwidth,
        config.threshold_grad,
        config.seed,
        config.density,
        score_fns,
        sparsities,
    )
    if sparsities is not None:  # N:M: the pattern's own zero count (layers that do not divide stay dense)
        zeros = sum(round(s * layer.numel) for s, layer in zip(sparsities, prepared.layers, strict=True))
        prepared.target_sparsity = zeros / prepared.total
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
        refit_layers(model, teacher, keeps, refit_calibration(calibration, config.refit_samples), config.refit_damp)
    return prepared, config


@register_method("fcpts", FCPTSConfig, "learned per-layer thresholds under a global target, with reconstruction")
def run_fcpts(model: nn.Module, calibration: Calibration, config: FCPTSConfig) -> list[dict[str, float]]:
    """FCPTS: prepare thresholds (initial allocation), learn them with the kept weights, finalize exactly.

    With ``config.pattern`` N:M the mask is fixed (N:M by ``config.importance`` on the dense
    weights) and only the kept weights are learned: thresholds have no meaning there.
    """
    teacher = copy.deepcopy(model)
    prepared, config = prepare_from_config(model, teacher, calibration, config)
    history = learn(prepared, teacher, calibration, config)
    finalize(prepared)
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return history


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
    size does not divide by M: it stays dense).
    """
    importance = get_importance(config.importance)
    if config.pattern is None and importance.name == "magnitude":
        return None, None
    layers = prunable(model, config)
    if config.pattern is not None:
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
    return [functools.partial(_score_with, importance.score, norms.get(name)) for name in layers], None


def _score_with(score: Any, input_norms: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    return score(weight, input_norms)


def refit_calibration(calibration: Calibration, samples: int) -> Calibration:
    """The first ``samples`` rows of a tensor calibration set (all of it for 0, or for other data)."""
    if calibration.tensor is None or samples <= 0 or samples >= len(calibration.tensor):
        return calibration
    return Calibration(calibration.tensor[:samples], calibration.batch_size, calibration.seed, calibration.device)
