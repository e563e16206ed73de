"""fcpts: fast and controllable post-training sparsity (FCPTS, Gong et al., AAAI 2024).

>>> import torch, fcpts
>>> net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> result = fcpts.prune(net, torch.randn(128, 16), fcpts.FCPTSConfig(target_sparsity=0.9, iters=10))
>>> result.global_sparsity == 0.9
True
"""

from . import baselines as _baselines  # noqa: F401  (registers the magnitude methods)
from .allocation import ALLOCATIONS, allocate, register_allocation
from .api import METHODS, LayerResult, PruneConfig, PruneResult, make_config, prune, register_method
from .baselines import MagnitudeConfig
from .batchnorm import recalibrate_batchnorm
from .data import load_data, register_data_spec
from .errors import FcptsError
from .evaluate import accuracy, global_sparsity, layer_sparsity
from .export import export, load
from .importance import IMPORTANCES, register_importance
from .layers import default_layer_filter, exclude, prunable_layers
from .method import FCPTSConfig, learn
from .models import ReferenceCNN, load_model, load_reference_model, register_model_spec
from .oneshot import ScoreConfig
from .pot import POTConfig
from .sparsegpt import SparseGPTConfig
from .sparsify import Prepared, ThresholdMask, finalize, prepare

__version__ = "0.1.0"

__all__ = [
    "ALLOCATIONS",
    "IMPORTANCES",
    "METHODS",
    "FCPTSConfig",
    "FcptsError",
    "LayerResult",
    "MagnitudeConfig",
    "POTConfig",
    "Prepared",
    "PruneConfig",
    "PruneResult",
    "ReferenceCNN",
    "ScoreConfig",
    "SparseGPTConfig",
    "ThresholdMask",
    "__version__",
    "accuracy",
    "allocate",
    "default_layer_filter",
    "exclude",
    "export",
    "finalize",
    "global_sparsity",
    "layer_sparsity",
    "learn",
    "load",
    "load_data",
    "load_model",
    "load_reference_model",
    "make_config",
    "prepare",
    "prunable_layers",
    "prune",
    "recalibrate_batchnorm",
    "register_allocation",
    "register_data_spec",
    "register_importance",
    "register_method",
    "register_model_spec",
]
