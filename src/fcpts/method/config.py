"""The settings of FCPTS: :class:`FCPTSConfig`, every option of the method with its default.

The defaults were measured on the reference CNN (README, Benchmark); the ablation's alternatives
(histogram density, no surrogate, squared control loss, learning the thresholds to the last step,
the refit before learning) are options here. A bad value fails when the config is made, with one
:class:`~fcpts.errors.FcptsError`; the mask's own options are checked by
:func:`~fcpts.method.threshold_mask.validate_mask_options`, the same check :class:`ThresholdMask`
runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..api import METHODS, PruneConfig
from ..core.allocation import ALLOCATIONS
from ..core.importance import get_importance
from ..errors import FcptsError
from .losses import RECONSTRUCTION_LOSSES
from .speed import TEACHER_PRECISIONS
from .threshold_mask import validate_mask_options

#: The default time budget: 10 minutes. The 1000 steps fit on the reference models (47 s for the
#: CNN on 2 cores, about 3 minutes for the ViT), so it changes nothing there; a 224×224 CNN or
#: MiniLM on a CPU gets as many steps as fit instead of a run of hours (README, Benchmark).
DEFAULT_TIME_BUDGET_S = 600.0
#: The kept-weight learning rate from an allocation start (``lr_weight=None``): measured on the reference CNN.
ALLOCATION_LR_WEIGHT = 1e-3
#: ... and from a one-shot start: a tenth, which refines the fit where the allocation start's rate undoes it
#: (EfficientNet-Lite1 from POT: the calibration loss rose from 0.126 to 1.88 in 10 steps at 1e-3; docs/benchmarks.md).
ONESHOT_LR_WEIGHT = 1e-4
#: The learning batch from an allocation start (``batch_size=None``) ...
ALLOCATION_BATCH = 64
#: ... and from a one-shot start, where the budget affords few steps: a quarter of it, so four times the steps
#: (EfficientNet-Lite1 from POT-LAMP on 1024 images at 0.8: 50.4% and 49.0% top-1 agreement in two runs against
#: 46.6% at batch 64, at 6-8 GiB peak instead of 11; docs/benchmarks.md).
ONESHOT_BATCH = 16

#: The learning loop's options with a fixed set of values (the first: the default).
CHOICES = {
    "bandwidth_update": ("step", "once"),
    "lr_schedule": ("cosine", "constant"),
    "sampling": ("epochs", "replacement"),
}


@dataclass
class FCPTSConfig(PruneConfig):
    """FCPTS options; the defaults were measured on the reference CNN (README, Benchmark).

    >>> FCPTSConfig(target_sparsity=0.9).init
    'auto'
    """

    # the learning batch; None: 64 from an allocation, 16 from a one-shot start (fcpts.method.start)
    batch_size: int | None = None  # type: ignore[assignment]
    iters: int = 1000
    lr_threshold: float = 0.02  # Adam on log t: a relative step of ~2% per iteration at most
    # Adam on the kept weights (and biases, norms); 0 freezes them; None: 1e-3 from an allocation, 1e-4 from a
    # one-shot start (fcpts.method.start)
    lr_weight: float | None = None
    learn_thresholds: bool = True  # False: the initial masks stay fixed (reconstruction only)
    freeze_masks_at: float = 0.9  # after this fraction of iters, hold finalize's exact masks (1: learn t to the end)
    control_weight: float = 10.0  # λ
    control_loss: str = "abs"  # "abs": λ|S − S*|, "squared": λ(S − S*)²
    temperature: float = 1.0  # of the KL distillation on the outputs
    loss: str = "auto"  # reconstruction loss on the outputs: auto (kl for logits, cosine otherwise), kl, mse, cosine
    feature_modules: tuple[str, ...] = ()  # names of modules whose outputs are matched by MSE
    feature_weight: float = 1.0
    # the initial allocation (erk, uniform, global, lamp, owl), or a one-shot method to start from
    # (sparsegpt, pot, wanda...: its masks, allocation and weights; fcpts.method.fcpts.run_oneshot), or "auto":
    # ERK, or POT under LAMP when the time budget affords few steps (fcpts.method.start)
    init: str = "auto"
    allocation: str | None = None  # with a one-shot init: that method's allocation (None: its default; auto: lamp)
    start_samples: int = 1024  # calibration samples a one-shot start reads (its cost grows with them; 0: all)
    keep_start: bool = True  # with a one-shot init: return it if learning ends with a higher calibration loss
    threshold_grad: str = "surrogate"  # "surrogate", "ste" (straight-through: pruned weights near t learn) or "none"
    bandwidth: str | float = "silverman"
    bandwidth_update: str = "step"  # the KDE bandwidths: recomputed every "step", or "once" at the start
    lr_schedule: str = "cosine"  # the kept weights' learning rate: "cosine" decay to 0, or "constant"
    sampling: str = "epochs"  # calibration batches: shuffled "epochs", or drawn with "replacement"
    density: str = "kde"  # the bridge's ds/dt: "kde" (the paper) or "histogram" (ablation)
    kde_samples: int = 4096
    recalibrate_bn: bool = False
    importance: str = "magnitude"  # what the thresholds apply to: |W| (the paper), "wanda", or any registered score
    refit_init: bool = False  # before learning, refit the kept weights layer by layer (POT's least squares)
    refit_damp: float = 0.01
    refit_samples: int = 1024  # calibration samples the refit reads (its cost grows with them; 0: all)
    refit_rank: str = "refitted"  # after the refit, thresholds rank the refitted weights, or the "dense" scores
    teacher_precision: str = "float32"  # the teacher's no-grad forward and output cache: "float32" or "bfloat16"
    # wall time of the whole run: iters is sized to fit (at most iters); None: exactly iters steps
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S

    method = "fcpts"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iters < 0:
            raise FcptsError(f"iters must be ≥ 0, got {self.iters}")
        if self.control_loss not in ("abs", "squared"):
            raise FcptsError(f"control_loss must be 'abs' or 'squared', got {self.control_loss!r}")
        for name in ("lr_threshold", "lr_weight", "control_weight", "feature_weight"):
            if name == "lr_weight" and self.lr_weight is None:
                continue  # chosen by the start (fcpts.method.start)
            if not getattr(self, name) >= 0:
                raise FcptsError(f"{name} must be ≥ 0, got {getattr(self, name)!r}")
        if self.loss != "auto" and self.loss not in RECONSTRUCTION_LOSSES:
            raise FcptsError(
                f"unknown loss {self.loss!r}; choose from auto, {', '.join(RECONSTRUCTION_LOSSES.names())}"
            )
        if not self.temperature > 0:
            raise FcptsError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0.0 <= self.freeze_masks_at <= 1.0:
            raise FcptsError(f"freeze_masks_at must be in [0, 1], got {self.freeze_masks_at!r}")
        if self.refit_rank not in ("dense", "refitted"):
            raise FcptsError(f"refit_rank must be 'dense' or 'refitted', got {self.refit_rank!r}")
        for name in ("refit_samples", "start_samples"):
            if getattr(self, name) < 0:
                raise FcptsError(f"{name} must be ≥ 0 (0: all), got {getattr(self, name)}")
        if self.kde_samples < 2:
            raise FcptsError(f"kde_samples must be ≥ 2, got {self.kde_samples}")
        get_importance(self.importance)
        if self.init != "auto" and self.init not in ALLOCATIONS and self.init not in oneshot_methods():
            raise FcptsError(
                f"init must be auto, an allocation ({', '.join(ALLOCATIONS.names())}) or a one-shot method "
                f"({', '.join(oneshot_methods())}), got {self.init!r}"
            )
        if self.allocation is not None:
            if self.init in ALLOCATIONS:
                raise FcptsError(
                    f"allocation {self.allocation!r} applies to a one-shot init (e.g. init='sparsegpt'); "
                    f"init {self.init!r} is itself the allocation"
                )
            ALLOCATIONS.get(self.allocation)
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise FcptsError(f"teacher_precision must be one of {TEACHER_PRECISIONS}, got {self.teacher_precision!r}")
        if self.time_budget_s is not None and not (self.time_budget_s > 0 and math.isfinite(self.time_budget_s)):
            raise FcptsError(f"time_budget_s must be > 0 seconds (or None), got {self.time_budget_s!r}")
        validate_mask_options(self.threshold_grad, self.density, self.bandwidth)
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise FcptsError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        self.feature_modules = tuple(self.feature_modules)

    @property
    def calibration_batch(self) -> int:
        """The batch the calibration stream is cut into before the start is known: ``batch_size`` or 64."""
        return self.batch_size if self.batch_size is not None else ALLOCATION_BATCH

    @property
    def learning_batch(self) -> int:
        """``batch_size``, or for None the start's batch: a quarter after a one-shot ``init``.

        >>> FCPTSConfig(0.5, init="pot").learning_batch, FCPTSConfig(0.5).learning_batch
        (16, 64)
        """
        return self._by_start(self.batch_size, ONESHOT_BATCH, ALLOCATION_BATCH)

    @property
    def kept_weight_rate(self) -> float:
        """``lr_weight``, or for None the start's rate: a tenth after a one-shot ``init``.

        >>> FCPTSConfig(0.5, init="pot").kept_weight_rate, FCPTSConfig(0.5).kept_weight_rate
        (0.0001, 0.001)
        """
        return self._by_start(self.lr_weight, ONESHOT_LR_WEIGHT, ALLOCATION_LR_WEIGHT)

    def _by_start(self, value: Any, oneshot: Any, allocation: Any) -> Any:
        """``value`` if set, else the one-shot start's or the allocation start's default for ``init``."""
        if value is not None:
            return value
        return oneshot if self.init in oneshot_methods() else allocation


def oneshot_methods() -> list[str]:
    """The registered methods fcpts can start from (``init``): every one without a learning loop of its own.

    >>> "sparsegpt" in oneshot_methods(), "fcpts" in oneshot_methods()
    (True, False)
    """
    return [name for name in METHODS.names() if not METHODS[name].checkpoints]
