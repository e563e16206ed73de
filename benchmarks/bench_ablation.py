"""Ablation benchmark: what the learned allocation adds over fixed allocations with the same reconstruction.

Every row runs the same reconstruction (KL distillation, or 1 − cosine for MiniLM, on the same
calibration data, same iterations, learning rates and seed); the rows differ only in how the
per-layer sparsities come about:

* fixed allocations: uniform, ERK, global-magnitude, LAMP masks, thresholds held fixed
  (``learn_thresholds=False``) while the kept weights learn, then finalized to the same exact
  zero count — on the CLI: ``fcpts prune --init erk --no-learn-thresholds``;
* fcpts (the default: thresholds learned, then finalize's exact masks held for the last 10% of the
  steps) and its variants: thresholds learned to the last step (the paper; the default before
  this ablation), exact masks from half-way; and, each changing one option of "to the end": a
  histogram density instead of the KDE, the reconstruction not reaching the thresholds (as in
  the paper's code), other threshold learning rates, no control loss, LAMP/global initial
  allocations, POT's refit of the kept weights before learning; the learning loop's options
  (``LOOP``: straight-through mask, bandwidths fixed once, constant kept-weight rate, batches drawn
  with replacement), each alone on the defaults and on the plain loop's knobs (``PLAIN``: T = 4,
  λ = 5, thresholds to the end);
* for reference, the one-shot magnitude baselines (no reconstruction, BatchNorm recalibrated).

Models: ``refcnn``, ``refvit`` and the depthwise ``refmobile`` (top-1 on the Fashion-MNIST test
set; the seed picks 4096 calibration images from the 60k training images) and ``minilm`` (mean cosine of the sparse and
dense sentence embeddings on the held-out fortunes; the seed picks 512 of the 591 calibration
sentences). The seed also sets the batch order and the KDE subsamples, so the spread covers the
data too. For fcpts rows the script also records the learned global sparsity before the exact
finalize and the score there, so "no control loss" shows how far the sparsity drifts and what
finalize costs.

    python benchmarks/bench_ablation.py --iters 500                       # refcnn, 3 seeds, 0.8/0.9/0.95
    python benchmarks/bench_ablation.py --model refvit --iters 500 --sparsities 0.9 0.95
    python benchmarks/bench_ablation.py --model minilm --iters 60 --sparsities 0.7
    python benchmarks/bench_ablation.py --model refmobile --iters 800 --batch-size 128 --calib-samples 1024 \
        --variants "fcpts, T4 λ5 to the end" "fcpts, T4 λ5 to the end, ste"   # the loop options
    python benchmarks/bench_ablation.py --quick                           # 1 seed, 0.9, 50 iterations
    python benchmarks/bench_ablation.py --combine A.json B.json --plot allocation.png

Wall times are per run (prepare + learn + finalize, without the extra evaluations) and, because
these machines are shared and noisy, also a ratio to the fcpts row of the same sparsity and seed,
measured in the same run. Prints a Markdown table (mean ± sample standard deviation over seeds)
and writes JSON (default: benchmarks/results/ablation/<model>.json, rewritten after every run).
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import torch

import fcpts
from fcpts.core.calibration import Calibration
from fcpts.data.fashion_mnist import load_fashion_mnist
from fcpts.method.fcpts import prepare_from_config
from fcpts.report import versions

#: One-shot baselines (no reconstruction), for reference.
BASELINES = ("global-magnitude", "erk-magnitude")
#: Fixed allocations with the fcpts reconstruction: label → FCPTSConfig overrides.
FIXED = {
    f"{init} fixed + rec": {"init": init, "learn_thresholds": False} for init in ("uniform", "erk", "global", "lamp")
}
#: fcpts and its variants: label → FCPTSConfig overrides.
#: The default before this ablation, as in the paper: thresholds learned to the last step. The
#: variants below change one option of it (they were measured before the default changed).
TO_THE_END = {"freeze_masks_at": 1.0}
LEARNED = {
    "fcpts": {},  # the default: for the last 10% of the steps, finalize's exact masks are held
    "fcpts, thresholds to the end": TO_THE_END,
    "fcpts, exact masks from 1/2": {"freeze_masks_at": 0.5},  # learn the allocation first, then reconstruct
    "fcpts, histogram density": {**TO_THE_END, "density": "histogram"},
    "fcpts, rec↛t": {**TO_THE_END, "threshold_grad": "none"},
    "fcpts, lr_t 0.005": {**TO_THE_END, "lr_threshold": 0.005},
    "fcpts, lr_t 0.05": {**TO_THE_END, "lr_threshold": 0.05},
    "fcpts, no control loss": {**TO_THE_END, "control_weight": 0.0},
    "fcpts, init=global": {**TO_THE_END, "init": "global"},
    "fcpts, init=lamp": {**TO_THE_END, "init": "lamp"},
    "fcpts, refit init": {**TO_THE_END, "refit_init": True},
    "fcpts, refit init, rank dense": {**TO_THE_END, "refit_init": True, "refit_rank": "dense"},
    # MiniLM: 128 sentences bound the refit's cost (it reads each layer's inputs on them).
    "fcpts, refit init on 128 samples": {**TO_THE_END, "refit_init": True, "refit_samples": 128},
}
#: The learning loop's options, one at a time (issue #15: a plain 120-line loop beat fcpts on a
#: depthwise net): the straight-through mask, bandwidths fixed at the start, a constant kept-weight
#: rate, batches drawn with replacement.
LOOP = {
    "ste": {"threshold_grad": "ste"},
    "bandwidth once": {"bandwidth_update": "once"},
    "constant lr_w": {"lr_schedule": "constant"},
    "replacement": {"sampling": "replacement"},
}
#: The plain loop's other knobs: KL at T = 4 (the paper's), λ = 5, no mask freeze.
PLAIN = {"temperature": 4.0, "control_weight": 5.0, "freeze_masks_at": 1.0}
LEARNED.update({f"fcpts, {k}": v for k, v in LOOP.items()})
LEARNED["fcpts, T4 λ5 to the end"] = PLAIN
LEARNED.update({f"fcpts, T4 λ5 to the end, {k}": {**PLAIN, **v} for k, v in LOOP.items()})
LEARNED["fcpts, T4 λ5 to the end, all four"] = {**PLAIN, **{k: v for o in LOOP.values() for k, v in o.items()}}
VARIANTS = {**{b: None for b in BASELINES}, **FIXED, **LEARNED}


@dataclass
class Task:
    """What the ablation runs on: a model, a calibration set per seed and a score (higher is better)."""

    name: str
    model: torch.nn.Module
    calibration: Callable[[int], Any]  # seed → calibration data (a tensor or a token dict)
    score: Callable[[torch.nn.Module], float]
    measure: str  # the rows' key for the score: "top1" or "mean_cosine"
    scale: float  # the table shows score × scale (top-1 in %)
    digits: int
    data: str
    batch_size: int


def image_task(spec: str, calib_samples: int, batch_size: int) -> Task:
    """A Fashion-MNIST model (refcnn, refvit, refmobile): top-1 on the 10k test images; seed → calibration subset."""
    data = load_fashion_mnist()
    test = data.evaluation
    return Task(
        spec,
        fcpts.load_model(spec),
        lambda seed: data.calibration.subset(calib_samples, seed).x,
        lambda m: fcpts.accuracy(m, test.x, test.y),
        "top1",
        100.0,
        2,
        "fashion-mnist",
        batch_size,
    )


def minilm_task(calib_samples: int, max_length: int, batch_size: int) -> Task:
    """all-MiniLM-L6-v2: mean cosine to the dense embeddings on held-out fortunes; seed → calibration sentences."""
    from fcpts.core.fidelity import model_fidelity
    from fcpts.data.corpus import fortune_texts, split_texts
    from fcpts.data.text import tokenize
    from fcpts.models.zoo import load_tokenizer

    cal_text, eval_text = split_texts(fortune_texts())
    tokenizer = load_tokenizer("minilm")

    def calibration(seed: int) -> dict[str, torch.Tensor]:
        order = torch.randperm(len(cal_text), generator=torch.Generator().manual_seed(seed))
        return tokenize([cal_text[i] for i in order[:calib_samples].tolist()], tokenizer, max_length)

    held_out = tokenize(eval_text, tokenizer, max_length)
    dense = fcpts.load_model("minilm")
    return Task(
        "minilm",
        dense,
        calibration,
        lambda m: model_fidelity(m, dense, held_out)["mean_cosine"],
        "mean_cosine",
        1.0,
        3,
        "fortunes-min",
        batch_size,
    )


def run_fcpts(model: torch.nn.Module, calibration: Any, task: Task, config: fcpts.FCPTSConfig) -> dict[str, Any]:
    """prepare → learn → (score at the learned sparsity) → finalize, as ``fcpts.prune`` does."""
    start = time.perf_counter()
    teacher, student = copy.deepcopy(model), copy.deepcopy(model)
    data = Calibration(calibration, config.batch_size, config.seed)
    prepared, config = prepare_from_config(student, teacher, data, config)
    fcpts.learn(prepared, teacher, data, config)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        learned_sparsity = prepared.global_sparsity().item()
    learned_score = task.score(prepared.model)
    start = time.perf_counter()
    plain = fcpts.finalize(prepared)
    elapsed += time.perf_counter() - start
    layers = fcpts.layer_sparsity(plain)
    return {
        task.measure: task.score(plain),
        "achieved": fcpts.global_sparsity(plain),
        "zeros": sum(z for z, _ in layers.values()),
        "prunable": sum(n for _, n in layers.values()),
        "learned_sparsity": learned_sparsity,
        f"learned_{task.measure}": learned_score,
        "time_s": elapsed,
        "layer_sparsity": {name: z / n for name, (z, n) in layers.items()},
    }


def run_baseline(model: torch.nn.Module, calibration: Any, task: Task, config: Any) -> dict[str, Any]:
    result = fcpts.prune(model, calibration, config)
    return {task.measure: task.score(result.model), **common.pruned(result)}


def drift_lines(summary: list[dict[str, Any]], variants: Iterable[str]) -> list[str]:
    """How far the learned sparsity ends from the target, and what the exact finalize costs, per variant."""
    out = []
    for e in summary:
        if "learned_sparsity_drift_mean" in e and e["variant"] in variants:
            drift, cost = e["learned_sparsity_drift_mean"], e["finalize_cost_mean"]
            out.append(
                f"{e['variant']} @ {e['sparsity']:g}: {e['seeds']} seeds, learned sparsity {drift:+.4f} from the"
                f" target, the exact finalize {cost:+.3g}"
            )
    return out


def combine(paths: list[Path], plot: Path | None = None) -> None:
    """One table (and the drift lines) from result files of runs with the same model and iterations.

    With ``plot``, also draw the per-layer sparsity of the allocations there (:func:`plot_allocations`).
    """
    payloads = [json.loads(p.read_text()) for p in paths]
    if len({(p["model"], p["iters"], p["calibration_samples"]) for p in payloads}) != 1:
        raise SystemExit("the files come from runs with different models, iterations or calibration sizes")
    rows = [r for p in payloads for r in p["rows"]]
    present = set(r["variant"] for r in rows)
    variants = [v for v in VARIANTS if v in present] + sorted(present - set(VARIANTS))
    sparsities = sorted({r["sparsity"] for r in rows})
    summary, table = common.tabulate(payloads[0], rows, variants, sparsities)
    print(table)
    print("\n".join(drift_lines(summary, LEARNED)))
    if plot is not None:
        plot_allocations(rows, payloads[0]["model"], plot)
        print(f"wrote {plot}")


#: The allocations drawn by ``--plot``: the ERK start, what fcpts learns from it, LAMP's rule.
PLOTTED = ("erk fixed + rec", "fcpts", "fcpts, thresholds to the end", "lamp fixed + rec")


def plot_allocations(rows: list[dict[str, Any]], model: str, path: Path) -> None:
    """Per-layer sparsity (mean over seeds) of :data:`PLOTTED` variants, one panel per sparsity, to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sparsities = sorted({r["sparsity"] for r in rows})
    variants = [v for v in PLOTTED if any(r["variant"] == v for r in rows)]
    names = list(next(r["layer_sparsity"] for r in rows if r["variant"] in variants))
    fig = Figure(figsize=(max(7.0, 0.45 * len(names) + 4), 3.2 * len(sparsities)), layout="constrained")
    FigureCanvasAgg(fig)
    width = 0.8 / len(variants)
    for k, target in enumerate(sparsities):
        ax = fig.add_subplot(len(sparsities), 1, k + 1)
        for j, variant in enumerate(variants):
            runs = [r for r in rows if r["variant"] == variant and r["sparsity"] == target]
            if runs:
                means = [statistics.fmean(r["layer_sparsity"][n] for r in runs) for n in names]
                xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(names))]
                ax.bar(xs, means, width, label=f"{variant} ({len(runs)} seeds)")
        ax.axhline(target, color="black", linestyle="--", linewidth=0.8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"layer sparsity @ {target:g}")
        ax.set_xticks(range(len(names)), names if k == len(sparsities) - 1 else [], rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        if k == 0:
            ax.set_title(f"{model}: per-layer sparsity, learned (fcpts) vs fixed allocations")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = common.parser(__doc__, None, [0.8, 0.9, 0.95], quick="seed 0, sparsity 0.9, 50 iterations")
    parser.add_argument("--model", default="refcnn", choices=["refcnn", "refvit", "refmobile", "minilm"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--calib-samples", type=int, default=None, help="calibration images (4096) or sentences (512 of the 591)"
    )
    parser.add_argument("--iters", type=int, default=fcpts.FCPTSConfig.iters)
    parser.add_argument("--batch-size", type=int, help="default: 16 for MiniLM, fcpts' (64) for the images")
    parser.add_argument("--lr-weight", type=float, help="the fcpts rows' kept-weight rate (default: fcpts')")
    parser.add_argument("--max-length", type=int, default=64, help="MiniLM tokens per sentence")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --out (same options)")
    parser.add_argument(
        "--combine", type=Path, nargs="+", metavar="JSON", help="print one table from these result files; run nothing"
    )
    parser.add_argument("--plot", type=Path, help="with --combine: draw the per-layer sparsities to this PNG")
    args = parser.parse_args()
    if args.combine:
        combine(args.combine, args.plot)
        return
    if args.quick:
        args.seeds, args.sparsities, args.iters = [0], [0.9], 50
    args.out = args.out or common.result_path("ablation", args.model + ("-quick" if args.quick else ""))

    if args.model == "minilm":
        args.calib_samples = args.calib_samples or 512
        task = minilm_task(args.calib_samples, args.max_length, args.batch_size or 16)
    else:
        args.calib_samples = args.calib_samples or 4096
        task = image_task(args.model, args.calib_samples, args.batch_size or fcpts.FCPTSConfig.batch_size)
    model = task.model
    dense = task.score(model)
    print(f"{args.model}: dense {task.measure} {dense:.4f}", flush=True)
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
        "data": task.data,
        "measure": task.measure,
        f"dense_{task.measure}": dense,
        "calibration_samples": args.calib_samples,
        "batch_size": task.batch_size,
        "iters": args.iters,
        "lr_weight": args.lr_weight or fcpts.FCPTSConfig.lr_weight,
        "seeds": args.seeds,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "versions": versions(),
        "threads": torch.get_num_threads(),
    }
    for target in args.sparsities:
        for seed in args.seeds:
            calibration = task.calibration(seed)
            reference_time = next(
                (r["time_s"] for r in rows if (r["sparsity"], r["seed"], r["variant"]) == (target, seed, "fcpts")), None
            )
            for variant in order:
                if (target, seed, variant) in done:
                    continue
                overrides = VARIANTS[variant]
                shared = {"target_sparsity": target, "seed": seed, "batch_size": task.batch_size}
                if overrides is None:
                    row = run_baseline(model, calibration, task, fcpts.make_config(variant, **shared))
                else:
                    options = {"iters": args.iters, **overrides}  # a variant may set its own iterations
                    if args.lr_weight is not None:
                        options.setdefault("lr_weight", args.lr_weight)
                    row = run_fcpts(model, calibration, task, fcpts.FCPTSConfig(**shared, **options))
                if variant == "fcpts":
                    reference_time = row["time_s"]
                ratio = row["time_s"] / reference_time if reference_time else None
                rows.append({"sparsity": target, "seed": seed, "variant": variant, **row, "time_ratio": ratio})
                extra = ""
                if "learned_sparsity" in row:
                    extra = f"  learned S {row['learned_sparsity']:.4f} (there {row[f'learned_{task.measure}']:.4f})"
                print(
                    f"  {target:<5g} seed {seed}  {variant:<30} {task.measure} {row[task.measure]:.4f}  "
                    f"S {row['achieved']:.6f}  {row['time_s']:.1f} s{extra}",
                    flush=True,
                )
                summary, table = common.tabulate(payload, rows, args.variants, args.sparsities)
                payload.update(rows=rows, summary=summary, table=table)
                common.write_json(args.out, payload)
    print("\n" + payload["table"] + "\n")
    print("\n".join(drift_lines(payload["summary"], ["fcpts, no control loss"])))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
