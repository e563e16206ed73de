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

from dataclasses import dataclass

from ..api import PruneConfig
from ..core.allocation import ALLOCATIONS
from ..core.importance import get_importance
from ..errors import FcptsError
from .bridge import BANDWIDTH_RULES, DENSITIES
from .losses import RECONSTRUCTION_LOSSES
from .threshold_mask import THRESHOLD_GRADS


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
        if self.loss != "auto":
            RECONSTRUCTION_LOSSES.get(self.loss)
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
        ALLOCATIONS.get(self.init)
        if isinstance(self.bandwidth, str) and self.bandwidth not in BANDWIDTH_RULES:
            raise FcptsError(
                f"unknown bandwidth rule {self.bandwidth!r}; choose from {sorted(BANDWIDTH_RULES)} or a number"
            )
        if not isinstance(self.bandwidth, str) and not self.bandwidth > 0:
            raise FcptsError(f"bandwidth must be a rule name or a number > 0, got {self.bandwidth!r}")
        if self.threshold_grad not in THRESHOLD_GRADS:
            raise FcptsError(f"threshold_grad must be one of {THRESHOLD_GRADS}, got {self.threshold_grad!r}")
        DENSITIES.get(self.density)
        self.feature_modules = tuple(self.feature_modules)
