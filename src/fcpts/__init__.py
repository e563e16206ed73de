"""fcpts: fast and controllable post-training sparsity (FCPTS, Gong et al., AAAI 2024).

>>> import torch, fcpts
>>> net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> result = fcpts.prune(net, torch.randn(128, 16), fcpts.FCPTSConfig(target_sparsity=0.9, iters=10))
>>> result.global_sparsity == 0.9
True
"""

# The plug-in packages register their methods and specs when imported.
from . import baselines, data, method, models
from .api import METHODS, LayerResult, PruneConfig, PruneResult, RunOptions, make_config, prune, register_method
from .baselines import MagnitudeConfig, POTConfig, ScoreConfig, SparseGPTConfig
from .core.allocation import ALLOCATIONS, allocate, register_allocation
from .core.batchnorm import recalibrate_batchnorm
from .core.evaluate import accuracy, global_sparsity, layer_sparsity
from .core.importance import IMPORTANCES, register_importance
from .core.layers import default_layer_filter, exclude, prunable_layers
from .data import load_data, register_data_spec
from .deploy import export, load
from .errors import FcptsError
from .method import FCPTSConfig, Prepared, ThresholdMask
from .method.learn import learn
from .method.prepare import finalize, prepare
from .models import load_model, register_model_spec
from .models.reference import ReferenceCNN, load_reference_model
from .registry import Registry
from .version import __version__

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
    "Registry",
    "RunOptions",
    "ScoreConfig",
    "SparseGPTConfig",
    "ThresholdMask",
    "__version__",
    "accuracy",
    "allocate",
    "baselines",
    "data",
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
    "method",
    "models",
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
