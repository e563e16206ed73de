"""Block benchmark: does pruning in aligned 1×B blocks along the input dimension buy kernel speed?

On MiniLM's Linear shapes (384→1536, 1536→384, 384→384) at each of ``--tokens`` rows (tokens) and
``--sparsities``, random float32 weights are pruned at random to exactly the same number of zeros
two ways: unstructured, and in aligned 1×B blocks (``--blocks``, whole blocks zeroed). Timed in
the same process, taking turns (the order rotating every round, so a change in the machine's load
hits all of them), medians of ``--rounds`` rounds, each round a loop of calls lasting about
``--min-ms``:

* ``dense``: ``F.linear`` on the weight with its zeros (MKL/oneDNN GEMM);
* ``csr_lanes`` / ``csr_dot``: the ``cpu-sparse`` kernel (``csrc/spmm.cpp``) on the unstructured
  weight, each path forced: the row-lane path (vectors along the rows) and the few-rows one
  (scalar, one gathered input per stored weight);
* ``block_lanes`` / ``block_dot``: the ``cpu-block`` kernel on the 1×B weight: the row-lane path
  (one column index per block) and the few-rows one (vectors along the block).

The table gives each one's median time and the median paired speedups: block over CSR each on
the path ``cpu_sparse.DOT_BELOW`` picks for this row count, block over CSR each on its faster
path here ("best/best"), and each over dense. Run it pinned
to one core for one-thread figures: ``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_blocks.py``.
Writes JSON (default: benchmarks/results/blocks/cpu.json).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import common
import torch
import torch.nn.functional as F
from torch import nn

from fcpts.deploy import cpu_sparse
from fcpts.deploy.cpu_sparse import CPUSparseLinear
from fcpts.report import versions

#: (in, out) of MiniLM's Linear layers: FFN up, FFN down, attention projections.
SHAPES = ((384, 1536), (1536, 384), (384, 384))


def pruned_linear(k: int, m: int, sparsity: float, block: int, seed: int) -> nn.Linear:
    """A Linear(k, m) with random weights and exactly ``round(sparsity · m·k / block)`` zeroed 1×``block``
    blocks (``block`` 1: unstructured), chosen at random."""
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, m)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(m, k, generator=gen))
        scores = torch.rand(m * k // block, generator=gen)  # one per block (per weight when block is 1)
        zero = scores.argsort()[: round(sparsity * scores.numel())]
        keep = torch.ones_like(scores, dtype=torch.bool).index_fill_(0, zero, False)
        lin.weight.mul_(keep.reshape(m, k // block).repeat_interleave(block, 1))
    return lin


def with_dot_below(module: CPUSparseLinear, dot_below: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` called with its ``cpu_sparse.DOT_BELOW`` entry set to ``dot_below`` (the path forced)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        old = cpu_sparse.DOT_BELOW[module.block]
        cpu_sparse.DOT_BELOW[module.block] = dot_below
        try:
            return module(x)
        finally:
            cpu_sparse.DOT_BELOW[module.block] = old

    return call


def paired(fns: dict[str, Callable[[], object]], rounds: int, min_s: float) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` times, the order rotating each round."""
    loops = {}
    for name, fn in fns.items():  # warm up and pick a loop count lasting about min_s
        fn()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min_s / 4:
            fn()
            n += 1
        loops[name] = max(1, 4 * n)
    names = list(fns)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(loops[name]):
                fns[name]()
            out[name].append((time.perf_counter() - start) / loops[name])
    return out


@torch.no_grad()
def measure(k: int, m: int, tokens: int, sparsity: float, block: int, args: object) -> dict:
    """One row: the five variants on one shape, row count, sparsity and block size (see the module doc)."""
    flat, blocked = pruned_linear(k, m, sparsity, 1, 0), pruned_linear(k, m, sparsity, block, 1)
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(2))
    csr, blk = CPUSparseLinear(flat), CPUSparseLinear(blocked, block)
    fns = {"dense": lambda: F.linear(x, blocked.weight, blocked.bias)}
    for name, mod, ref in (("csr", csr, flat), ("block", blk, blocked)):
        for path, below in (("lanes", 0), ("dot", 1 << 30)):
            fn = with_dot_below(mod, below)
            assert torch.allclose(fn(x), ref(x), rtol=1e-5, atol=1e-4), f"{name} {path} disagrees with dense"
            fns[f"{name}_{path}"] = lambda fn=fn: fn(x)
    t = paired(fns, args.rounds, args.min_ms / 1e3)

    def speedup(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(t[a], t[b], strict=True))

    def chosen(name: str, b: int) -> str:
        return f"{name}_dot" if tokens < cpu_sparse.DOT_BELOW[b] else f"{name}_lanes"

    def best(name: str) -> str:
        return min((f"{name}_lanes", f"{name}_dot"), key=lambda v: statistics.median(t[v]))

    row = {"in": k, "out": m, "tokens": tokens, "sparsity": sparsity, "block": block}
    row |= {f"{name}_us": statistics.median(ts) * 1e6 for name, ts in t.items()}
    row |= {"csr_path": chosen("csr", 1), "block_path": chosen("block", block)}
    row |= {"block_vs_csr": speedup(chosen("csr", 1), chosen("block", block))}
    row |= {"best_block_vs_best_csr": speedup(best("csr"), best("block"))}
    row |= {
        "block_vs_dense": speedup("dense", chosen("block", block)),
        "csr_vs_dense": speedup("dense", chosen("csr", 1)),
    }
    return row


VARIANTS = ("dense", "csr_lanes", "csr_dot", "block_lanes", "block_dot")


def table(rows: list[dict]) -> str:
    header = ["shape", "tokens", "sparsity", "B", *(f"{v} µs" for v in VARIANTS)]
    header += ["block/csr ×", "best/best ×", "block/dense ×", "csr/dense ×"]
    body = [
        [f"{r['in']}→{r['out']}", r["tokens"], f"{r['sparsity']:g}", f"1×{r['block']}"]
        + [f"{r[f'{v}_us']:.1f}" for v in VARIANTS]
        + [f"{r[key]:.2f}" for key in ("block_vs_csr", "best_block_vs_best_csr", "block_vs_dense", "csr_vs_dense")]
        for r in rows
    ]
    return common.markdown(header, body)


def main() -> None:
    p = common.parser(__doc__, common.result_path("blocks", "cpu"), [0.8, 0.9], quick="one shape, 5 rounds")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 128, 1024])
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 8])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--min-ms", type=float, default=5.0)
    args = p.parse_args()
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.quick:
        args.rounds, args.min_ms = 5, 1.0
    assert cpu_sparse.library() is not None, "the cpu-sparse kernel could not be built"
    rows = []
    for k, m in shapes:
        for tokens in args.tokens:
            for sparsity in args.sparsities:
                for block in args.blocks:
                    rows.append(measure(k, m, tokens, sparsity, block, args))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    common.report(text)
    payload = {"rows": rows, "table": text, "threads": torch.get_num_threads(), "dot_below": cpu_sparse.DOT_BELOW}
    common.write_json(args.out, {**payload, "rounds": args.rounds, "min_ms": args.min_ms, "versions": versions()})


if __name__ == "__main__":
    main()
