"""Write the benchmark tables of README.md and docs/ from the result files, so that none is copied by hand.

A table stands between ``<!-- table:NAME -->`` and ``<!-- /table -->``, NAME a key of :data:`TABLES`;
everything between the two markers is replaced.

    python benchmarks/tables.py           # rewrite the tables in README.md and docs/*.md
    python benchmarks/tables.py --check   # change nothing; exit 1 if a file is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "ablation.md"]
MARKER = re.compile(r"(<!-- table:([\w.-]+) -->\n).*?(<!-- /table -->)", re.DOTALL)


def load(benchmark: str, name: str) -> dict:
    return json.loads(common.result_path(benchmark, name).read_text())


def rows(benchmark: str, *names: str) -> list[dict]:
    return [r for name in names for r in load(benchmark, name)["rows"]]


def setting(row: dict) -> str:
    return row["setting"] if "setting" in row else f"{row['sparsity']:g}"


def top1(digits: int) -> Callable[[dict], tuple[str, str]]:
    """A cell "top-1 (time)": the score, bold where best, then the rest."""
    return lambda r: (f"{100 * r['top1']:.2f}", f" ({r['time_s']:.{digits}f} s)")


def cosine(r: dict) -> tuple[str, str]:
    """A cell "mean cosine / recall@1"."""
    return f"{r['mean_cosine']:.3f}", f" / {r['recall_at_1']:.2f}"


def pivot(
    runs: list[dict],
    settings: list[str],
    cell: Callable[[dict], tuple[str, str]],
    labels: dict[str, str] | None = None,
    sort_at: str | None = None,
    time_at: str | None = None,
) -> str:
    """Methods × settings; the best score of each column in bold; "—" where a method has no run.

    ``labels``: the rows and their names, in order (default: every method, best at ``sort_at`` first);
    ``time_at``: add a column with the prune time at that setting.
    """
    at = {(r["method"], setting(r)): r for r in runs if r["method"] != "dense" and "error" not in r}
    methods = labels or {m: NAMES.get(m, m) for m in dict.fromkeys(m for m, _ in at)}
    order = list(methods)
    if sort_at:
        order.sort(key=lambda m: -float(cell(at[m, sort_at])[0]))
    best = {
        s: max((float(cell(r)[0]) for (m, t), r in at.items() if t == s and m in methods), default=0) for s in settings
    }
    body = []
    for m in order:
        cells = []
        for s in settings:
            if (m, s) not in at:
                cells.append("—")
                continue
            score, rest = cell(at[m, s])
            cells.append(f"**{score}**{rest}" if float(score) == best[s] else score + rest)
        if time_at:
            cells.append(f"{at[m, time_at]['time_s']:.0f}")
        body.append([methods[m], *cells])
    return common.markdown(["method", *settings, *([f"time (s) @ {time_at}"] if time_at else [])], body)


def kind(variant: str) -> int:
    """The ablation tables' order: one-shot baselines, fixed allocations, fcpts, its variants."""
    if variant.startswith("fcpts"):
        return 2 if variant == "fcpts" else 3
    return 1 if variant.endswith("fixed + rec") else 0


def ablation(*names: str) -> str:
    """One table from the ablation result files of one model (as ``bench_ablation.py --combine``)."""
    payloads = [load("ablation", name) for name in names]
    runs = [r for p in payloads for r in p["rows"]]
    variants = sorted(dict.fromkeys(v for p in payloads for v in p["variants"]), key=kind)
    sparsities = sorted({r["sparsity"] for r in runs})
    return common.tabulate(payloads[0], runs, variants, sparsities)[1]


#: Row labels of the models tables (SparseGPT runs with the uniform allocation, as in the paper).
NAMES = {"sparsegpt": "sparsegpt (uniform)"}
#: MiniLM runs of the activation-based methods with the current code (padding tokens left out of
#: their input statistics): their cells replace those of the same method and setting in the older files.
MINILM_CURRENT = ("minilm-baselines", "minilm-activation")
#: The reference-CNN methods table: row → label.
METHODS = {
    "uniform-magnitude": "uniform-magnitude",
    "global-magnitude": "global-magnitude",
    "erk-magnitude": "erk-magnitude",
    "lamp-magnitude": "lamp-magnitude",
    "wanda": "wanda",
    "owl-wanda": "owl-wanda",
    "sparsegpt": "sparsegpt (uniform, the paper's)",
    "sparsegpt global": "sparsegpt, global allocation",
    "pot": "pot",
    "fcpts magnitude": "fcpts, magnitude",
    "fcpts wanda": "fcpts, wanda",
    "fcpts magnitude +refit": "fcpts, magnitude, `--refit-init`",
    "fcpts wanda +refit": "fcpts, wanda, `--refit-init`",
    "fcpts fast": "fcpts fast (200 steps, lr 2e-3)",
    "fcpts fast +refit": "fcpts fast, `--refit-init` on 512 images",
}
#: The detection table: mAP@0.5, then mAP@[.5:.95] and the prune time.
DETECTION = ["0.5", "0.7", "0.8", "0.9"]


def detection_cell(r: dict) -> tuple[str, str]:
    """A cell "mAP@0.5 / mAP@[.5:.95] (time)", in points."""
    return f"{100 * r['map50']:.1f}", f" / {100 * r['map']:.1f} ({r['time_s']:.0f} s)"


HEADLINE = ["uniform-magnitude", "lamp-magnitude", "sparsegpt global", "pot", "fcpts magnitude", "fcpts fast +refit"]
CNN = ["0.5", "0.8", "0.9", "0.95", "2:4"]
VIT = ["0.5", "0.7", "0.8", "0.9", "0.95", "2:4"]


