"""Ablation benchmark: what the learned allocation adds over fixed allocations with the same reconstruction.

Every row runs the same reconstruction (KL distillation on the same calibration images, same
iterations, learning rates and seed); the rows differ only in how the per-layer sparsities come
about:

* fixed allocations: uniform, ERK, global-magnitude, LAMP masks, thresholds held fixed
  (``learn_thresholds=False``) while the kept weights learn, then finalized to the same exact
  zero count — on the CLI: ``fcpts prune --init erk --no-learn-thresholds``;
* fcpts and its variants: the default (KDE bridge, reconstruction reaching the thresholds through
  the sigmoid surrogate), a histogram density instead of the KDE, the reconstruction not reaching
  the thresholds (as in the paper's code), other threshold learning rates, no control loss;
* for reference, the one-shot magnitude baselines (no reconstruction, BatchNorm recalibrated).

Each (sparsity, variant) runs with several seeds; the seed picks the calibration subset (from the
60k training images), the batch order and the KDE subsamples, so the spread covers the data too.
For fcpts rows the script also records the learned global sparsity before the exact finalize and
the top-1 there, so "no control loss" shows how far the sparsity drifts and what finalize costs.

    python benchmarks/bench_ablation.py                          # refcnn, 3 seeds, 0.8/0.9/0.95
    python benchmarks/bench_ablation.py --iters 500 --seeds 0 1 2
    python benchmarks/bench_ablation.py --quick                  # 1 seed, 0.9, 50 iterations

Wall times are per run (prepare + learn + finalize, without the extra evaluations) and, because
these machines are shared and noisy, also a ratio to the default fcpts row of the same sparsity
and seed, measured in the same run. Prints a Markdown table (mean ± sample standard deviation over
seeds) and writes JSON (default: benchmarks/results/ablation.json, rewritten after every run).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import fcpts
from fcpts.calibration import Calibration
from fcpts.data import load_fashion_mnist
from fcpts.method import prepare_from_config
from fcpts.output import versions

#: One-shot baselines (no reconstruction), for reference.
BASELINES = ("global-magnitude", "erk-magnitude")
#: Fixed allocations with the fcpts reconstruction: label → FCPTSConfig overrides.
FIXED = {
    f"{init} fixed + rec": {"init": init, "learn_thresholds": False} for init in ("uniform", "erk", "global", "lamp")
}
#: fcpts and its variants: label → FCPTSConfig overrides.
LEARNED = {
    "fcpts": {},
    "fcpts, histogram density": {"density": "histogram"},
    "fcpts, rec↛t": {"threshold_grad": "none"},
    "fcpts, lr_t 0.005": {"lr_threshold": 0.005},
    "fcpts, lr_t 0.05": {"lr_threshold": 0.05},
    "fcpts, no control loss": {"control_weight": 0.0},
    "fcpts, init=global": {"init": "global"},
    "fcpts, init=lamp": {"init": "lamp"},
    "fcpts, refit init": {"refit_init": True},
}
VARIANTS = {**{b: None for b in BASELINES}, **FIXED, **LEARNED}


def run_fcpts(
    model: torch.nn.Module, calibration: torch.Tensor, test: Any, config: fcpts.FCPTSConfig
) -> dict[str, Any]:
    """prepare → learn → (evaluate at the learned sparsity) → finalize, as ``fcpts.prune`` does."""
    start = time.perf_counter()
    teacher, student = copy.deepcopy(model), copy.deepcopy(model)
    data = Calibration(calibration, config.batch_size, config.seed)
    prepared, config = prepare_from_config(student, teacher, data, config)
    fcpts.learn(prepared, teacher, data, config)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        learned_sparsity = prepared.global_sparsity().item()
    learned_top1 = fcpts.accuracy(prepared.model, test.x, test.y)
    start = time.perf_counter()
    plain = fcpts.finalize(prepared)
    elapsed += time.perf_counter() - start
    layers = fcpts.layer_sparsity(plain)
    return {
        "top1": fcpts.accuracy(plain, test.x, test.y),
        "achieved": fcpts.global_sparsity(plain),
        "zeros": sum(z for z, _ in layers.values()),
        "prunable": sum(n for _, n in layers.values()),
        "learned_sparsity": learned_sparsity,
        "learned_top1": learned_top1,
        "time_s": elapsed,
        "layer_sparsity": {name: z / n for name, (z, n) in layers.items()},
    }


def run_baseline(model: torch.nn.Module, calibration: torch.Tensor, test: Any, config: Any) -> dict[str, Any]:
    result = fcpts.prune(model, calibration, config)
    return {
        "top1": fcpts.accuracy(result.model, test.x, test.y),
        "achieved": result.global_sparsity,
        "zeros": result.zeros,
        "prunable": result.numel,
        "time_s": result.wall_time_s,
        "layer_sparsity": result.layer_sparsity,
    }


def summarize(rows: list[dict[str, Any]], variants: list[str], sparsities: list[float]) -> list[dict[str, Any]]:
    """Mean, sample standard deviation, min and max over seeds per (sparsity, variant)."""
    out = []
    for s in sparsities:
        for v in variants:
            runs = [r for r in rows if r["sparsity"] == s and r["variant"] == v]
            if not runs:
                continue
            top1 = [100 * r["top1"] for r in runs]
            entry = {
                "sparsity": s,
                "variant": v,
                "seeds": len(runs),
                "top1_mean": statistics.fmean(top1),
                "top1_sd": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "top1_min": min(top1),
                "top1_max": max(top1),
                "time_s_mean": statistics.fmean(r["time_s"] for r in runs),
            }
            ratios = [r["time_ratio"] for r in runs if r.get("time_ratio") is not None]
            entry["time_ratio_mean"] = statistics.fmean(ratios) if ratios else None
            drift = [r["learned_sparsity"] - s for r in runs if "learned_sparsity" in r]
            if drift:
                entry["learned_sparsity_drift_mean"] = statistics.fmean(drift)
                entry["finalize_cost_points_mean"] = statistics.fmean(
                    100 * (r["learned_top1"] - r["top1"]) for r in runs
                )
            out.append(entry)
    return out


def markdown_table(summary: list[dict[str, Any]], sparsities: list[float]) -> str:
    """One row per variant; per sparsity: top-1 mean ± sd over seeds (their number if under 3), time vs fcpts."""
    variants = list(dict.fromkeys(e["variant"] for e in summary))
    head = "| variant | " + " | ".join(f"top-1 @ {s:g}" for s in sparsities) + " | time (s) | time vs fcpts |"
    lines = [head, "|---" * (len(sparsities) + 3) + "|"]
    for v in variants:
        cells, ratios, seconds = [], [], []
        for s in sparsities:
            e = next((e for e in summary if e["variant"] == v and e["sparsity"] == s), None)
            if e is None:
                cells.append("")
            elif e["seeds"] == 1:
                cells.append(f"{e['top1_mean']:.2f} (1 seed)")
            else:
                few = f" ({e['seeds']} seeds)" if e["seeds"] < 3 else ""
                cells.append(f"{e['top1_mean']:.2f} ± {e['top1_sd']:.2f}{few}")
            if e:
                seconds.append(e["time_s_mean"])
            if e and e["time_ratio_mean"] is not None:
                ratios.append(e["time_ratio_mean"])
        ratio = f"{statistics.fmean(ratios):.2f}×" if ratios else ""
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {statistics.fmean(seconds):.0f} | {ratio} |")
    return "\n".join(lines)


def combine(paths: list[Path]) -> None:
    """One table (and the drift lines) from result files of runs with the same model and iterations."""
    payloads = [json.loads(p.read_text()) for p in paths]
    if len({(p["model"], p["iters"], p["calibration_samples"]) for p in payloads}) != 1:
        raise SystemExit("the files come from runs with different models, iterations or calibration sizes")
    rows = [r for p in payloads for r in p["rows"]]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    sparsities = sorted({r["sparsity"] for r in rows})
    summary = summarize(rows, variants, sparsities)
    print(markdown_table(summary, sparsities))
    for e in summary:
        if "learned_sparsity_drift_mean" in e and e["variant"] in LEARNED:
            drift, cost = e["learned_sparsity_drift_mean"], e["finalize_cost_points_mean"]
            print(
                f"{e['variant']} @ {e['sparsity']:g}: {e['seeds']} seeds, learned sparsity {drift:+.4f} from the"
                f" target, the exact finalize {cost:+.2f} points"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refcnn", help="a model spec for fcpts.load_model (Fashion-MNIST input)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--calib-samples", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=fcpts.FCPTSConfig.iters)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="seed 0, sparsity 0.9, 50 iterations")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out (same options)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ablation.json")
    parser.add_argument(
        "--combine", type=Path, nargs="+", metavar="JSON", help="print one table from these result files; run nothing"
    )
    args = parser.parse_args()
    if args.combine:
        combine(args.combine)
        return
    if args.quick:
        args.seeds, args.sparsities, args.iters = [0], [0.9], 50

    data = load_fashion_mnist()
    test = data.evaluation
    model = fcpts.load_model(args.model)
    dense = fcpts.accuracy(model, test.x, test.y)
    print(f"{args.model}: dense top-1 {dense:.2%}", flush=True)
    rows: list[dict[str, Any]] = []
    if args.resume and args.out.exists():
        previous = json.loads(args.out.read_text())
        if (previous["model"], previous["iters"], previous["calibration_samples"]) != (
            args.model,
            args.iters,
            args.calib_samples,
        ):
            raise SystemExit(f"{args.out} was written with other options; run without --resume")
        rows = previous["rows"]
    done = {(r["sparsity"], r["seed"], r["variant"]) for r in rows}
    # fcpts first in every (sparsity, seed): the other rows' times are read against it.
    order = ["fcpts", *(v for v in args.variants if v != "fcpts")] if "fcpts" in args.variants else args.variants
    payload: dict[str, Any] = {
        "benchmark": "ablation",
        "model": args.model,
        "data": "fashion-mnist",
        "dense_top1": dense,
        "calibration_samples": args.calib_samples,
        "iters": args.iters,
        "seeds": args.seeds,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "versions": versions(),
        "threads": torch.get_num_threads(),
    }
    for target in args.sparsities:
        for seed in args.seeds:
            calibration = data.calibration.subset(args.calib_samples, seed).x
            reference_time = next(
                (r["time_s"] for r in rows if (r["sparsity"], r["seed"], r["variant"]) == (target, seed, "fcpts")), None
            )
            for variant in order:
                if (target, seed, variant) in done:
                    continue
                overrides = VARIANTS[variant]
                if overrides is None:
                    config = fcpts.make_config(variant, target_sparsity=target, seed=seed)
                    row = run_baseline(model, calibration, test, config)
                else:
                    config = fcpts.FCPTSConfig(target_sparsity=target, seed=seed, iters=args.iters, **overrides)
                    row = run_fcpts(model, calibration, test, config)
                if variant == "fcpts":
                    reference_time = row["time_s"]
                ratio = row["time_s"] / reference_time if reference_time else None
                rows.append({"sparsity": target, "seed": seed, "variant": variant, **row, "time_ratio": ratio})
                extra = ""
                if "learned_sparsity" in row:
                    extra = f"  learned S {row['learned_sparsity']:.4f} (top-1 there {row['learned_top1']:.2%})"
                print(
                    f"  {target:<5g} seed {seed}  {variant:<26} top-1 {row['top1']:.2%}  "
                    f"S {row['achieved']:.6f}  {row['time_s']:.1f} s{extra}",
                    flush=True,
                )
                summary = summarize(rows, args.variants, args.sparsities)
                payload.update(rows=rows, summary=summary, table=markdown_table(summary, args.sparsities))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print("\n" + payload["table"] + "\n")
    for e in payload["summary"]:
        if "learned_sparsity_drift_mean" in e and e["variant"] == "fcpts, no control loss":
            drift, cost = e["learned_sparsity_drift_mean"], e["finalize_cost_points_mean"]
            print(
                f"no control loss @ {e['sparsity']:g}: the learned sparsity drifts by {drift:+.4f} from the target;"
                f" the exact finalize then costs {cost:+.2f} points"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
