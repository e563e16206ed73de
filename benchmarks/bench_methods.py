"""Methods benchmark: every method side by side on the reference CNN, same data, seed and sparsity.

Rows, in one run on the same 4096 calibration images and seed: the magnitude baselines (uniform,
global, ERK, LAMP; BatchNorm recalibrated), Wanda (uniform) and OWL-Wanda, SparseGPT (uniform as in
the paper, and under the global-magnitude allocation: much stronger on a CNN whose 9-weight stem
cannot lose 80% of its weights), POT-style layer-wise calibration (magnitude, per-layer
least-squares refit), and fcpts thresholding ``|W|`` (the paper) and the Wanda score
(``importance="wanda"``), each also started from POT's refit of the kept weights
(``refit_init=True``, on 1024 of the calibration images), and the fast recipe (``common.FAST``:
200 steps at ``lr_weight`` 2e-3; plain, and with the refit on 512 images). Each at global sparsity
0.5, 0.8, 0.9, 0.95 and with the 2:4 pattern
(magnitude there: uniform only, as every allocation gives the same N:M mask); ``--patterns 1x4 1x8``
adds every sparsity under each block pattern (every row: the allocation still matters). Top-1 on
the 10k test set, prune wall time, and the time in units of 100 dense training steps measured in the run.

    python benchmarks/bench_methods.py            # the full run
    python benchmarks/bench_methods.py --quick    # fcpts at 100 iterations (fast rows: 200), 0.8 and 2:4 only
    python benchmarks/bench_methods.py --sparsities 0.8 --patterns 1x4 1x8 --rows wanda pot \
        --out benchmarks/results/methods/refcnn_blocks.json   # what 1xB blocks cost in top-1

Prints a Markdown table and the targets; writes JSON (default: benchmarks/results/methods/refcnn.json).
"""

from __future__ import annotations

import common
from common import FAST, PATTERN_SKIP

import fcpts
from fcpts.core.patterns import parse_pattern
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
FCPTS_ROWS = tuple(label for label, (method, _) in ROWS.items() if method == "fcpts")


def main() -> None:
    parser = common.parser(
        __doc__,
        common.result_path("methods", "refcnn"),
        [0.5, 0.8, 0.9, 0.95],
        iters=fcpts.FCPTSConfig.iters,
        calib_samples=4096,
        quick="fcpts at 100 iterations; sparsity 0.8 and 2:4 only",
        nargs="*",
    )
    parser.add_argument("--patterns", nargs="*", default=["2:4"])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    if args.quick:
        args.iters, args.sparsities, args.patterns = 100, [0.8], ["2:4"]

    data = load_fashion_mnist()
    test = data.evaluation
    calibration = data.calibration.subset(args.calib_samples, args.seed).x
    model = fcpts.load_reference_model()
    unit = common.time_unit(model, calibration, fcpts.FCPTSConfig.batch_size)
    dense = fcpts.accuracy(model, test.x, test.y)
    print(f"dense top-1 {dense:.2%}; time unit {unit:.2f} s", flush=True)
    rows: list[dict] = [{"setting": "dense", "method": "dense", "top1": dense, "achieved": 0.0, "time_s": 0.0}]

    settings = common.settings(args.sparsities, args.patterns, parse_pattern)
    for setting, target, pattern in settings:
        for label in args.rows:
            if pattern is not None and not common.is_block(pattern) and label in PATTERN_SKIP:
                continue
            method, options = ROWS[label]
            if method == "fcpts":  # the command line's iterations, unless the row fixes its own (fast)
                options = {"iters": args.iters, **options}
            config = fcpts.make_config(method, target_sparsity=target, seed=args.seed, pattern=pattern, **options)
            result = fcpts.prune(model, calibration, config)
            top1 = fcpts.accuracy(result.model, test.x, test.y)
            rows.append({"setting": setting, "method": label, **common.result_row(result, top1, unit)})
            print(
                f"  {setting:<5} {label:<18} top-1 {top1:.2%}  sparsity {result.global_sparsity:.6f}  "
                f"{result.wall_time_s:.1f} s",
                flush=True,
            )

    table = markdown_table(rows)
    targets = common.check_targets(rows, [s for s, _, _ in settings], FCPTS_ROWS)
    common.report(table, targets["lines"])
    payload = common.refcnn_payload("methods", args, unit, rows, targets, table, quick=args.quick, versions=versions())
    common.write_json(args.out, payload)
    print(f"wrote {args.out}")


def units(row: dict) -> str:
    return f"{row['time_units']:.2f}" if "time_units" in row else ""


def markdown_table(rows: list[dict]) -> str:
    return common.markdown(
        ["setting", "method", "top-1", "achieved sparsity", "time (s)", "time (units)"],
        (
            [r["setting"], r["method"], f"{100 * r['top1']:.2f}", f"{r['achieved']:.6f}", common.seconds(r), units(r)]
            for r in rows
        ),
    )


if __name__ == "__main__":
    main()
