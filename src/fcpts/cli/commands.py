"""The ``fcpts`` commands (``prune``, ``eval``, ``demo``, ``methods``, ``export``): a thin shell that
calls the library and prints; :func:`main` turns every :class:`~fcpts.errors.FcptsError` into one line."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .. import pipeline
from ..api import DEFAULT_CHECKPOINT_EVERY, METHODS, Method, PruneResult, RunOptions, make_config, prune, resolve_device
from ..core import distributed
from ..core.evaluate import accuracy, global_sparsity
from ..core.patterns import block_of, parse_pattern
from ..data.detection import DetectionSplit
from ..data.specs import load_data
from ..deploy import sparse_inference
from ..deploy.export import export
from ..errors import FcptsError
from ..evaluation import evaluation_warnings, split_accuracy, split_detection_map
from ..models.detection import is_detector
from ..models.specs import load_model
from ..pipeline import DataSettings, Job, load_inputs
from .parser import METHOD_FLAGS, build_parser, flag_name


def _config(args: argparse.Namespace) -> tuple[Any, RunOptions]:
    """The method's config and the run options from the ``prune`` flags."""
    entry = METHODS[args.method]
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    settings: dict[str, Any] = {}
    for flag in METHOD_FLAGS:
        value = getattr(args, flag)
        if value is None:
            continue
        if flag not in fields:
            raise FcptsError(f"{flag_name(flag)} does not apply to method {args.method!r}")
        settings[flag] = None if flag == "time_budget_s" and math.isinf(value) else value  # --time-budget none
    sparsity = args.sparsity
    if sparsity is None:
        if args.pattern is None or block_of(args.pattern) is not None:
            raise FcptsError(
                "--sparsity is required (or --pattern N:M, which means sparsity N/M; 1xB needs --sparsity)"
            )
        n, m = parse_pattern(args.pattern)
        sparsity = n / m
    if args.batch_size is not None:  # (unset: the method's default; fcpts's depends on its start)
        settings["batch_size"] = args.batch_size
    config = make_config(args.method, target_sparsity=sparsity, pattern=args.pattern, seed=args.seed, **settings)
    return config, _run_options(args, entry)


def _run_options(args: argparse.Namespace, entry: Method) -> RunOptions:
    checkpoint_dir, every = args.checkpoint_dir, args.checkpoint_every
    if args.resume is not None:  # --resume DIR: read the checkpoint in DIR and keep checkpointing there
        checkpoint_dir = args.resume
    if not entry.checkpoints:
        for flag in ("checkpoint_dir", "resume", "checkpoint_every"):
            if getattr(args, flag) is not None:
                raise FcptsError(f"--{flag.replace('_', '-')} does not apply to method {args.method!r}")
    if every is not None and every < 1:
        raise FcptsError(
            f"--checkpoint-every must be ≥ 1, got {every} (omit it for every {DEFAULT_CHECKPOINT_EVERY} steps)"
        )
    return RunOptions(
        device=args.device,
        progress=not args.no_progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=every,
        resume=args.resume is not None,
        retain_heap=not args.no_retain_heap,
    )


def _data_settings(args: argparse.Namespace) -> DataSettings:
    names = [f.name for f in dataclasses.fields(DataSettings)]
    return DataSettings(**{name: getattr(args, name) for name in names})


