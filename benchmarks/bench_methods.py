"""Methods benchmark: every method side by side on the reference CNN, same data, seed and sparsity.

Rows, in one run on the same 4096 calibration images and seed: the magnitude baselines (uniform,
global, ERK, LAMP; BatchNorm recalibrated), Wanda (uniform) and OWL-Wanda, SparseGPT (uniform as in
the paper, and under the global-magnitude allocation: much stronger on a CNN whose 9-weight stem
cannot lose 80% of its weights), POT-style layer-wise calibration (magnitude, per-layer
least-squares refit), and fcpts thresholding ``|W|`` (the paper) and the Wanda score
(``importance="wanda"``), each also started from POT's refit of the kept weights
(``refit_init=True``, on 1024 of the calibration images), and the fast recipe (``bench_core.FAST``:
200 steps at ``lr_weight`` 2e-3; plain, and with the refit on 512 images). Each at global sparsity
0.5, 0.8, 0.9, 0.95 and with the 2:4 pattern
(magnitude there: uniform only, as every allocation gives the same N:M mask). Top-1 on the 10k
test set, prune wall time, and the time in units of 100 dense training steps measured in the run.

    python benchmarks/bench_methods.py            # the full run
    python benchmarks/bench_methods.py --quick    # fcpts at 100 iterations (fast rows: 200), 0.8 and 2:4 only

Prints a Markdown table and the issue's targets; writes JSON (default: benchmarks/results/methods.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import fcpts.patterns
import torch
from bench_core import FAST, result_row, time_unit

import fcpts
from fcpts.data.fashion_mnist import load_fashion_mnist
from fcpts.report import versions

#: label → (method, options). ``fcpts`` rows get ``iters`` from the command line.
ROWS = {
    "uniform-magnitude": ("uniform-magnitude", {}),
    "global-magnitude": ("global-magnitude", {}),
    "erk-magnitude": ("erk-magnitude", {}),
    "lamp-magnitude": ("lamp-magnitude", {}),
    "wanda": ("wanda", {}),
    "owl-wanda": ("owl-wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "sparsegpt global": ("sparsegpt", {"allocation": "global"}),
    "pot": ("pot", {}),
    "fcpts magnitude": ("fcpts", {"importance": "magnitude"}),
    "fcpts wanda": ("fcpts", {"importance": "wanda"}),
    "fcpts magnitude +refit": ("fcpts", {"importance": "magnitude", "refit_init": True}),
    "fcpts wanda +refit": ("fcpts", {"importance": "wanda", "refit_init": True}),
    "fcpts fast": ("fcpts", {"importance": "magnitude", **FAST}),
    "fcpts fast +refit": ("fcpts", {"importance": "magnitude", "refit_init": True, "refit_samples": 512, **FAST}),
}
#: Under N:M every allocation gives the same magnitude mask: one magnitude row.
PATTERN_SKIP = {"global-magnitude", "erk-magnitude", "lamp-magnitude", "owl-wanda", "sparsegpt global"}
FCPTS_ROWS = tuple(label for label, (method, _) in ROWS.items() if method == "fcpts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--patterns", nargs="*", default=["2:4"])
    parser.add_argument("--calib-samples", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=fcpts.FCPTSConfig.iters)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--quick", action="store_true", help="fcpts at 100 iterations; sparsity 0.8 and 2:4 only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "methods.json")
    args = parser.parse_args()
    if args.quick:
        args.iters, args.sparsities, args.patterns = 100, [0.8], ["2:4"]

    data = load_fashion_mnist()
    test = data.evaluation
    calibration = data.calibration.subset(args.calib_samples, args.seed).x
    model = fcpts.load_reference_model()
    unit = time_unit(model, calibration, fcpts.FCPTSConfig.batch_size)
    dense = fcpts.accuracy(model, test.x, test.y)
    print(f"dense top-1 {dense:.2%}; time unit {unit:.2f} s", flush=True)
    rows: list[dict] = [{"setting": "dense", "method": "dense", "top1": dense, "achieved": 0.0, "time_s": 0.0}]

    settings: list[tuple[str, float, str | None]] = [(f"{s:g}", s, None) for s in args.sparsities]
    for p in args.patterns:
        n, m = fcpts.patterns.parse_pattern(p)
        settings.append((p, n / m, p))
    for setting, target, pattern in settings:
        for label in args.rows:
            if pattern is not None and label in PATTERN_SKIP:
                continue
            method, options = ROWS[label]
            if method == "fcpts":  # the command line's iterations, unless the row fixes its own (fast)
                options = {"iters": args.iters, **options}
            config = fcpts.make_config(method, target_sparsity=target, seed=args.seed, pattern=pattern, **options)
            result = fcpts.prune(model, calibration, config)
            top1 = fcpts.accuracy(result.model, test.x, test.y)
            rows.append({"setting": setting, "method": label, **result_row(result, top1, unit)})
            print(
                f"  {setting:<5} {label:<18} top-1 {top1:.2%}  sparsity {result.global_sparsity:.6f}  "
                f"{result.wall_time_s:.1f} s",
                flush=True,
            )

    table = markdown_table(rows)
    targets = check_targets(rows, [s for s, _, _ in settings], FCPTS_ROWS)
    print("\n" + table + "\n")
    for line in targets["lines"]:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "methods",
        "model": "refcnn",
        "data": "fashion-mnist",
        "calibration_samples": args.calib_samples,
        "iters": args.iters,
        "quick": args.quick,
        "seed": args.seed,
        "time_unit_s": unit,
        "rows": rows,
        "targets": targets,
        "table": table,
        "versions": versions(),
        "threads": torch.get_num_threads(),
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


def check_targets(
    rows: list[dict], settings: list[str], ours: tuple[str, ...], key: str = "setting", metric: str = "top1"
) -> dict:
    """The issue's targets per setting: fcpts (its best row, ``ours``) ≥ every other method at
    sparsity ≥ 0.8 (and N:M), and a wall time ≤ 2× SparseGPT's in the same run.

    Two fcpts rows are reported: the most accurate, and the fastest that still matches or beats
    every other method (the 1000-step default and the fast recipe are different rows).
    """
    out: dict = {"lines": []}
    for s in settings:
        at = {r["method"]: r for r in rows if str(r[key]) == s and metric in r}
        mine = [at[label] for label in ours if label in at]
        others = [r for label, r in at.items() if label not in ours and label != "dense"]
        if not mine or not others:
            continue
        best_ours = max(mine, key=lambda r: r[metric])
        best_other = max(others, key=lambda r: r[metric])
        entry = {
            "fcpts_best": best_ours["method"],
            "fcpts_score": best_ours[metric],
            "best_other": best_other["method"],
            "best_other_score": best_other[metric],
            "margin": best_ours[metric] - best_other[metric],
        }
        line = (
            f"{s}: best fcpts ({best_ours['method']}) {best_ours[metric]:.4f} vs best other "
            f"({best_other['method']}) {best_other[metric]:.4f}: {entry['margin']:+.4f}"
        )
        winners = [r for r in mine if r[metric] >= best_other[metric]]
        if "sparsegpt" in at:
            sparsegpt_s = at["sparsegpt"]["time_s"]
            entry["time_ratio_to_sparsegpt"] = best_ours["time_s"] / sparsegpt_s
            line += f"; its time {entry['time_ratio_to_sparsegpt']:.2f}× SparseGPT's"
            if winners:
                fastest = min(winners, key=lambda r: r["time_s"])
                ratio = fastest["time_s"] / sparsegpt_s
                entry.update(fastest_winner=fastest["method"], fastest_winner_ratio=ratio)
                line += f"; fastest fcpts row ≥ every other: {fastest['method']}, {ratio:.2f}× SparseGPT's"
                entry["time_met"] = ratio <= 2
                line += f" — target ≤ 2×: {'met' if entry['time_met'] else 'NOT met'}"
        if ":" in s or float(s) >= 0.8:  # the accuracy target: sparsity 0.8 and above, and N:M
            entry["met"] = entry["margin"] >= 0
            line += f"; target ≥ every other method: {'met' if entry['met'] else 'NOT met'}"
        out[s] = entry
        out["lines"].append(line)
    return out


def markdown_table(rows: list[dict]) -> str:
    lines = ["| setting | method | top-1 | achieved sparsity | time (s) | time (units) |", "|---|---|---|---|---|---|"]
    for r in rows:
        units = f"{r['time_units']:.2f}" if "time_units" in r else ""
        time_s = f"{r['time_s']:.1f}" if r["method"] != "dense" else ""
        lines.append(
            f"| {r['setting']} | {r['method']} | {100 * r['top1']:.2f} | {r['achieved']:.6f} | {time_s} | {units} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
