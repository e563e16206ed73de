"""The ``compressed-tensors`` export: a Hugging Face ``save_pretrained`` directory whose Linear weights
are stored in compressed-tensors' **sparse-bitmask** format, the layout llm-compressor writes.

For each compressed ``nn.Linear`` weight ``P.weight`` (out × in), ``model.safetensors`` holds, in
place of the dense tensor (as compressed-tensors' ``BitmaskCompressor`` writes them):

* ``P.shape``: int64 ``[out, in]``;
* ``P.compressed``: 1-D, the weight's dtype, the nonzero entries in row-major order;
* ``P.bitmask``: uint8 (out, ceil(in / 8)), each row's nonzero mask packed little-endian bit order
  (``compressed_tensors.utils.pack_bitmasks``, i.e. ``numpy.packbits(mask, axis=-1, bitorder="little")``);
* ``P.row_offsets``: int64 (out,), the index in ``P.compressed`` where each row starts.

Every other tensor (embeddings, norms, biases, convolutions) is stored dense under its own name.
``config.json`` gets the ``quantization_config`` compressed-tensors' ``ModelCompressor.update_config``
writes for a sparse-only model: ``{"quant_method": "compressed-tensors", "version": ...,
"sparsity_config": BitmaskConfig(...).model_dump(), "transform_config": {}}`` with ``targets:
["Linear"]``, ``ignore`` the Linear layers left dense, ``global_sparsity`` the zeros' share of the
targeted weights and ``sparsity_structure`` ``"unstructured"`` (``"2:4"`` when every targeted
weight is 2:4). A ``-0.0`` is stored as ``+0.0`` (the format keeps ``!= 0`` entries only).

Writing needs no extra package (the config is that of compressed-tensors 0.20's ``BitmaskConfig``,
whose ``model_dump`` is used when the package is installed). **Note:** compressed-tensors 0.20
still defines the format's config and bitmask helpers but no longer ships its ``BitmaskCompressor``
(its ``ModelCompressor`` writes ``sparsity_config: {}``, "sparsity is removed for now"); the files
follow the layout of the last releases that compress and decompress it (e.g. 0.12).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import FcptsError
from .kernels import is_2_of_4

WEIGHTS_NAME = "model.safetensors"
PARAM_NAMES = ("shape", "compressed", "bitmask", "row_offsets")
#: compressed-tensors' version whose config layout this writes (recorded as the config's "version").
CT_VERSION = "0.20.0"


def pretrained_model(model: nn.Module) -> nn.Module:
    """The Hugging Face ``PreTrainedModel`` in ``model`` (itself, or e.g. a SentenceEmbedder's encoder)."""
    for module in model.modules():
        if hasattr(module, "save_pretrained") and hasattr(module, "config"):
            return module
    raise FcptsError(
        "the compressed-tensors format needs a Hugging Face model (an hf:DIR model spec): "
        f"{type(model).__name__} holds no transformers PreTrainedModel"
    )


def bitmask_compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{shape, compressed, bitmask, row_offsets}`` of a 2-D weight, as ``BitmaskTensor.from_dense``.

    >>> w = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 3.0]])
    >>> {k: v.tolist() for k, v in bitmask_compress(w).items()}
    {'shape': [2, 3], 'compressed': [1.5, 2.0, 3.0], 'bitmask': [[2], [5]], 'row_offsets': [0, 1]}
    """
    weight = weight.detach().cpu()
    mask = weight != 0
    counts = mask.sum(dim=-1)
    return {
        "shape": torch.tensor(list(weight.shape)),
        "compressed": weight[mask].clone(),
        "bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
        "row_offsets": torch.cumsum(counts, 0) - counts,
    }


def bitmask_decompress(compressed: torch.Tensor, bitmask: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The dense weight back (as ``compressed_tensors``' ``bitmask_decompress``)."""
    bits = np.unpackbits(bitmask.numpy(), axis=-1, count=shape[-1], bitorder="little")
    mask = torch.from_numpy(bits.reshape(shape).astype(bool))
    dense = torch.zeros(shape, dtype=compressed.dtype)
    dense[mask] = compressed
    return dense


