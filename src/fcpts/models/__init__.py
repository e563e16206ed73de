"""Model specs: built-in models (:mod:`.reference`, :mod:`.vit`, :mod:`.efficientnet_lite`), ecosystem
prefixes (:mod:`.zoo`: ``torchvision:``, ``timm:``, ``hf:``, ``minilm``), and user factories;
:func:`load_model` resolves them.

Importing this package registers the built-in specs (each in its own module).
"""

from . import efficientnet_lite, mobile, refdet, reference, zoo
from .specs import (
    ALIASES,
    BUILTIN_MODELS,
    MODEL_SPECS,
    InputConfig,
    load_model,
    model_input_config,
    register_model_spec,
    resolved_spec,
)
from .state_dicts import KEY_MAPS, load_state_dict, map_by_order

__all__ = [
    "ALIASES",
    "BUILTIN_MODELS",
    "KEY_MAPS",
    "MODEL_SPECS",
    "InputConfig",
    "efficientnet_lite",
    "load_model",
    "load_state_dict",
    "map_by_order",
    "mobile",
    "model_input_config",
    "refdet",
    "reference",
    "register_model_spec",
    "resolved_spec",
    "zoo",
]