def cmd_prune(args: argparse.Namespace) -> None:
    config, options = _config(args)  # validates the sparsity and options before any loading
    job = Job(
        model=args.model,
        data=args.data,
        out=args.out,
        config=config,
        options=options,
        weights=args.weights,
        weights_map=args.weights_map,
        random_weights=args.random_weights,
        eval_data=args.eval_data,
        calib_samples=args.calib_samples,
        eval_samples=args.eval_samples,
        overwrite=args.overwrite,
        data_settings=_data_settings(args),
    )
    done = pipeline.run(job)
    if done is None:
        return  # another rank of a torchrun job: rank 0 prints
    print(_summary(done.result, done.dense_accuracy, done.sparse_accuracy))
    if done.dense_map is not None and done.sparse_map is not None:
        d, sp = done.dense_map, done.sparse_map
        print(f"mAP@0.5          dense {d['map50']:.4f} → sparse {sp['map50']:.4f}")
        print(f"mAP@[.5:.95]     dense {d['map']:.4f} → sparse {sp['map']:.4f}")
    f = done.report.get("fidelity")
    if f is not None and "mean_cosine" in f:
        print(f"fidelity         mean cosine {f['mean_cosine']:.4f}, recall@1 {f['recall_at_1']:.2%}")
    elif f is not None:
        print(
            f"fidelity         top-1 agreement {f['top1_agreement']:.2%}, top-5 {f['top5_agreement']:.2%}, "
            f"KL {f['kl']:.4f} (sparse vs dense)"
        )
    if args.random_weights:
        print("note             random weights (--random-weights): no pretrained weights were loaded")
    print(f"wrote {done.out}/model.safetensors, report.json, allocation.png")


def _summary(result: PruneResult, dense_acc: float | None, sparse_acc: float | None) -> str:
    lines = [
        f"method           {result.method}",
        f"target sparsity  {result.target_sparsity:g}",
        f"global sparsity  {result.global_sparsity:.6f} ({result.zeros} of {result.numel} weights zero)",
        f"prune time       {result.wall_time_s:.1f} s",
    ]
    chosen = result.config.get("start")  # what init "auto" chose
    if chosen:
        under = f" under {chosen['allocation']}" if chosen["allocation"] else ""
        lines.append(f"start            {chosen['init']}{under} (auto: {chosen['reason']})")
    sized = result.config.get("time_budget")
    if sized:
        steps = sized.get("stopped_at_step", result.config["iters"])
        stopped = ""
        if "stopped_at_step" in sized:
            stopped = f" (stopped there: the budget ran out, of {result.config['iters']})"
        resized = sized.get("resized")
        if resized:
            at, before, step_s = resized["at_step"], resized["iters_before"], resized["step_s"]
            stopped += f" (re-sized at step {at} from {before}: {step_s:.3g} s a step)"
        lines.append(f"time budget      {sized['budget_s']:g} s: {steps} learning steps{stopped}")
    check = result.config.get("start_check")
    if check:
        lines.append(
            f"start check      {result.config['init']} {check['start_loss']:.4g}, learned {check['learned_loss']:.4g}: "
            f"the {check['kept']} model is returned"
        )
    if dense_acc is not None and sparse_acc is not None:
        lines.append(f"top-1            dense {dense_acc:.2%} → sparse {sparse_acc:.2%}")
    return "\n".join(lines)


def _sparse_inference(model: Any, x: Any) -> tuple[Any, str]:
    """:func:`~fcpts.deploy.sparse_inference.convert` on ``x`` (BatchNorm folded, sparse kernels
    where timed faster); and the line saying how many layers went sparse."""
    fast, choices = sparse_inference.convert_with_choices(model, x)
    return fast, f"{sum(c.chosen != 'dense' for c in choices)} of {len(choices)} layers sparse"