def sparsity_config(targets: dict[str, torch.Tensor], ignore: list[str]) -> dict[str, Any]:
    """compressed-tensors' ``BitmaskConfig(...).model_dump()`` for these targeted weights."""
    zeros = sum(int((w == 0).sum()) for w in targets.values())
    total = sum(w.numel() for w in targets.values())
    structure = "2:4" if targets and all(is_2_of_4(w) for w in targets.values()) else "unstructured"
    fields = {
        "format": "sparse-bitmask",
        "targets": ["Linear"],
        "ignore": ignore,
        "global_sparsity": zeros / total if total else 0.0,
        "sparsity_structure": structure,
    }
    try:
        from compressed_tensors.config import BitmaskConfig
    except ImportError:  # the same fields, as model_dump writes them
        return {**fields, "registry_requires_subclass": False}
    return BitmaskConfig(**fields).model_dump()


def write(model: nn.Module, directory: Path) -> dict[str, Any]:
    """``save_pretrained`` into ``directory``, then rewrite its weights and config (module docstring)."""
    from safetensors.torch import load_file, save_file

    hf = pretrained_model(model)
    hf.save_pretrained(directory, safe_serialization=True)
    shards = sorted(directory.glob("*.safetensors"))
    if [p.name for p in shards] != [WEIGHTS_NAME]:
        raise FcptsError(f"save_pretrained wrote {[p.name for p in shards]}, expected one {WEIGHTS_NAME}")
    state = load_file(directory / WEIGHTS_NAME)
    linears = {name: m for name, m in hf.named_modules() if isinstance(m, nn.Linear)}
    targets = {
        name: state[f"{name}.weight"]
        for name, m in linears.items()
        if f"{name}.weight" in state and bool((m.weight == 0).any())
    }
    ignore = sorted(set(linears) - set(targets))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        prefix = key.removesuffix(".weight")
        if key.endswith(".weight") and prefix in targets:
            out.update({f"{prefix}.{k}": v for k, v in bitmask_compress(tensor).items()})
        else:
            out[key] = tensor
    save_file(out, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    sparsity = sparsity_config(targets, ignore)
    config["quantization_config"] = {
        "version": CT_VERSION,
        "quant_method": "compressed-tensors",
        "sparsity_config": sparsity,
        "transform_config": {},
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"compressed_tensors": {"format": "sparse-bitmask", "layers": len(targets), "ignore": len(ignore),
                                   "global_sparsity": sparsity["global_sparsity"]}}  # fmt: skip


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The dense state dict (the Hugging Face model's names) of a ``model.safetensors`` written by :func:`write`."""
    from safetensors.torch import load_file

    stored = load_file(path)
    prefixes = {k.removesuffix(".bitmask") for k in stored if k.endswith(".bitmask")}
    state = {}
    for key, tensor in stored.items():
        prefix, _, param = key.rpartition(".")
        if prefix in prefixes and param in PARAM_NAMES:
            if param == "compressed":
                shape = stored[f"{prefix}.shape"].tolist()
                state[f"{prefix}.weight"] = bitmask_decompress(tensor, stored[f"{prefix}.bitmask"], shape)
            continue
        state[key] = tensor
    return state


def load_into(model: nn.Module, path: Path) -> nn.Module:
    """``model`` (or the Hugging Face model inside it) with the weights of ``path`` loaded."""
    hf = pretrained_model(model)
    missing, unexpected = hf.load_state_dict(read_state(path), strict=False)
    tied = {k for k in missing if k.endswith(".weight") and getattr(hf, "_tied_weights_keys", None)}
    if unexpected or set(missing) - tied:
        raise FcptsError(f"{path} does not fit the model: missing {sorted(missing)[:3]}, unexpected {unexpected[:3]}")
    return model.eval()
