"""The compressed format: bit-identical round trips, exact byte layout, corrupt files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch

from fcpts.deploy.compressed import compress_state_dict, decompress_state_dict, load_compressed, save_compressed
from fcpts.errors import FcptsError


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bits as integers (so -0.0 and +0.0 differ, and NaN payloads count)."""
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()]) if t.is_floating_point() else t


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(bits(a[k]), bits(b[k])), k


def odd_state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    odd = torch.randn(13, 11, generator=g)  # 143 weights: not a multiple of 8
    odd[torch.rand(13, 11, generator=g) < 0.7] = 0.0
    odd[0, :3] = -0.0  # negative zeros must come back negative
    f64 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    f64[:, :2] = 0.0
    bf16 = torch.randn(4, 9, generator=g).to(torch.bfloat16)
    bf16[1:] = 0.0
    return {
        "odd.weight": odd,
        "zeros.weight": torch.zeros(3, 5),  # every weight pruned
        "full.weight": torch.randn(7, 3, generator=g) + 10.0,  # none zero: stored dense
        "odd.bias": torch.randn(13, generator=g),
        "f64.weight": f64,
        "bf16.weight": bf16,
        "bn.num_batches_tracked": torch.tensor(7),
        "conv.weight": torch.zeros(2, 3, 3, 3).index_fill_(1, torch.tensor([1]), 1.5),  # 4-D
    }


def test_compressed_round_trip_is_bit_identical(tmp_path: Path) -> None:
    state = odd_state()
    save_compressed(state, tmp_path / "w.safetensors")
    assert_bit_identical(load_compressed(tmp_path / "w.safetensors"), state)


def test_compressed_layout_and_exact_byte_count(tmp_path: Path) -> None:
    state = odd_state()
    tensors, meta = compress_state_dict(state)
    sparse = json.loads(meta["sparse"])
    # Compressed exactly where that is smaller: not the dense-everywhere tensor, never integers.
    assert set(sparse) == {"odd.weight", "zeros.weight", "f64.weight", "bf16.weight", "conv.weight"}
    assert "full.weight" in tensors and "bn.num_batches_tracked" in tensors
    odd = state["odd.weight"]
    kept = int(((odd != 0) | torch.signbit(odd)).sum())
    assert tensors["odd.weight.values"].numel() == kept and tensors["odd.weight.bitmask"].numel() == math.ceil(143 / 8)
    assert tensors["zeros.weight.values"].numel() == 0 and tensors["zeros.weight.bitmask"].tolist() == [0, 0]
    assert sparse["conv.weight"] == {"shape": [2, 3, 3, 3], "dtype": "float32"}
    assert tensors["conv.weight.values"].numel() == 2 * 9
    # The payload of the file is exactly the stored tensors' bytes (values, bitmasks, dense rest).
    path = tmp_path / "w.safetensors"
    save_compressed(state, path)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert len(raw) - 8 - header_len == sum(t.numel() * t.element_size() for t in tensors.values())


def test_corrupt_compressed_file_is_one_error(tmp_path: Path) -> None:
    tensors, meta = compress_state_dict({"w": torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0])})
    tensors["w.values"] = tensors["w.values"][:1]  # one value fewer than the bitmask's ones
    with pytest.raises(FcptsError, match="bitmask does not match"):
        decompress_state_dict(tensors, meta)
    tensors, meta = compress_state_dict({"w": torch.tensor([0.0, 1.0] + [0.0] * 30)})
    meta["sparse"] = json.dumps({"w": {"shape": [32], "dtype": "save"}})  # not a dtype: no getattr surprises
    with pytest.raises(FcptsError, match="dtype 'save'"):
        decompress_state_dict(tensors, meta)
    with pytest.raises(FcptsError, match=r"also holds a\.values"):
        compress_state_dict({"a": torch.zeros(64), "a.values": torch.ones(3)})
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00")
    with pytest.raises(FcptsError, match="cannot read compressed weights"):
        load_compressed(tmp_path / "bad.safetensors")
