"""Detection benchmark: every method on the reference detector (``refdet``), mAP of its detections.

``refdet`` (torchvision's FCOS on a depthwise-separable FPN backbone, trained from scratch by
``scripts/train_detector.py``) on the Fashion-MNIST canvas benchmark: the data are regenerated here
with the training run's seed (``make_detection_dataset``, 4000 / 200 / 500 canvases, seed 0), the
calibration images are drawn from its train split (images only), and every pruned detector is
scored by pycocotools on the 500 test canvases: mAP@0.5 and mAP@[.5:.95] of its post-processed
detections (eval mode, its own score threshold and NMS). Rows: the magnitude baselines (uniform,
global, ERK, LAMP; BatchNorm recalibrated), Wanda, OWL-Wanda, SparseGPT, POT and fcpts (the
``detection`` loss on the raw head outputs, chosen automatically), at 0.5, 0.7, 0.8, 0.9.

    python benchmarks/bench_detection.py                 # the full run (~15 CPU minutes, 1 thread)
    python benchmarks/bench_detection.py --quick         # 0.8 only, fcpts at 50 steps, 100 test canvases
    python benchmarks/bench_detection.py --choices --sparsities 0.8 --out benchmarks/results/detection/choices.json

``--choices`` measures the defaults instead (:data:`CHOICES`): the detection loss's term weights
and whether the first conv and the head's last layers are pruned, with fcpts and global magnitude.

Targets: fcpts's mAP@0.5 ≥ every other method's at 0.7 and above, within 1 point of dense at 0.5;
the exact zero count everywhere. Writes JSON (default: benchmarks/results/detection/refdet.json).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import common
import torch

import fcpts
from fcpts.core.detection_metrics import detection_map
from fcpts.core.layers import exclude
from fcpts.data import load_data
from fcpts.data.detection_canvas import make_detection_dataset
from fcpts.method.detection_loss import DETECTION_WEIGHTS, make_detection_loss
from fcpts.method.losses import RECONSTRUCTION_LOSSES
from fcpts.models import load_model
from fcpts.report import versions

#: The canvases of scripts/train_detector.py's run (make_detection_data.py's defaults).
COUNTS = {"train": 4000, "val": 200, "test": 500}

#: label → (method, options); fcpts rows get ``iters`` from the command line.
ROWS = {**common.ONE_SHOT_ROWS, "fcpts": ("fcpts", {"lr_weight": 2e-3})}
FCPTS_ROWS = ("fcpts",)

#: The first conv and the head's output layers: kept dense in the ``--choices`` rows that say so.
FIRST_AND_LAST = (
    "backbone.stem.0",
    "head.classification_head.cls_logits",
    "head.regression_head.bbox_reg",
    "head.regression_head.bbox_ctrness",
)
#: ``--choices`` rows: label → (method, options, detection-loss weights or None, layers kept dense).
CHOICES = {
    "global-magnitude, all layers": ("global-magnitude", {}, None, ()),
    "global-magnitude, first/last dense": ("global-magnitude", {}, None, FIRST_AND_LAST),
    "fcpts, all layers": ("fcpts", {"lr_weight": 2e-3}, None, ()),
    "fcpts, first/last dense": ("fcpts", {"lr_weight": 2e-3}, None, FIRST_AND_LAST),
    "fcpts, + feature MSE 1": ("fcpts", {"lr_weight": 2e-3}, {"feature": 1.0}, ()),
    "fcpts, box weight 0": ("fcpts", {"lr_weight": 2e-3}, {"box": 0.0}, ()),
    "fcpts, uniform anchors": ("fcpts", {"lr_weight": 2e-3}, {"background_weight": 1e6}, ()),
}


def main() -> None:
    parser = common.parser(
        __doc__,
        common.result_path("detection", "refdet"),
        [0.5, 0.7, 0.8, 0.9],
        iters=600,
        calib_samples=512,
        quick="sparsity 0.8 only, fcpts at 50 steps, 100 test canvases",
    )
    parser.add_argument("--data", type=Path, help="the canvas directory (default: regenerated in a temporary one)")
    parser.add_argument("--test-samples", type=int, default=COUNTS["test"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--choices", action="store_true", help="measure the defaults (CHOICES) instead")
    args = parser.parse_args()
    if args.quick:
        args.sparsities, args.iters, args.test_samples = [0.8], 50, 100
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.data
        if directory is None or not (directory / "JPEGImages").is_dir():
            directory = make_detection_dataset(directory or Path(tmp) / "canvas", COUNTS, seed=0)
        data = load_data(f"voc:{directory}")
    test = data.evaluation.subset(args.test_samples, 0) if args.test_samples < len(data.evaluation) else data.evaluation
    calibration = data.calibration.subset(args.calib_samples, args.seed).x
    model = load_model("refdet")
    dense = detection_map(model, test.x, test.targets)
    print(f"dense mAP@0.5 {dense['map50']:.4f}  mAP@[.5:.95] {dense['map']:.4f}", flush=True)
    rows: list[dict] = [{"setting": "dense", "method": "dense", **dense, "achieved": 0.0, "time_s": 0.0}]
    for target in args.sparsities:
        for label in CHOICES if args.choices else args.rows:
            method, options, weights, dense_layers = CHOICES[label] if args.choices else (*ROWS[label], None, ())
            if method == "fcpts":
                options = {"iters": args.iters, **options}
            if weights is not None:
                loss = make_detection_loss(**{**DETECTION_WEIGHTS, **weights})
                RECONSTRUCTION_LOSSES.register("detection-choice", loss)
                options = {**options, "loss": "detection-choice"}
            config = fcpts.make_config(
                method,
                target_sparsity=target,
                seed=args.seed,
                batch_size=args.batch_size,
                layer_filter=exclude(*dense_layers),
                **options,
            )
            result = fcpts.prune(model, calibration, config)
            start = time.perf_counter()
            scores = detection_map(result.model, test.x, test.targets)
            exact = result.zeros == round(target * result.numel)
            rows.append(
                {"setting": f"{target:g}", "method": label, **scores, **common.pruned(result), "exact_count": exact}
            )
            print(
                f"  {target:g} {label:<18} mAP@0.5 {scores['map50']:.4f}  mAP@[.5:.95] {scores['map']:.4f}  "
                f"zeros {result.zeros}/{result.numel} ({'exact' if exact else 'NOT exact'})  "
                f"{result.wall_time_s:.1f} s (+{time.perf_counter() - start:.0f} s eval)",
                flush=True,
            )
    table = markdown_table(rows)
    targets = check_targets(rows, dense) if not args.choices else {"lines": []}
    common.report(table, targets["lines"])
    payload = {
        "benchmark": "detection choices" if args.choices else "detection",
        "model": "refdet",
        "data": "Fashion-MNIST canvases (make_detection_dataset, seed 0), voc: layout",
        "calibration_samples": args.calib_samples,
        "test_samples": len(test),
        "iters": args.iters,
        "seed": args.seed,
        "quick": args.quick,
        "dense": dense,
        "rows": rows,
        "targets": targets,
        "table": table,
        "threads": torch.get_num_threads(),
        "versions": versions(),
    }
    common.write_json(args.out, payload)
    print(f"wrote {args.out}")


def check_targets(rows: list[dict], dense: dict) -> dict:
    """fcpts's mAP@0.5 ≥ every other method's at 0.7 and above; within 1 point of dense at 0.5; exact counts."""
    out: dict = {"lines": [], "exact_counts": all(r.get("exact_count", True) for r in rows)}
    for s in sorted({r["setting"] for r in rows} - {"dense"}, key=float):
        at = {r["method"]: r for r in rows if r["setting"] == s}
        if "fcpts" not in at:
            continue
        mine = at["fcpts"]["map50"]
        others = {k: r["map50"] for k, r in at.items() if k != "fcpts"}
        entry: dict = {"fcpts": mine}
        line = f"{s}: fcpts mAP@0.5 {mine:.4f}"
        if others:
            best = max(others, key=others.get)
            entry.update(best_other=best, best_other_map50=others[best], margin=mine - others[best])
            line += f" vs best other ({best}) {others[best]:.4f}: {mine - others[best]:+.4f}"
            if float(s) >= 0.7:
                entry["met"] = mine >= others[best]
                line += f"; target ≥ every other: {'met' if entry['met'] else 'NOT met'}"
        if float(s) == 0.5:
            entry["gap_to_dense"] = dense["map50"] - mine
            entry["dense_met"] = entry["gap_to_dense"] <= 0.01
            line += f"; {100 * entry['gap_to_dense']:.2f} points below dense: target ≤ 1: "
            line += "met" if entry["dense_met"] else "NOT met"
        out[s] = entry
        out["lines"].append(line)
    out["lines"].append(f"exact zero count in every row: {'yes' if out['exact_counts'] else 'NO'}")
    return out


def _rest(row: dict) -> list[str]:
    return [f"{row['achieved']:.6f}", common.seconds(row)]


def markdown_table(rows: list[dict]) -> str:
    return common.markdown(
        ["sparsity", "method", "mAP@0.5", "mAP@[.5:.95]", "achieved sparsity", "time (s)"],
        ([r["setting"], r["method"], f"{100 * r['map50']:.2f}", f"{100 * r['map']:.2f}", *_rest(r)] for r in rows),
    )


if __name__ == "__main__":
    main()