def effnet_cell(r: dict) -> tuple[str, str]:
    """A cell "top-1 agreement / top-5 agreement / KL (time, peak RSS)", agreements in points."""
    peak = r["peak_rss_mib"] / 1024
    rest = f" / {100 * r['top5_agreement']:.1f} / {r['kl']:.2f} ({r['time_s']:.0f} s, {peak:.1f} GiB)"
    return f"{100 * r['top1_agreement']:.1f}", rest


def block_speed(payload: dict) -> str:
    """bench_blocks: per Linear shape, row count and sparsity, dense / CSR / 1×4 / 1×8 µs and the paired ratios."""
    by: dict[tuple, dict[int, dict]] = {}
    for r in payload["rows"]:
        by.setdefault((r["in"], r["out"], r["tokens"], r["sparsity"]), {})[r["block"]] = r
    body = []
    for (k, m, tokens, sparsity), b in by.items():
        r4, r8 = b[4], b[8]
        times = [r8["dense_us"], r8["csr_lanes_us"], *(r[f"{r['block_path']}_us"] for r in (r4, r8))]
        ratios = [
            r4["block_vs_csr"],
            r8["block_vs_csr"],
            r8["csr_vs_dense"],
            r4["block_vs_dense"],
            r8["block_vs_dense"],
        ]
        body.append([f"{k}→{m}", tokens, f"{sparsity:g}", *(f"{t:.0f}" for t in times), *(f"{x:.2f}" for x in ratios)])
    header = ["Linear", "tokens", "sparsity", "dense µs", "CSR µs", "1×4 µs", "1×8 µs"]
    header += ["1×4 / CSR ×", "1×8 / CSR ×", "CSR / dense ×", "1×4 / dense ×", "1×8 / dense ×"]
    return common.markdown(header, body)


BLOCKS = ["0.8", "0.8 1x4", "0.8 1x8"]
#: Table name → its Markdown.
TABLES: dict[str, Callable[[], str]] = {
    "headline": lambda: pivot(rows("methods", "refcnn"), CNN, top1(0), {m: METHODS[m] for m in HEADLINE}),
    "core-refcnn": lambda: common.core_table(rows("core", "refcnn")),
    "methods-refcnn": lambda: pivot(rows("methods", "refcnn"), CNN, top1(0), METHODS),
    "models-refvit": lambda: pivot(rows("models", "refvit"), VIT, top1(1), sort_at="0.8"),
    "models-minilm": lambda: pivot(
        rows("models", "minilm", *MINILM_CURRENT), ["0.5", "0.7", "0.8"], cosine, sort_at="0.8", time_at="0.8"
    ),
    "models-minilm-high": lambda: pivot(
        rows("models", "minilm-high", "minilm-24", *MINILM_CURRENT),
        ["0.9", "0.95", "2:4"],
        cosine,
        sort_at="0.9",
        time_at="0.9",
    ),
    "detection-refdet": lambda: pivot(rows("detection", "refdet"), DETECTION, detection_cell, sort_at="0.8"),
    "effnet-lite1": lambda: pivot(rows("effnet", "lite1"), ["0.7", "0.8"], effnet_cell, sort_at="0.8"),
    "effnet-lite1-1024": lambda: pivot(rows("effnet", "lite1-1024"), ["0.7", "0.8"], effnet_cell, sort_at="0.8"),
    "depthwise-gram": lambda: load("core", "depthwise-gram")["table"],
    "effnet-lite2": lambda: pivot(rows("effnet", "lite2"), ["0.7", "0.8"], effnet_cell, sort_at="0.8"),
    "blocks-speed": lambda: block_speed(load("blocks", "cpu")),
    "blocks-refcnn": lambda: pivot(
        rows("methods", "refcnn_blocks", "refcnn_blocks_fcpts"), BLOCKS, top1(0), sort_at="0.8"
    ),
    "blocks-refvit": lambda: pivot(rows("models", "refvit_blocks"), BLOCKS, top1(1), sort_at="0.8"),
    "blocks-minilm": lambda: pivot(rows("models", "minilm_blocks"), BLOCKS, cosine, sort_at="0.8"),
    "export-latency": lambda: common.export_tables(load("export", "cpu"))[0],
    "export-bytes": lambda: common.export_tables(load("export", "cpu"))[1],
    "ablation-refcnn": lambda: ablation(
        "refcnn-allocation", "refcnn-exact", "refcnn-variants-0.9", "refcnn-variants-0.95", "refcnn-refit"
    ),
    "ablation-refvit": lambda: ablation("refvit-exact", "refvit", "refvit-refit"),
    "ablation-minilm": lambda: ablation("minilm", "minilm-refit"),
    "ablation-refmobile": lambda: ablation("refmobile-loop"),
    "ablation-loop-refcnn": lambda: ablation("refcnn-loop", "refcnn-loop-plain"),
    "ablation-loop-refvit": lambda: ablation("refvit-loop", "refvit-loop-plain"),
}


def render(text: str) -> str:
    """``text`` with every marked table rewritten from the result files."""

    def table(match: re.Match[str]) -> str:
        if match[2] not in TABLES:
            raise SystemExit(f"unknown table {match[2]!r}; known: {', '.join(TABLES)}")
        return match[1] + TABLES[match[2]]() + "\n" + match[3]

    return MARKER.sub(table, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file's tables are out of date")
    args = parser.parse_args()
    stale = []
    for path in FILES:
        old = path.read_text()
        new = render(old)
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    verb = "out of date" if args.check else "rewrote"
    for path in stale:
        print(f"{verb}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
