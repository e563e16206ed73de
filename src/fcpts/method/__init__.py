"""FCPTS (Gong et al., AAAI 2024): start reading here.

    L = L_rec(teacher(x), student(x)) + λ · |S(t) − S*|

Read top-down: :mod:`.config` (the settings), :mod:`.bridge` (the KDE that makes ``S(t)``
differentiable), :mod:`.threshold_mask` (one learnable threshold per layer), :mod:`.prepare`
(``prepare`` / ``finalize``: the mask lifecycle), :mod:`.losses`, :mod:`.learn` (the loop),
:mod:`.checkpoint` (resume), and :mod:`.fcpts`, the registered method that ties them together.
"""

from . import fcpts
from .config import FCPTSConfig
from .learn import learn
from .prepare import Prepared, finalize, prepare
from .threshold_mask import ThresholdMask

__all__ = ["FCPTSConfig", "Prepared", "ThresholdMask", "fcpts", "finalize", "learn", "prepare"]
