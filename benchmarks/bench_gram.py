"""Depthwise Gram matrices: lag sums (the C++ kernel) against unfolded inputs, on EfficientNet-Lite1's layers.

POT's refit reads two Gram matrices of every layer (``X̃ᵀX̃`` and ``X̃ᵀX``), SparseGPT one. A
depthwise conv's come either from its unfolded input (``F.unfold``: kh·kw copies, then a batched
product) or from lag sums (:mod:`fcpts.core.lag_gram`). This times :func:`fcpts.core.activations.gram`
both ways on each distinct depthwise layer shape of ``efficientnet_lite1`` at 240×240 (inputs of
the real model on Fashion-MNIST images), with the dense model as the reference (both matrices, as
POT), and checks that the two agree. Each case runs ``--repeats`` times, the two ways alternating;
the median is reported, and the ratio unfolded / lag sums.

    python benchmarks/bench_gram.py               # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import copy
import statistics
import time

import common
import torch
from torch import nn

from fcpts.core import grouped_input
from fcpts.core.activations import gram
from fcpts.core.lag_gram import library
from fcpts.data import load_data
from fcpts.models import load_model


def layer_inputs(samples: int) -> dict[str, tuple[nn.Conv2d, torch.Tensor]]:
    """The first depthwise conv of each (channels, size, kernel, stride) and its input on ``samples`` images."""
    model = load_model("efficientnet_lite1").eval()
    x = load_data("fashion-mnist").calibration.subset(samples, 0).x
    seen: dict[str, tuple[nn.Conv2d, torch.Tensor]] = {}

    def hook(conv: nn.Conv2d):
        def keep(_: nn.Module, args: tuple) -> None:
            key = f"{conv.in_channels}ch {args[0].shape[2]}px k{conv.kernel_size[0]} s{conv.stride[0]}"
            seen.setdefault(key, (conv, args[0].detach().clone()))

        return keep

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    handles = [conv.register_forward_pre_hook(hook(conv)) for conv in convs]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def timed(conv: nn.Conv2d, x: torch.Tensor, lag_sums: bool) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds of ``gram`` with the dense conv as reference; its two matrices."""
    student = nn.Sequential(nn.Identity(), copy.deepcopy(conv))
    original = grouped_input.library
    grouped_input.library = original if lag_sums else (lambda: None)
    try:
        start = time.perf_counter()
        g, c, _ = gram(student, "1", [x], reference=copy.deepcopy(student))
        return time.perf_counter() - start, g, c
    finally:
        grouped_input.library = original


def main() -> None:
    parser = common.parser(__doc__, common.result_path("core", "depthwise-gram"), [], nargs="*")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    assert library() is not None, "the lag-sum kernel could not be built"
    torch.set_num_threads(args.threads)
    rows = []
    for key, (conv, x) in layer_inputs(args.samples).items():
        times: dict[bool, list[float]] = {True: [], False: []}
        out = {}
        for _ in range(args.repeats):
            for lag_sums in (False, True):
                seconds, g, c = timed(conv, x, lag_sums)
                times[lag_sums].append(seconds)
                out[lag_sums] = (g, c)
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(out[True], out[False], strict=True))
        unfolded, lags = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"layer": key, "unfolded_s": unfolded, "lag_sums_s": lags, "ratio": unfolded / lags, "diff": diff})
        print(f"  {key:<22} unfolded {unfolded:.3f} s  lag sums {lags:.3f} s  {unfolded / lags:.2f}×  diff {diff:.1e}")
    table = common.markdown(
        ["layer (input)", "unfolded (s)", "lag sums (s)", "speed-up", "max rel. diff"],
        ([r["layer"], f"{r['unfolded_s']:.3f}", f"{r['lag_sums_s']:.3f}", f"{r['ratio']:.2f}×", f"{r['diff']:.1e}"]
         for r in rows),
    )  # fmt: skip
    payload = {"benchmark": "depthwise gram", "samples": args.samples, "threads": args.threads, "rows": rows}
    common.write_json(args.out, {**payload, "table": table})
    common.report(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
