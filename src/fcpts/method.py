"""FCPTS (Gong et al., AAAI 2024) in one file: losses, the learning loop, and the method.

    L = L_rec(teacher(x), student(x)) + λ · |S(t) − S*|

* every prunable layer has one threshold ``t_l``; its mask is ``|W_l| > t_l`` (:mod:`fcpts.sparsify`);
* ``S(t) = Σ n_l s_l(t_l) / Σ n_l`` is exact in value, and differentiable through the KDE bridge
  ``ds_l/dt_l = p̂_l(t_l)`` (:mod:`fcpts.bridge`), so the control loss moves the thresholds;
* ``L_rec``: KL divergence with temperature between the dense teacher's and the sparse student's
  outputs, plus optional MSE on chosen intermediate modules (block-wise feature matching);
* thresholds and the kept weights are optimised jointly (Adam); the reconstruction loss reaches
  the thresholds through a sigmoid surrogate of the mask (``threshold_grad``);
* :func:`fcpts.sparsify.finalize` then makes the zero count exactly ``round(S* · N)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .allocation import ALLOCATIONS
from .api import PruneConfig, register_method
from .batchnorm import recalibrate_batchnorm
from .bridge import BANDWIDTH_RULES
from .calibration import Calibration, call_model
from .errors import FcptsError
from .evaluate import output_logits, predict
from .sparsify import THRESHOLD_GRADS, Prepared, finalize, prepare


@dataclass
class FCPTSConfig(PruneConfig):
    """FCPTS options. The defaults are the benchmark's best on the reference CNN (see README).

    >>> FCPTSConfig(target_sparsity=0.9).init
    'erk'
    """

    iters: int = 1000
    lr_threshold: float = 0.02  # Adam on log t: a relative step of ~2% per iteration at most
    lr_weight: float = 1e-3  # Adam on the kept weights (and biases, norms); 0 freezes them
    learn_thresholds: bool = True  # False: the initial allocation stays fixed (reconstruction only)
    control_weight: float = 10.0  # λ
    control_loss: str = "abs"  # "abs": λ|S − S*|, "squared": λ(S − S*)²
    temperature: float = 1.0  # of the KL distillation on the outputs
    feature_modules: tuple[str, ...] = ()  # names of modules whose outputs are matched by MSE
    feature_weight: float = 1.0
    init: str = "erk"  # initial allocation: erk, uniform, global
    threshold_grad: str = "surrogate"  # "surrogate" or "none" (control loss only moves t)
    bandwidth: str | float = "silverman"
    kde_samples: int = 4096
    recalibrate_bn: bool = False

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
        if not self.temperature > 0:
            raise FcptsError(f"temperature must be > 0, got {self.temperature!r}")
        if self.kde_samples < 2:
            raise FcptsError(f"kde_samples must be ≥ 2, got {self.kde_samples}")
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
        self.feature_modules = tuple(self.feature_modules)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over the batch (B, C).

    >>> distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), 2.0).item()
    0.0
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t


def control_loss(global_sparsity: torch.Tensor, target: float, kind: str = "abs") -> torch.Tensor:
    """``|S − S*|`` or ``(S − S*)²``.

    >>> round(control_loss(torch.tensor(0.7), 0.8).item(), 6), round(control_loss(torch.tensor(0.7), 0.8, "squared").item(), 6)
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


def learn(
    prepared: Prepared, teacher: nn.Module, calibration: Calibration, config: FCPTSConfig
) -> list[dict[str, float]]:
    """Minimise ``L_rec + L_c`` over thresholds and kept weights; returns the per-step loss history."""
    student = prepared.model
    teacher.eval().requires_grad_(False)
    student.eval()  # BatchNorm uses the dense running statistics; the kept weights adapt to them
    thresholds = prepared.threshold_parameters()
    for p in thresholds:
        p.requires_grad_(config.learn_thresholds)
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
    cached = None
    if calibration.tensor is not None and not config.feature_modules:
        cached = predict(teacher, calibration.tensor, config.batch_size).to(calibration.device)
    history: list[dict[str, float]] = []
    stream = calibration.stream()
    try:
        for step in tqdm(range(config.iters), desc="fcpts", disable=not config.progress, leave=False):
            inputs, index = next(stream)
            if cached is not None and index is not None:
                target_logits = cached[index.to(cached.device)]
            else:
                with torch.no_grad():
                    target_logits = output_logits(call_model(teacher, inputs))
            logits = output_logits(call_model(student, inputs))
            rec = distillation_loss(logits, target_logits, config.temperature)
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
            optimizer.step()
            scheduler.step()
            history.append(
                {
                    "step": step,
                    "loss": loss.item(),
                    "rec": rec.item(),
                    "feature": feat.item(),
                    "sparsity": sparsity.item(),
                }
            )
    finally:
        teacher_tap.close()
        student_tap.close()
        for p, flag in flags:
            p.requires_grad_(flag)
    return history


@register_method("fcpts", FCPTSConfig, "learned per-layer thresholds under a global target, with reconstruction")
def run_fcpts(model: nn.Module, calibration: Calibration, config: FCPTSConfig) -> list[dict[str, float]]:
    """FCPTS: prepare thresholds (initial allocation), learn them with the kept weights, finalize exactly."""
    teacher = copy.deepcopy(model)
    prepared = prepare(
        model,
        config.target_sparsity,
        config.init,
        config.layer_filter,
        config.kde_samples,
        config.bandwidth,
        config.threshold_grad,
        config.seed,
    )
    history = learn(prepared, teacher, calibration, config)
    finalize(prepared)
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, calibration.epoch())
    return history
