"""Detection: voc:/coco: data specs, pycocotools mAP, every method on a detector, no download."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

import fcpts
from fcpts.api import METHODS
from fcpts.cli import main
from fcpts.core.detection_metrics import coco_map, detection_map
from fcpts.data import load_data
from fcpts.data.detection import DetectionSplit
from fcpts.data.detection_canvas import FASHION_CLASSES, make_detection_dataset
from fcpts.errors import FcptsError
from fcpts.method.losses import RECONSTRUCTION_LOSSES, check_loss_fits, resolve_loss
from fcpts.models import load_model
from fcpts.models.detection import DetectionOutputs, HeadOutputs, is_detector
from fcpts.models.refdet import reference_detector
from fcpts.pipeline import Job, run


def _write_voc(root: Path) -> dict[str, list[tuple[str, list[int], int]]]:
    """Two 40×32 images with hand-written VOC boxes (1-based, inclusive), one of them difficult."""
    from PIL import Image

    objects = {
        "a": [("cat", [3, 4, 20, 30], 0), ("dog", [10, 1, 40, 12], 1)],
        "b": [("dog", [1, 1, 40, 32], 0)],
    }
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for name, objs in objects.items():
        Image.fromarray(np.full((32, 40, 3), 100, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        xml = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for c, b, d in objs
        )
        (root / "Annotations" / f"{name}.xml").write_text(f"<annotation>{xml}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("a\nb\n")
    (root / "ImageSets/Main/test.txt").write_text("a\nb\n")
    return objects


def test_voc_spec_round_trip_boxes_exact(tmp_path: Path) -> None:
    objects = _write_voc(tmp_path)
    data = load_data(f"voc:{tmp_path}")
    assert data.calibration.x.shape == (2, 3, 32, 40) and data.calibration.targets == []  # images only
    ev = data.evaluation
    assert isinstance(ev, DetectionSplit) and ev.classes[7:12:4] == ("cat", "dog")  # VOC's class order
    for target, (_, objs) in zip(ev.targets, objects.items(), strict=True):
        expected = torch.tensor([[b[0] - 1, b[1] - 1, b[2], b[3]] for _, b, _ in objs], dtype=torch.float32)
        assert torch.equal(target["boxes"], expected)
        assert target["labels"].tolist() == [ev.classes.index(c) + 1 for c, _, _ in objs]
        assert target["iscrowd"].tolist() == [d for _, _, d in objs]
    resized = load_data(f"voc:{tmp_path}", image_size=80).evaluation  # 40×32 → 80×80: x × 2, y × 2.5
    assert resized.x.shape == (2, 3, 80, 80)
    assert torch.equal(resized.targets[0]["boxes"][0], torch.tensor([4.0, 7.5, 40.0, 75.0]))


def test_coco_spec_reads_the_same_boxes(tmp_path: Path) -> None:
    _write_voc(tmp_path)
    voc = load_data(f"voc:{tmp_path}").evaluation
    categories = [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
    annotations = []
    for i, t in enumerate(voc.targets):
        for box, label, crowd in zip(t["boxes"].tolist(), t["labels"].tolist(), t["iscrowd"].tolist(), strict=True):
            x1, y1, x2, y2 = box
            cat = 17 if voc.classes[label - 1] == "cat" else 18
            bbox = [x1, y1, x2 - x1, y2 - y1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i, "category_id": cat, "bbox": bbox, "iscrowd": crowd}
            )
    images = [{"id": i, "file_name": f"{n}.jpg"} for i, n in enumerate("ab")]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    coco = load_data(f"coco:{ann},{tmp_path / 'JPEGImages'}").evaluation
    assert coco.classes == ("cat", "dog")
    for a, b in zip(voc.targets, coco.targets, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["iscrowd"], b["iscrowd"])
    with pytest.raises(FcptsError, match="not found"):
        load_data(f"coco:{tmp_path / 'missing.json'}")


def test_voc_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(FcptsError, match="PASCAL VOC layout"):
        load_data(f"voc:{tmp_path}")
    _write_voc(tmp_path)
    (tmp_path / "ImageSets/Main/test.txt").unlink()
    with pytest.raises(FcptsError, match=r"no evaluation split test or val"):
        load_data(f"voc:{tmp_path}")


def test_map_is_one_for_the_ground_truth_and_less_when_perturbed() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(6):
        xy = torch.rand(3, 2, generator=gen) * 100
        wh = 10 + torch.rand(3, 2, generator=gen) * 40
        labels = torch.randint(1, 4, (3,), generator=gen)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    exact = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    assert coco_map(exact, targets) == {"map50": 1.0, "map": 1.0}
    shifted = [{**p, "boxes": p["boxes"] + 0.15 * (p["boxes"][:, 2:] - p["boxes"][:, :2]).repeat(1, 2)} for p in exact]
    moved = coco_map(shifted, targets)
    assert moved["map50"] == 1.0 and moved["map"] < 0.9  # IoU ~0.74: found at 0.5, not at the stricter thresholds
    relabelled = [{**p, "labels": p["labels"] % 3 + 1} for p in exact]
    assert coco_map(relabelled, targets)["map50"] < 0.1
    assert (
        coco_map(
            [{**p, "boxes": p["boxes"][:0], "labels": p["labels"][:0], "scores": p["scores"][:0]} for p in exact],
            targets,
        )["map"]
        == 0.0
    )


def test_generator_is_seeded_and_boxes_hold_the_items(tmp_path: Path) -> None:
    a = make_detection_dataset(tmp_path / "a", {"train": 3, "test": 2}, size=64, seed=3, scale=(20, 32))
    b = make_detection_dataset(tmp_path / "b", {"train": 3, "test": 2}, size=64, seed=3, scale=(20, 32))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    data = load_data(f"voc:{a}")
    assert data.evaluation.classes == FASHION_CLASSES and data.calibration.x.shape == (3, 3, 64, 64)
    for x, t in zip(data.evaluation.x, data.evaluation.targets, strict=True):
        assert 1 <= len(t["labels"]) <= 4 and t["labels"].min() >= 1 and t["labels"].max() <= 10
        for x1, y1, x2, y2 in t["boxes"].int().tolist():
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            assert x[:, y1:y2, x1:x2].max() > 0.3  # an item is there, brighter than the background


@pytest.fixture(scope="module")
def tiny_detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return reference_detector(image_size=64).eval()


def test_every_method_on_the_detector_exact_count(tiny_detector: torch.nn.Module) -> None:
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    n = sum(m.weight.numel() for m in tiny_detector.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    depthwise = [m for m in tiny_detector.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise  # the backbone's depthwise convs are pruned too
    for method in sorted(METHODS):
        extra = {"iters": 3, "kde_samples": 256} if method == "fcpts" else {}
        config = fcpts.make_config(method, target_sparsity=0.6, batch_size=4, **extra)
        result = fcpts.prune(tiny_detector, images, config)
        assert type(result.model) is type(tiny_detector) and not isinstance(result.model, DetectionOutputs)
        assert result.numel == n and result.zeros == round(0.6 * n), method
        assert set(result.model.state_dict()) == set(tiny_detector.state_dict())
        out = result.model(list(images[:1]))  # post-processed detections, as deployed
        assert set(out[0]) == {"boxes", "labels", "scores"}


def _tiny_faster_rcnn() -> torch.nn.Module:
    """A two-stage detector of 9,152 prunable weights: a depthwise backbone, an RPN, a 3×3 ROI box head, 3 classes."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    nn = torch.nn
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1, groups=8), nn.ReLU(), nn.Conv2d(8, 16, 1)
    )
    backbone.out_channels = 16
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=AnchorGenerator(((8, 16),), ((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 3, 1),
        box_head=TwoMLPHead(16 * 3 * 3, 32),
        box_predictor=FastRCNNPredictor(32, 4),
        min_size=64,
        max_size=64,
    ).eval()


def test_two_stage_detector_every_kind_of_method() -> None:
    detector = _tiny_faster_rcnn()
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = DetectionOutputs(detector)(images)
    shapes = {k: tuple(v.shape) for k, v in out.items()}  # RPN on every anchor, ROI head on 33 grid proposals
    assert shapes == {
        "objectness": (4, 512),
        "rpn_bbox_regression": (4, 2048),
        "softmax_logits": (4, 33, 4),
        "bbox_regression": (4, 33, 16),
        "features.0": (4, 16, 16, 16),
    }
    loss = RECONSTRUCTION_LOSSES["detection"]
    assert loss(out, out, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert loss({k: v + 0.5 for k, v in out.items()}, out, 1.0).item() > 0
    n = sum(m.weight.numel() for m in detector.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    # Activations through both stages (wanda), a layer-by-layer replay (pot), the detection loss (fcpts).
    for method in ("wanda", "pot", "fcpts"):
        extra = {"iters": 2, "kde_samples": 64, "time_budget_s": None} if method == "fcpts" else {}
        result = fcpts.prune(detector, images, fcpts.make_config(method, target_sparsity=0.6, batch_size=2, **extra))
        assert type(result.model) is type(detector) and result.numel == n and result.zeros == round(0.6 * n), method
        assert set(result.model(list(images[:1]))[0]) == {"boxes", "labels", "scores"}


def test_detection_loss_auto_and_errors(tiny_detector: torch.nn.Module) -> None:
    out = DetectionOutputs(tiny_detector)(torch.rand(2, 3, 64, 64))
    assert isinstance(out, HeadOutputs) and resolve_loss("auto", out) == "detection"
    assert {"cls_logits", "bbox_regression", "bbox_ctrness", "features.p3"} <= set(out)
    loss = RECONSTRUCTION_LOSSES["detection"]
    assert loss(out, out, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    other = {k: v + 0.5 for k, v in out.items()}
    assert loss(other, out, 1.0).item() > 0
    images = torch.rand(4, 3, 64, 64)
    with pytest.raises(FcptsError, match="use --loss detection"):
        fcpts.prune(tiny_detector, images, fcpts.make_config("fcpts", target_sparsity=0.5, iters=1, loss="kl"))
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(FcptsError, match="not a detector's"):
        fcpts.prune(net, torch.rand(8, 4), fcpts.make_config("fcpts", target_sparsity=0.5, iters=1, loss="detection"))


class _CallsDetector(torch.nn.Module):
    """A module around a detector (not one itself): its outputs are the detector's post-processed boxes."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.detector(list(images))


def test_post_processed_detections_take_no_loss(tiny_detector: torch.nn.Module) -> None:
    model = _CallsDetector(tiny_detector).eval()
    config = fcpts.make_config("fcpts", target_sparsity=0.5, iters=1, kde_samples=64, time_budget_s=None)
    with pytest.raises(FcptsError, match="post-processed detections"):  # was image 0's boxes taken as an output
        fcpts.prune(model, torch.rand(4, 3, 64, 64), config)
    with pytest.raises(FcptsError, match="pass the detector itself"):  # streamed teacher outputs: the first step
        check_loss_fits("cosine", model(torch.rand(1, 3, 64, 64)))
    # The one-shot methods read only the layers' inputs: they prune it.
    result = fcpts.prune(model, torch.rand(4, 3, 64, 64), fcpts.make_config("wanda", target_sparsity=0.5))
    assert result.zeros == round(0.5 * result.numel)


def test_random_weights_never_download(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub
    import torchvision.models._api as tv_api

    calls = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise AssertionError("download attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", refuse)
    model = load_model("torchvision:ssdlite320_mobilenet_v3_large,num_classes=11", random_weights=True)
    assert is_detector(model) and calls == []
    out = DetectionOutputs(model)(torch.rand(1, 3, 96, 96))
    assert out["softmax_logits"].shape[-1] == 11


def test_prune_and_eval_report_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_detection_dataset(tmp_path / "voc", {"train": 8, "test": 6}, size=160, seed=0)
    config = fcpts.make_config("global-magnitude", target_sparsity=0.5)
    done = run(Job("refdet", f"voc:{data}", tmp_path / "out", config))
    report = done.report
    assert 0.3 < report["dense_map50"] <= 1.0 and 0 <= report["sparse_map50"] <= 1.0  # the trained detector finds items
    assert report["zeros"] == round(0.5 * report["prunable_weights"])
    assert detection_map(
        done.result.model,
        torch.rand(1, 3, 160, 160),
        [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}],
    ) == {"map50": 0.0, "map": 0.0}  # no ground truth: 0
    argv = ["eval", "--model", "refdet", "--weights", str(tmp_path / "out/model.safetensors"), "--data", f"voc:{data}"]
    code = main(argv)
    printed = capsys.readouterr().out
    assert code == 0 and f"mAP@0.5   {report['sparse_map50']:.4f}" in printed
    assert main([*argv, "--sparse-inference"]) == 0  # BatchNorm folded, kernels where faster: the same boxes
    printed = capsys.readouterr().out
    assert f"mAP@0.5   {report['sparse_map50']:.4f}" in printed
    assert re.search(r"kernels   \d+ of 28 layers sparse", printed)
