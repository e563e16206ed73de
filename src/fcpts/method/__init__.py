"""FCPTS (Gong et al., AAAI 2024): start reading here.

    L = L_rec(teacher(x), student(x)) + λ · |S(t) − S*|

* every prunable layer has one threshold ``t_l``; its mask is ``|W_l| > t_l``;
* ``S(t) = Σ n_l s_l(t_l) / Σ n_l`` is exact in value, and differentiable through the KDE bridge
  ``ds_l/dt_l = p̂_l(t_l)``, so the control loss moves the thresholds;
* ``L_rec``: KL with temperature between teacher and student logits (or cosine/MSE on embeddings),
  plus optional MSE on chosen intermediate modules; for a detector, its raw head outputs anchor by
  anchor (:mod:`.detection_loss`);
* thresholds and kept weights are optimised jointly (Adam); the reconstruction loss reaches the
  thresholds through a sigmoid surrogate of the mask (``threshold_grad``);
* for the last 10% of the steps (``freeze_masks_at``) the masks are held at finalize's exact global
  count, so the kept weights adapt to the final masks and finalize changes no mask.

Read top-down: :mod:`.config` (the settings), :mod:`.bridge` (the KDE that makes ``S(t)``
differentiable), :mod:`.kde_sample` (a layer's KDE subsample and its cached bandwidth),
:mod:`.surrogate` (the fused mask whose ``t``-gradient is a sigmoid's), :mod:`.threshold_mask`
(one learnable threshold per layer), :mod:`.prepare` (``prepare`` / ``finalize``: the mask
lifecycle, and :class:`Prepared`, all masks at once), :mod:`.losses`, :mod:`.learn` (the loop),
:mod:`.speed` (the step's memory format and teacher precision), :mod:`.budget` (a time budget
sizes ``iters``), :mod:`.checkpoint` (resume), and :mod:`.fcpts`, the registered method that ties
them together (and starts from a one-shot method's result with ``init="sparsegpt"``, ...).
"""

# The functions prepare/learn/finalize are re-exported by the package ``fcpts``, not here: their
# names are this package's modules (``fcpts.method.learn`` stays the module).
from . import detection_loss, fcpts, learn, prepare
from .config import FCPTSConfig
from .prepare import Prepared
from .threshold_mask import ThresholdMask

__all__ = ["FCPTSConfig", "Prepared", "ThresholdMask", "detection_loss", "fcpts", "learn", "prepare"]
