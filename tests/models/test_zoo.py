"""Ecosystem models (torchvision, timm, Hugging Face), the ViT reference, text data and embedding fidelity."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fcpts
from fcpts.core.batchnorm import batchnorm_layers
from fcpts.core.evaluate import output_logits
from fcpts.errors import FcptsError
from fcpts.method.losses import resolve_loss
from fcpts.models.specs import load_model


def rgb_npz(path: Path, n: int = 12, size: int = 32) -> Path:
    """``n`` random RGB images ``size``×``size`` (uint8 N×H×W×3) with labels in 0..9."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=rng.integers(0, 10, n))
    return path


def prunable_total(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in fcpts.prunable_layers(model))


# torchvision's and timm's own constructors, at 32×32 with 10 classes: small, fast, real architectures.
ECOSYSTEM_SPECS = [
    "torchvision:resnet18,num_classes=10",
    "torchvision:mobilenet_v2,num_classes=10",
    "timm:deit_tiny_patch16_224,img_size=32,num_classes=10",
]


@pytest.mark.parametrize("spec", ECOSYSTEM_SPECS)
def test_ecosystem_model_pruned_to_exact_sparsity_through_the_cli(run_cli, tmp_path, spec):
    data = rgb_npz(tmp_path / "rgb.npz")
    out = tmp_path / "out"
    args = ["prune", "--model", spec, "--random-weights", "--data", f"npz:{data}", "--sparsity", "0.7"]
    code, stdout, stderr = run_cli(
        *args, "--out", out, "--iters", "2", "--batch-size", "4", "--calib-samples", "8", "--no-progress"
    )
    assert code == 0, stderr
    total = prunable_total(load_model(spec, random_weights=True))
    k = round(0.7 * total)
    assert f"global sparsity  {k / total:.6f} ({k} of {total} weights zero)" in stdout
    assert "random weights (--random-weights)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["random_weights"] is True and report["zeros"] == k and report["prunable_weights"] == total
    model = load_model(spec, weights=out / "model.safetensors")  # the file loads back strictly
    assert sum(int((m.weight == 0).sum()) for _, m in fcpts.prunable_layers(model)) == k


def test_deit_attention_and_mlp_layers_are_pruned():
    model = load_model("timm:deit_tiny_patch16_224,img_size=32,num_classes=10", random_weights=True)
    names = [n for n, _ in fcpts.prunable_layers(model)]
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"} <= set(names)
    assert batchnorm_layers(model) == []  # LayerNorm only


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:deit_tiny_patch16_224"])
def test_download_needed_is_one_clear_error(run_cli, tmp_path, monkeypatch, spec):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch hub cache
    code, _, stderr = run_cli("eval", "--model", spec, "--data", f"npz:{rgb_npz(tmp_path / 'x.npz')}")
    assert code == 2
    assert "not in the local cache" in stderr and "--weights FILE" in stderr and "--random-weights" in stderr


def test_torchvision_weights_from_the_local_torch_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / Path(url).name)
    model = load_model("torchvision:resnet18")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_unknown_names_and_bad_options(tmp_path):
    with pytest.raises(FcptsError, match="torchvision has no model 'nonet'"):
        load_model("torchvision:nonet", random_weights=True)
    with pytest.raises(FcptsError, match="timm has no model"):
        load_model("timm:nonet", random_weights=True)
    with pytest.raises(FcptsError, match="is not key=value"):
        load_model("timm:resnet18,oops", random_weights=True)
    with pytest.raises(FcptsError, match=r"no config\.json"):
        load_model(f"hf:{tmp_path}")
    with pytest.raises(FcptsError, match="incomplete"):
        load_model("hf:")


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT config (random weights) saved as a Hugging Face model directory."""
    from transformers import BertConfig

    out = tmp_path_factory.mktemp("tiny-bert")
    BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(out)
    return out


def test_hf_dir_without_weights_needs_the_flag(tiny_bert_dir):
    with pytest.raises(FcptsError, match="no weights"):
        load_model(f"hf:{tiny_bert_dir}")
    model = load_model(f"hf:{tiny_bert_dir}", random_weights=True)
    # BertModel's output is a ModelOutput (a dict) without logits: the "auto" loss is cosine.
    ids = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(0))
    output = model(input_ids=ids, attention_mask=torch.ones(3, 5, dtype=torch.long))
    assert output_logits(output).shape == (3, 5, 16)  # last_hidden_state
    assert resolve_loss("auto", output) == "cosine"


def test_hf_model_pruned_on_token_dicts_to_exact_sparsity(tiny_bert_dir):
    model = load_model(f"hf:{tiny_bert_dir}", random_weights=True)
    ids = torch.randint(1, 50, (8, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(8, 6, dtype=torch.long)
    mask[:, 4:] = 0  # padded tail
    result = fcpts.prune(
        model, {"input_ids": ids, "attention_mask": mask}, fcpts.FCPTSConfig(target_sparsity=0.6, iters=3, batch_size=4)
    )
    total = prunable_total(model)
    assert result.zeros == round(0.6 * total) and result.numel == total
    assert result.config["loss"] == "auto" and all(np.isfinite(h["rec"]) for h in result.history)
    assert result.history[0]["rec"] < 2  # a cosine loss (≤ 2), not a KL over hidden units


@dataclass
class EmbeddingOutput:
    embedding: torch.Tensor


class DataclassEmbedder(nn.Module):
    """LayerNorm-only encoder returning a dataclass of embeddings (no logits)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.norm, self.fc2 = nn.Linear(6, 10), nn.LayerNorm(10), nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> EmbeddingOutput:
        return EmbeddingOutput(self.fc2(self.norm(self.fc1(x))))


class DictClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 3)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"hidden": features, "logits": self.fc(features)}


def test_dataclass_and_dict_outputs():
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    # A dataclass of embeddings: cosine reconstruction, exact count (60 + 40 weights, 0.5 → 50 zeros).
    result = fcpts.prune(DataclassEmbedder(), x, fcpts.FCPTSConfig(target_sparsity=0.5, iters=5, batch_size=8))
    assert result.zeros == 50 and result.numel == 100
    assert resolve_loss("auto", DataclassEmbedder()(x)) == "cosine"
    # A dict with logits, taking a dict input (keyword arguments): KL on the logits.
    result = fcpts.prune(
        DictClassifier(), {"features": x}, fcpts.FCPTSConfig(target_sparsity=0.5, iters=5, batch_size=8)
    )
    assert result.zeros == 9 and result.numel == 18
    assert resolve_loss("auto", DictClassifier()(x)) == "kl"


def test_layernorm_only_model_finalizes_without_batchnorm_recalibration():
    from fcpts.models.vit import ReferenceViT

    torch.manual_seed(0)
    model = ReferenceViT()
    assert batchnorm_layers(model) == []
    norms = {k: v.clone() for k, v in model.state_dict().items() if "norm" in k}
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # uniform-magnitude recalibrates BatchNorm by default: a no-op here, and the finalize is exact.
    result = fcpts.prune(model, x, fcpts.make_config("uniform-magnitude", target_sparsity=0.8))
    total = prunable_total(model)
    assert result.zeros == round(0.8 * total)
    assert all(torch.equal(result.model.state_dict()[k], v) for k, v in norms.items())
    assert all(abs(layer.sparsity - 0.8) < 0.01 for layer in result.layers)  # uniform: ~0.8 in every layer
    result = fcpts.prune(model, x, fcpts.FCPTSConfig(target_sparsity=0.8, iters=3, batch_size=8, recalibrate_bn=True))
    assert result.zeros == round(0.8 * total)


def test_refvit_packaged_weights(fashion_subset):
    from fcpts.data.fashion_mnist import load_fashion_mnist

    test = load_fashion_mnist(fashion_subset).evaluation  # the first 1000 test images
    model = load_model("refvit")
    # Committed weights trained by scripts/train_vit.py: clearly better than chance on real test images.
    assert fcpts.accuracy(model, test.x, test.y) > 0.7
    assert fcpts.accuracy(load_model("refvit", random_weights=True), test.x, test.y) < 0.3


def test_imagefolder_crop_and_normalize(tmp_path):
    from PIL import Image

    from fcpts.data.images import load_imagefolder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 6), (255, 0, 128)).save(tmp_path / c / "1.png")
    data = load_imagefolder(tmp_path, image_size=6, crop=4, normalize="imagenet")
    x = data.evaluation.x
    assert x.shape == (2, 3, 4, 4)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert torch.allclose(x[0, :, 0, 0], torch.tensor(expected), atol=1e-5)
    assert data.evaluation.y.tolist() == [0, 1]


def test_timm_weights_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    hub_id = timm.models.get_pretrained_cfg("deit_tiny_patch16_224").hf_hub_id
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))  # the hub cache layout: refs/main → snapshot
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc").mkdir(parents=True)
    torch.manual_seed(5)
    reference = timm.create_model("deit_tiny_patch16_224")
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(repo / "snapshots" / "abc" / "model.safetensors"))
    model = load_model("timm:deit_tiny_patch16_224")
    assert torch.equal(model.head.weight, reference.head.weight)
    assert torch.equal(model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
