"""The reference papers' procedures on all-MiniLM-L6-v2, driven block by block, for comparison with fcpts.

Follows the structure of the reference code of Wanda (locuslab/wanda, ``lib/prune.py``:
``prune_wanda``, ``lib/layerwrapper.py``) and SparseGPT (IST-DASLab/sparsegpt, ``opt.py``,
``sparsegpt.py``), rewritten for a BERT encoder: the inputs of transformer block 0 are captured once
per calibration sentence (unpadded: real tokens only); then, block after block, every Linear of the
block gets its statistics from one forward of the block (Wanda: the squared input norms per column;
SparseGPT: ``H = 2XᵀX/n``), all of them are pruned, and the block is run again with its pruned
weights to give the next block's inputs. Only the 36 Linear layers inside the 6 encoder blocks are
pruned. Measured as ``benchmarks/bench_models.py`` measures: mean cosine of the sentence embeddings
to the dense model's on the 198 held-out fortunes.

The switches take one difference at a time (defaults: the reference's procedure):

    --calib N               calibration sentences, the first N (256)
    --inputs dense          every block's inputs from the dense model (no re-run after pruning)
    --group layer           Wanda: compare within the whole layer instead of per output row
    --padded                pad every sentence to the longest calibration sentence and count the padding
    --true-sequential       prune [q,k,v], [attention out], [intermediate], [output] one after the other

    python scripts/reference_minilm.py --method wanda
    python scripts/reference_minilm.py --method sparsegpt --calib 591
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from typing import Any

import torch
from torch import nn

import fcpts
from fcpts.core.fidelity import model_fidelity
from fcpts.data.corpus import fortune_texts, split_texts
from fcpts.data.text import tokenize
from fcpts.models.zoo import load_tokenizer

SEQUENTIAL = [
    ["attention.self.query", "attention.self.key", "attention.self.value"],
    ["attention.output.dense"],
    ["intermediate.dense"],
    ["output.dense"],
]


class Stop(Exception):
    pass


def block_inputs(model: nn.Module, block: nn.Module, batches: list[dict]) -> list[tuple[torch.Tensor, dict]]:
    """(hidden states, keyword arguments) of ``block`` for every batch (the reference's ``Catcher``)."""
    seen: list[tuple[torch.Tensor, dict]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append((args[0] if args else kwargs.pop("hidden_states"), dict(kwargs)))
        raise Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(Stop):
                model(**batch)
    finally:
        handle.remove()
    return seen


def run_block(block: nn.Module, inps: list[tuple[torch.Tensor, dict]]) -> list[tuple[torch.Tensor, dict]]:
    """The block's outputs on every cached input (same keyword arguments)."""
    outs = []
    for x, kwargs in inps:
        y = block(x, **kwargs)
        outs.append((y[0] if isinstance(y, tuple) else y, kwargs))
    return outs


class WandaStats:
    """``scaler_row``: the running mean of squared input norms per column (reference ``WrappedGPT``)."""

    def __init__(self, layer: nn.Linear) -> None:
        self.scaler_row = torch.zeros(layer.in_features)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        tmp = inp.shape[0] if inp.dim() == 3 else 1
        inp = inp.reshape(-1, inp.shape[-1]).t().float()  # (cols, tokens)
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples

    def prune(self, layer: nn.Linear, sparsity: float, group: str) -> None:
        w = layer.weight.data
        metric = w.abs() * torch.sqrt(self.scaler_row.reshape(1, -1))  # (out, cols)
        mask = torch.zeros_like(metric, dtype=torch.bool)
        if group == "row":
            idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
            mask.scatter_(1, idx, True)
        else:
            idx = torch.sort(metric.flatten(), stable=True)[1][: int(metric.numel() * sparsity)]
            mask.view(-1)[idx] = True
        w[mask] = 0


class SparseGPTStats:
    """The reference ``SparseGPT`` class (unstructured, no quantisation), in float32."""

    def __init__(self, layer: nn.Linear) -> None:
        self.H = torch.zeros(layer.in_features, layer.in_features)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        tmp = inp.shape[0] if inp.dim() == 3 else 1
        inp = inp.reshape(-1, inp.shape[-1]).t()  # (cols, tokens)
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())

    def prune(self, layer: nn.Linear, sparsity: float, blocksize: int, percdamp: float) -> None:
        W = layer.weight.data.clone().float()
        H = self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        diag = torch.arange(H.shape[0])
        H[diag, diag] += percdamp * torch.mean(torch.diag(H))
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
        for i1 in range(0, W.shape[1], blocksize):
            i2 = min(i1 + blocksize, W.shape[1])
            W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
            Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            for i in range(i2 - i1):
                w, d = W1[:, i], Hinv1[i, i]
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        layer.weight.data = W.reshape(layer.weight.shape).to(layer.weight.dtype)


def collect(stats: WandaStats | SparseGPTStats) -> Any:
    """A forward hook handing the layer's input to ``stats`` (the reference's ``add_batch`` hook)."""
    return lambda module, inp, out: stats.add_batch(inp[0].data)


def prune_block(block: nn.Module, inps: list, args: argparse.Namespace) -> None:
    """Collect each group's statistics on one forward of the block, prune the group (reference order)."""
    groups = SEQUENTIAL if args.true_sequential else [[name for group in SEQUENTIAL for name in group]]
    for names in groups:
        subset = {n: block.get_submodule(n) for n in names}
        stats = {n: (WandaStats if args.method == "wanda" else SparseGPTStats)(m) for n, m in subset.items()}
        handles = [m.register_forward_hook(collect(stats[n])) for n, m in subset.items()]
        run_block(block, inps)
        for h in handles:
            h.remove()
        for n, m in subset.items():
            if args.method == "wanda":
                stats[n].prune(m, args.sparsity, args.group)
            else:
                stats[n].prune(m, args.sparsity, args.blocksize, args.percdamp)


def calibration_batches(texts: list[str], tokenizer: Any, padded: bool) -> list[dict]:
    """One sentence per batch: unpadded, or padded to the longest calibration sentence (mask kept)."""
    if padded:
        enc = tokenize(texts, tokenizer, 64)
        return [{k: v[i : i + 1] for k, v in enc.items()} for i in range(len(texts))]
    return [tokenize([t], tokenizer, 64) for t in texts]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--inputs", choices=["sequential", "dense"], default="sequential")
    parser.add_argument("--group", choices=["row", "layer"], default="row")
    parser.add_argument("--padded", action="store_true")
    parser.add_argument("--true-sequential", action="store_true")
    parser.add_argument("--blocksize", type=int, default=128)
    parser.add_argument("--percdamp", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    cal_text, eval_text = split_texts(fortune_texts())
    tokenizer = load_tokenizer("minilm")
    dense = fcpts.load_model("minilm").eval()
    model = fcpts.load_model("minilm").eval()
    blocks = model.encoder.encoder.layer
    inps = block_inputs(model, blocks[0], calibration_batches(cal_text[: args.calib], tokenizer, args.padded))
    for block in blocks:
        if args.inputs == "dense":
            outs = run_block(block, inps)  # the dense block's outputs, before it is pruned
        prune_block(block, inps, args)
        inps = outs if args.inputs == "dense" else run_block(block, inps)
    fidelity = model_fidelity(model, dense, tokenize(eval_text, tokenizer, 64))
    print(f"{vars(args)} mean_cosine {fidelity['mean_cosine']:.4f} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
