"""The compressed-tensors export: an hf: prune directory → save_pretrained directory in the
sparse-bitmask format; decompressed with the compressed-tensors package, the exact weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fcpts
from fcpts.deploy import hf_compressed
from fcpts.errors import FcptsError
from fcpts.files import save_weights

transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")


@pytest.fixture
def hf_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny random BERT (hf:DIR) pruned to ~70% in its Linear layers, as a prune output directory."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = transformers.BertModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "pooler" not in name:  # the pooler stays dense
                module.weight[torch.rand(module.weight.shape) < 0.7] = 0.0
    run = tmp_path / "run"
    run.mkdir()
    save_weights(model, run / "model.safetensors")
    (run / "report.json").write_text(json.dumps({"model_spec": f"hf:{tmp_path / 'hf'}"}))
    return run, model


def test_export_decompresses_with_compressed_tensors(tmp_path: Path, hf_run, run_cli) -> None:
    from compressed_tensors.config import CompressionFormat, SparsityCompressionConfig
    from compressed_tensors.utils import get_nested_weight_mappings, unpack_bitmasks
    from safetensors import safe_open

    run, model = hf_run
    out = tmp_path / "ct"
    code, stdout, err = run_cli("export", run, "--format", "compressed-tensors", "--out", out)
    assert code == 0, err
    assert "format compressed-tensors:" in stdout

    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["transform_config"] == {}
    sparsity = SparsityCompressionConfig.load_from_registry(qc["sparsity_config"]["format"], **qc["sparsity_config"])
    assert sparsity.format == CompressionFormat.sparse_bitmask.value and sparsity.targets == ["Linear"]
    assert sparsity.ignore == ["pooler.dense"] and sparsity.sparsity_structure == "unstructured"
    assert 0.6 < sparsity.global_sparsity < 0.8

    # Decompress as compressed-tensors' BitmaskCompressor does, with the package's own helpers.
    nested, other = get_nested_weight_mappings(str(out), hf_compressed.PARAM_NAMES, return_unmatched_params=True)
    expected = model.state_dict()
    targets = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "pooler.dense"}
    assert set(nested) == targets
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for layer, params in nested.items():
            data = {p: f.get_tensor(f"{layer}.{p}") for p in params}
            shape = data["shape"].tolist()
            mask = unpack_bitmasks(data["bitmask"], shape)
            dense = torch.zeros(shape, dtype=data["compressed"].dtype)
            dense[mask] = data["compressed"]
            assert torch.equal(dense, expected[f"{layer}.weight"])
            counts = mask.sum(-1)
            assert torch.equal(data["row_offsets"], torch.cumsum(counts, 0) - counts)
        for key in other:  # everything else dense, unchanged
            assert torch.equal(f.get_tensor(key), expected[key])

    back = fcpts.load(out)  # and fcpts loads it back exactly
    for key, value in expected.items():
        assert torch.equal(back.state_dict()[key], value)
    ids = torch.randint(0, 60, (2, 7))
    with torch.no_grad():
        assert torch.equal(back(ids).last_hidden_state, model(ids).last_hidden_state)


def test_non_hf_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FcptsError, match="needs a Hugging Face model"):
        fcpts.export(torch.nn.Linear(4, 4), tmp_path / "x", "compressed-tensors")
