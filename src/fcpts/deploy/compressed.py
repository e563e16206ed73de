"""The **fcpts-bitmask v1** compressed weights format: one safetensors file.

A floating-point tensor ``K`` of the state dict is stored compressed when that is smaller than
storing it dense, as two entries:

* ``K.values``: 1-D, ``K``'s dtype, the stored entries of ``K`` in row-major (C) order;
* ``K.bitmask``: 1-D uint8, ``numpy.packbits`` of the row-major keep-mask of ``K`` (most significant
  bit first, the last byte padded with 0 bits), ``ceil(numel / 8)`` bytes.

An entry is stored unless its bits are those of ``+0.0``; a ``-0.0`` is stored as a value, so the
loader restores every tensor **bit for bit** (``fcpts.finalize`` writes ``+0.0`` for pruned weights).
The header's ``__metadata__`` holds ``format = "fcpts-bitmask"``, ``version = "1"`` and ``sparse``:
a JSON object ``{K: {"shape": [...], "dtype": "float32"}}`` naming the compressed tensors. Every
other tensor (biases, norms, buffers, integer tensors) is stored dense under its own name. At
sparsity ``s`` a float32 tensor costs about ``(1 - s) * 4 + 1/8`` bytes per weight instead of 4:
``0.156×`` of dense at 0.9.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import torch

from ..errors import FcptsError

COMPRESSED_FORMAT, COMPRESSED_VERSION = "fcpts-bitmask", "1"


def _kept(tensor: torch.Tensor) -> torch.Tensor:
    """Bool mask (same shape): entries that are not ``+0.0`` bit for bit (``-0.0`` is kept)."""
    return (tensor != 0) | torch.signbit(tensor)


def compress_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of the fcpts-bitmask v1 format for ``state`` (see the module docstring).

    >>> w = torch.tensor([[0.0, 1.5, 0.0], [-0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    >>> tensors, meta = compress_state_dict({"w": w})
    >>> tensors["w.values"].tolist(), tensors["w.bitmask"].tolist()  # bits 010 101 000 -> 01010100 0(0000000)
    ([1.5, -0.0, 2.0], [84, 0])
    >>> json.loads(meta["sparse"])
    {'w': {'shape': [3, 3], 'dtype': 'float32'}}
    """
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        if tensor.is_floating_point() and tensor.numel() > 0:
            keep = _kept(tensor).flatten()  # (numel,)
            kept = int(keep.sum())
            if kept * tensor.element_size() + (tensor.numel() + 7) // 8 < tensor.numel() * tensor.element_size():
                tensors[f"{name}.values"] = tensor.flatten()[keep].clone()
                tensors[f"{name}.bitmask"] = torch.from_numpy(np.packbits(keep.numpy()))
                sparse[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
                continue
        tensors[name] = tensor.clone()
    clashes = [k for k in sparse if f"{k}.values" in state or f"{k}.bitmask" in state]
    if clashes:  # "a" compressed beside a tensor named "a.values": the file could not tell them apart
        raise FcptsError(f"cannot compress {clashes[0]!r}: the state dict also holds {clashes[0]}.values or .bitmask")
    meta = {"format": COMPRESSED_FORMAT, "version": COMPRESSED_VERSION, "sparse": json.dumps(sparse)}
    return tensors, meta


def decompress_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """The state dict that :func:`compress_state_dict` stored, bit for bit.

    >>> w = torch.tensor([[0.0, 1.5, 0.0], [-0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    >>> back = decompress_state_dict(*compress_state_dict({"w": w}))["w"]
    >>> torch.equal(back.view(torch.int32), w.view(torch.int32))
    True
    """
    if metadata.get("format") != COMPRESSED_FORMAT or metadata.get("version") != COMPRESSED_VERSION:
        raise FcptsError(
            f"not an {COMPRESSED_FORMAT} v{COMPRESSED_VERSION} file (metadata {metadata.get('format')!r} "
            f"v{metadata.get('version')!r})"
        )
    sparse: dict[str, dict[str, Any]] = json.loads(metadata["sparse"])
    state = dict(tensors)
    consumed: set[str] = set()
    if not isinstance(sparse, dict):
        raise FcptsError("corrupt compressed metadata: 'sparse' is not an object")
    for name, info in sparse.items():
        values, bitmask = tensors[f"{name}.values"], tensors[f"{name}.bitmask"]
        numel = _declared_numel(name, info)
        # The declared shape must fit the stored bytes before anything of its size is allocated.
        if bitmask.dtype != torch.uint8 or bitmask.numel() != (numel + 7) // 8 or values.numel() > numel:
            raise FcptsError(f"corrupt compressed tensor {name!r}: shape {info['shape']} does not fit its stored bytes")
        keep = torch.from_numpy(np.unpackbits(bitmask.numpy(), count=numel).astype(bool))  # (numel,)
        if int(keep.sum()) != values.numel():
            raise FcptsError(f"corrupt compressed tensor {name!r}: its bitmask does not match its values")
        dtype = getattr(torch, str(info["dtype"]), None)
        if not isinstance(dtype, torch.dtype) or values.dtype != dtype:
            raise FcptsError(f"corrupt compressed tensor {name!r}: dtype {info['dtype']!r}, values {values.dtype}")
        dense = torch.zeros(numel, dtype=dtype)
        dense[keep] = values
        state[name] = dense.view(info["shape"])
        consumed.update((f"{name}.values", f"{name}.bitmask"))
    return {k: v for k, v in state.items() if k not in consumed}


def _declared_numel(name: str, info: Any) -> int:
    """The element count of a compressed tensor's declared shape (a list of non-negative integers)."""
    shape = info.get("shape") if isinstance(info, dict) else None
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise FcptsError(f"corrupt compressed tensor {name!r}: declared shape {shape!r} is not a list of sizes")
    return math.prod(shape)


def save_compressed(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` in the fcpts-bitmask v1 format."""
    from safetensors.torch import save_file

    tensors, meta = compress_state_dict(state)
    save_file(tensors, str(path), metadata=meta)


def load_compressed(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an fcpts-bitmask v1 file back into the dense state dict, bit for bit."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises several types for a truncated or corrupt file
        raise FcptsError(f"cannot read compressed weights {path}: {str(exc).splitlines()[0]}") from exc
    try:
        return decompress_state_dict(tensors, metadata)
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise FcptsError(f"corrupt compressed weights {path}: {exc}") from exc


def dense_safetensors_bytes(state: dict[str, torch.Tensor]) -> int:
    """Size in bytes of ``state`` written as a dense safetensors file (header included)."""
    from safetensors.torch import save

    return len(save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
