"""The methods FCPTS is compared with, one module per paper, each on :mod:`fcpts.core` only:
magnitude pruning under fixed allocations, Wanda (+ OWL), SparseGPT and POT.

Importing this package registers them.
"""

from . import magnitude, pot, sparsegpt, wanda
from .magnitude import MagnitudeConfig
from .pot import POTConfig
from .sparsegpt import SparseGPTConfig
from .wanda import ScoreConfig

__all__ = ["MagnitudeConfig", "POTConfig", "ScoreConfig", "SparseGPTConfig", "magnitude", "pot", "sparsegpt", "wanda"]
