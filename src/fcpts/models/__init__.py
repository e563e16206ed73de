"""Model specs: built-in models (:mod:`.reference`, :mod:`.vit`), ecosystem prefixes (:mod:`.zoo`:
``torchvision:``, ``timm:``, ``hf:``, ``minilm``), and user factories; :func:`load_model` resolves them.

Importing this package registers the built-in specs (each in its own module).
"""

from . import refdet, reference, zoo
from .specs import ALIASES, BUILTIN_MODELS, MODEL_SPECS, load_model, load_state_dict, register_model_spec, resolved_spec

__all__ = [
    "ALIASES",
    "BUILTIN_MODELS",
    "MODEL_SPECS",
    "load_model",
    "load_state_dict",
    "refdet",
    "reference",
    "register_model_spec",
    "resolved_spec",
    "zoo",
]
