"""Core benchmark: the reference CNN on Fashion-MNIST at global sparsity 0.8, 0.9, 0.95.

Rows, all in one run on the same calibration images and seed: dense; the one-shot magnitude
baselines (uniform, global, ERK; each with BatchNorm recalibration); fcpts (default); and the
fcpts variants that decided its defaults: BatchNorm recalibrated after reconstruction, the
reconstruction loss not reaching the thresholds (``threshold_grad="none"``, as in the paper's
code) and the ERK allocation held fixed (``learn_thresholds=False``: reconstruction only).

Top-1 is on the 10k test set. Times are wall seconds and, because these machines are shared
and noisy, also a ratio to a unit measured in the same run: 100 dense training steps
(forward, backward, Adam) of the reference CNN at the same batch size.

    python benchmarks/bench_core.py                       # ~12 min on 2 CPU cores
    python benchmarks/bench_core.py --sparsities 0.9 --quick

Memory: the process's peak resident set size (``getrusage`` max RSS) after each row, in MiB. It
only grows, so a row's figure is the peak of the run so far (the data, the dense model and every
row before it), not that row's own use; a row that raises it needed more than all before it.

Prints a Markdown table and writes JSON (default: benchmarks/results/core.json).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fcpts
from fcpts.data.fashion_mnist import load_fashion_mnist
from fcpts.report import versions

BASELINES = ("uniform-magnitude", "global-magnitude", "erk-magnitude")
#: The fast recipe (README, "Fast"): 200 steps at twice the kept weights' learning rate, for a run
#: within 2× SparseGPT's time; measured against the 1000-step default here, in bench_methods
#: (with POT's refit first, on 512 images) and in bench_models (the ViT).
FAST = {"iters": 200, "lr_weight": 2e-3}
#: fcpts variants: label → config overrides.
VARIANTS = {
    "fcpts": {},
    "fcpts fast": FAST,
    "fcpts +BN recal": {"recalibrate_bn": True},
    "fcpts, rec↛t": {"threshold_grad": "none"},
    "fcpts init=global": {"init": "global"},
    "ERK fixed + rec": {"learn_thresholds": False},
}


def max_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def time_unit(model: torch.nn.Module, x: torch.Tensor, batch_size: int, steps: int = 100) -> float:
    """Seconds for ``steps`` dense training steps of ``model`` (a copy) at ``batch_size``."""
    import copy

    net = copy.deepcopy(model).train()
    opt = torch.optim.Adam(net.parameters(), 1e-5)
    batch = x[:batch_size]
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(batch), torch.zeros(len(batch), dtype=torch.long)).backward()
        opt.step()
    return time.perf_counter() - start


def result_row(result: fcpts.PruneResult, top1: float, unit: float) -> dict:
    """A pruning run's measures for a benchmark row: top-1, exact counts, times, memory so far, config."""
    return {
        "top1": top1,
        "achieved": result.global_sparsity,
        "zeros": result.zeros,
        "prunable": result.numel,
        "time_s": result.wall_time_s,
        "time_units": result.wall_time_s / unit,
        "layer_sparsity": result.layer_sparsity,
        "config": result.config,
        "max_rss_mib": max_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--calib-samples", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=fcpts.FCPTSConfig.iters)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="fcpts default only (no variants)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "core.json")
    args = parser.parse_args()
    variants = ["fcpts"] if args.quick else args.variants

    data = load_fashion_mnist()
    test = data.evaluation
    calibration = data.calibration.subset(args.calib_samples, args.seed).x
    model = fcpts.load_reference_model()
    batch_size = fcpts.FCPTSConfig.batch_size
    unit = time_unit(model, calibration, batch_size)
    dense = fcpts.accuracy(model, test.x, test.y)
    dense_row = {"sparsity": 0.0, "method": "dense", "top1": dense, "achieved": 0.0, "time_s": 0.0}
    rows = [{**dense_row, "max_rss_mib": max_rss_mib()}]
    print(f"dense top-1 {dense:.2%}; time unit (100 dense train steps, batch {batch_size}) {unit:.2f} s", flush=True)

    for target in args.sparsities:
        common = {"target_sparsity": target, "seed": args.seed}
        configs = [(name, fcpts.make_config(name, **common)) for name in BASELINES]
        # The command line's iterations, unless the variant fixes its own (the fast recipe).
        configs += [(v, fcpts.FCPTSConfig(**{"iters": args.iters, **common, **VARIANTS[v]})) for v in variants]
        for label, config in configs:
            result = fcpts.prune(model, calibration, config)
            top1 = fcpts.accuracy(result.model, test.x, test.y)
            row = {"sparsity": target, "method": label, **result_row(result, top1, unit)}
            rows.append(row)
            print(
                f"  {target:<5g} {label:<20} top-1 {top1:.2%}  sparsity {result.global_sparsity:.6f}  "
                f"{result.wall_time_s:.1f} s  max RSS {row['max_rss_mib']:.0f} MiB",
                flush=True,
            )

    targets = check_targets(rows, dense, args.sparsities)
    table = markdown_table(rows)
    print("\n" + table + "\n")
    for line in targets["lines"]:
        print(line)
    peak = max_rss_mib()
    print(f"peak memory (process max RSS): {peak:.0f} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "core",
        "model": "refcnn",
        "data": "fashion-mnist",
        "calibration_samples": args.calib_samples,
        "iters": args.iters,
        "seed": args.seed,
        "time_unit_s": unit,
        "peak_rss_mib": peak,
        "rows": rows,
        "targets": targets,
        "table": table,
        "versions": versions(),
        "threads": torch.get_num_threads(),
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


def check_targets(rows: list[dict], dense: float, sparsities: list[float]) -> dict:
    """The issue's targets: +5 points at 0.9 and +15 at 0.95 over the best baseline, within 1 of dense at 0.8."""
    out: dict = {"lines": []}
    for s in sparsities:
        at = [r for r in rows if r["sparsity"] == s]
        best = max((r for r in at if r["method"] in BASELINES), key=lambda r: r["top1"])
        ours = next(r for r in at if r["method"] == "fcpts")
        gain = 100 * (ours["top1"] - best["top1"])
        out[str(s)] = {
            "gain_points": gain,
            "best_baseline": best["method"],
            "drop_from_dense_points": 100 * (dense - ours["top1"]),
            "time_s": ours["time_s"],
        }
        need = {0.9: ("gain", 5.0), 0.95: ("gain", 15.0)}.get(s)
        line = (
            f"sparsity {s:g}: fcpts {ours['top1']:.2%} vs best baseline {best['method']} {best['top1']:.2%} "
            f"({gain:+.1f} points); {100 * (dense - ours['top1']):.2f} below dense; {ours['time_s']:.1f} s"
        )
        if need:
            line += f" — target +{need[1]:g}: {'met' if gain >= need[1] else 'NOT met'}"
        if s == 0.8:
            line += f" — target within 1 of dense: {'met' if dense - ours['top1'] <= 0.01 else 'NOT met'}"
        line += f" — time ≤ 60 s: {'met' if ours['time_s'] <= 60 else 'NOT met'}"
        out["lines"].append(line)
    return out


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| sparsity | method | top-1 | achieved sparsity | time (s) | time (units) | max RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        units = f"{r['time_units']:.2f}" if "time_units" in r else ""
        time_s = f"{r['time_s']:.1f}" if r["method"] != "dense" else ""
        rss = f"{r['max_rss_mib']:.0f}" if "max_rss_mib" in r else ""
        lines.append(
            f"| {r['sparsity']:g} | {r['method']} | {100 * r['top1']:.2f} | {r['achieved']:.6f} | {time_s} | {units} "
            f"| {rss} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