def cmd_eval(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model, data = load_inputs(
        args.model, args.data, args.weights, args.random_weights, None, _data_settings(args), device, args.weights_map
    )
    split = data.evaluation
    if args.limit is not None:
        if args.limit < 1:
            raise FcptsError(f"--limit must be ≥ 1, got {args.limit}")
        split = split.first(args.limit)
    for warning in evaluation_warnings(model, split):
        print(f"fcpts: warning: {warning}", file=sys.stderr)
    sparsity = global_sparsity(model)
    kernels = ""
    if args.sparse_inference:  # timed on one evaluation batch (predict's batch size)
        model, kernels = _sparse_inference(model, split.x[:1000].to(device))
    detecting = is_detector(model) or isinstance(split, DetectionSplit)  # a classifier on boxes: one error
    detection = split_detection_map(model, split) if detecting else None
    acc = None if is_detector(model) else split_accuracy(model, split)
    print(f"model     {args.model}" + (f" ({args.weights})" if args.weights else ""))
    print(f"data      {data.name} ({len(split)} samples)")
    if is_detector(model):
        found = detection is not None
        print(f"mAP@0.5   {detection['map50']:.4f}" if found else "mAP       n/a (no boxes)")
        if found:
            print(f"mAP@[.5:.95] {detection['map']:.4f}")
    else:
        why = "no labels" if split.y is None else "the labels are not the model's classes"
        print(f"top-1     {f'n/a ({why})' if acc is None else f'{acc:.2%}'}")
    print(f"sparsity  {sparsity:.6f}")
    if kernels:
        print(f"kernels   {kernels}")


#: The demo's rows: the weakest baseline, the strongest one-shot methods on the reference CNN
#: (SparseGPT under the global allocation, POT), and fcpts. ``(label, method, settings)``.
DEMO_METHODS = (
    ("uniform-magnitude", "uniform-magnitude", {}),
    ("sparsegpt (global)", "sparsegpt", {"allocation": "global"}),
    ("pot", "pot", {}),
    ("fcpts", "fcpts", {}),
)


def cmd_demo(args: argparse.Namespace) -> None:
    options = RunOptions(device=args.device)
    model = load_model("refcnn", device=options.device)
    data = load_data("fashion-mnist", args.data_dir)
    calibration = data.calibration.subset(args.calib_samples, args.seed).x
    test = data.evaluation
    print(
        f"reference CNN on Fashion-MNIST: {args.calib_samples} unlabeled calibration images, "
        f"{len(test)} test images, target sparsity {args.sparsity:g}"
    )
    rows = [("dense", accuracy(model, test.x, test.y), 0.0, None)]
    common = {"target_sparsity": args.sparsity, "seed": args.seed}
    for label, method, settings in DEMO_METHODS:
        if method == "fcpts":
            settings = {"iters": args.iters}
        result = prune(model, calibration, make_config(method, **common, **settings), options)
        rows.append((label, accuracy(result.model, test.x, test.y), result.global_sparsity, result.wall_time_s))
        print(f"  {label}: done in {result.wall_time_s:.1f} s", flush=True)
    print(f"{'method':<20}{'top-1':>8}{'sparsity':>12}{'time':>9}")
    for name, acc, sparsity, seconds in rows:
        print(f"{name:<20}{acc:>8.2%}{sparsity:>12.6f}{'' if seconds is None else f'{seconds:.1f} s':>9}")


def cmd_export(args: argparse.Namespace) -> None:
    info = export(
        args.dir,
        args.out,
        args.format,
        input_shape=args.input_shape,
        overwrite=args.overwrite,
        trust_model_code=args.trust_model_code,
    )
    print(info.summary())
    if "onnx_check" in info.extra:
        check = info.extra["onnx_check"]
        print(f"onnxruntime vs PyTorch: max |diff| {check['max_abs_diff']:.3g} on a batch of {check['batch']}")
    print(f"wrote {info.out}; load it with fcpts.load({str(info.out)!r})")


def cmd_methods(args: argparse.Namespace) -> None:
    for name in sorted(METHODS):
        print(f"{name:<20}{METHODS[name].description}")


COMMANDS = {"prune": cmd_prune, "eval": cmd_eval, "demo": cmd_demo, "methods": cmd_methods, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``fcpts`` command; the exit status (2 for an :class:`FcptsError`, printed as one line)."""
    code = _run(argv)
    if distributed.launched():
        # A torchrun rank ends here, its group already left: gloo's C++ teardown at interpreter exit
        # can still abort ("terminate called without an active exception") after a clean run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        COMMANDS[args.command](args)
    except FcptsError as exc:
        # Under torchrun the rank that failed prints its error; the others only stop (one line in all).
        if not isinstance(exc, distributed.PeerFailure):
            print(f"fcpts: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
