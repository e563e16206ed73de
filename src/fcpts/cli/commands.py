"""The ``fcpts`` command: a thin shell over the library (``prune``, ``eval``, ``demo``, ``methods``, ``export``)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import baselines as _baselines  # noqa: F401  (registers the magnitude methods)
from . import distributed, sparse_inference
from .allocation import ALLOCATIONS
from .api import METHODS, PruneResult, make_config, prune, resolve_device
from .bridge import SMOOTH_CDFS
from .data import NORMALIZATIONS, DataSource, Split, load_data
from .errors import FcptsError
from .evaluate import accuracy, global_sparsity, is_logits_output
from .export import FORMATS, export
from .fidelity import model_fidelity
from .importance import IMPORTANCES
from .method import RECONSTRUCTION_LOSSES, FCPTSConfig
from .models import load_model
from .output import build_report, check_output_dir, write_outputs
from .patterns import parse_pattern
from .zoo import load_tokenizer

#: CLI flag → config field, for the options that only some methods take.
METHOD_OPTIONS = {
    "iters": "iters",
    "lr_weight": "lr_weight",
    "lr_threshold": "lr_threshold",
    "init": "init",
    "threshold_grad": "threshold_grad",
    "density": "density",
    "control_weight": "control_weight",
    "temperature": "temperature",
    "feature_modules": "feature_modules",
    "recalibrate_bn": "recalibrate_bn",
    "loss": "loss",
    "learn_thresholds": "learn_thresholds",
    "resume": "resume",
    "checkpoint_dir": "checkpoint_dir",
    "checkpoint_every": "checkpoint_every",
    "importance": "importance",
    "allocation": "allocation",
    "damp": "damp",
    "blocksize": "blocksize",
    "refit_init": "refit_init",
    "refit_rank": "refit_rank",
    "refit_samples": "refit_samples",
    "freeze_masks_at": "freeze_masks_at",
}
#: Steps between checkpoints when --checkpoint-dir or --resume is given without --checkpoint-every.
DEFAULT_CHECKPOINT_EVERY = 100


def _add_model_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="built-in name (refcnn, refvit, minilm), torchvision:NAME, timm:NAME, hf:DIR, "
        "path/to/file.py:factory or package.module:factory",
    )
    p.add_argument("--weights", help="weights file (safetensors, or a torch.save state dict; never unpickled)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="allow a model without weights: keep its random initialisation (the report says so)",
    )
    p.add_argument(
        "--data", required=True, help="fashion-mnist, npz:PATH, imagefolder:DIR, text:FILE or hf-dataset:DIR"
    )
    p.add_argument("--data-dir", help="directory of the Fashion-MNIST IDX files (default: the Debian package's)")
    p.add_argument("--image-size", type=int, help="imagefolder: resize images to this square size")
    p.add_argument("--channels", type=int, choices=(1, 3), help="imagefolder: 1 (grayscale) or 3 (RGB)")
    p.add_argument("--crop", type=int, help="imagefolder: central square crop after the resize")
    p.add_argument("--normalize", choices=("none", *NORMALIZATIONS), help="imagefolder: per-channel normalisation")
    p.add_argument("--max-length", type=int, default=128, help="text: longest token sequence (default: 128)")
    p.add_argument("--split", help="hf-dataset: calibration split of a DatasetDict (default: train)")
    p.add_argument("--eval-split", help="hf-dataset: evaluation split (default: test, else validation)")
    for column in ("image", "text", "label"):
        p.add_argument(f"--{column}-column", help=f"hf-dataset: the {column} column (default: detected)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcpts", description="Fast and controllable post-training sparsity.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model to an exact global sparsity")
    _add_model_data_args(p)
    p.add_argument("--sparsity", type=float, help="global target sparsity in (0, 1) (default with --pattern N:M: N/M)")
    p.add_argument(
        "--pattern",
        metavar="N:M",
        help="semi-structured sparsity: N zeros in every M consecutive input weights (e.g. 2:4); "
        "layers whose input size does not divide by M stay dense",
    )
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--eval-data", metavar="SPEC", help="evaluate on this held-out data spec (e.g. text:eval.txt)")
    p.add_argument("--method", default="fcpts", choices=sorted(METHODS), help="default: fcpts")
    p.add_argument("--calib-samples", type=int, default=4096, help="calibration samples (default: 4096)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g = p.add_argument_group("fcpts options")
    g.add_argument("--iters", type=int, help=f"learning iterations (default: {FCPTSConfig.iters})")
    g.add_argument(
        "--lr-weight", type=float, help=f"kept-weight learning rate, 0 freezes (default: {FCPTSConfig.lr_weight})"
    )
    g.add_argument("--lr-threshold", type=float, help=f"threshold learning rate (default: {FCPTSConfig.lr_threshold})")
    g.add_argument("--init", choices=sorted(ALLOCATIONS), help=f"initial allocation (default: {FCPTSConfig.init})")
    g.add_argument("--threshold-grad", choices=("surrogate", "none"), help="reconstruction gradient to thresholds")
    g.add_argument(
        "--density",
        choices=sorted(SMOOTH_CDFS),
        help=f"density behind ds/dt (default: {FCPTSConfig.density})",
    )
    g.add_argument(
        "--control-weight", type=float, help=f"λ of the control loss (default: {FCPTSConfig.control_weight})"
    )
    g.add_argument("--temperature", type=float, help="distillation temperature (default: 1)")
    g.add_argument(
        "--loss",
        choices=("auto", *RECONSTRUCTION_LOSSES),
        help="reconstruction loss on the outputs (default: auto: kl for logits, cosine for embeddings)",
    )
    g.add_argument(
        "--feature-modules",
        nargs="+",
        metavar="NAME",
        help="also match these modules' outputs by MSE (block-wise reconstruction), e.g. layer1 layer2",
    )
    g.add_argument(
        "--recalibrate-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recalibrate BatchNorm after pruning (default: on for magnitude, wanda, sparsegpt; off for fcpts, pot)",
    )
    g.add_argument(
        "--learn-thresholds",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn the per-layer thresholds (default); --no-learn-thresholds keeps the --init masks "
        "fixed and only reconstructs the kept weights",
    )
    o = p.add_argument_group("score-based method options (wanda, sparsegpt, pot; --importance also fcpts)")
    o.add_argument("--importance", choices=sorted(IMPORTANCES), help="importance score (fcpts default: magnitude)")
    o.add_argument("--allocation", choices=sorted(ALLOCATIONS), help="per-layer sparsities (default: uniform)")
    o.add_argument("--damp", type=float, help="sparsegpt/pot: relative Hessian dampening (default: 0.01)")
    o.add_argument("--blocksize", type=int, help="sparsegpt: columns per block (default: 128)")
    g.add_argument(
        "--refit-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fcpts: refit the kept weights layer by layer (POT's least squares) before learning (default: off)",
    )
    g.add_argument(
        "--refit-rank",
        choices=("refitted", "dense"),
        help="with --refit-init: the thresholds rank the refitted weights (default) or the dense scores",
    )
    g.add_argument(
        "--refit-samples",
        type=int,
        metavar="N",
        help=f"with --refit-init: calibration samples the refit reads, 0 all (default: {FCPTSConfig.refit_samples})",
    )
    g.add_argument(
        "--freeze-masks-at",
        type=float,
        metavar="FRACTION",
        help="after this fraction of the iterations, hold finalize's exact masks and only reconstruct "
        f"(default: {FCPTSConfig.freeze_masks_at}; 1 learns the thresholds to the last step, as the paper)",
    )
    c = p.add_argument_group("checkpoints (fcpts)")
    where = c.add_mutually_exclusive_group()
    where.add_argument("--checkpoint-dir", metavar="DIR", help="save the training state to DIR during learning")
    where.add_argument(
        "--resume", metavar="DIR", help="continue the run checkpointed in DIR (same options; keeps checkpointing there)"
    )
    c.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help=f"steps between checkpoints (default: {DEFAULT_CHECKPOINT_EVERY} with --checkpoint-dir or --resume)",
    )

    e = sub.add_parser("eval", help="accuracy and sparsity of a model on a dataset")
    _add_model_data_args(e)
    e.add_argument("--limit", type=int, help="evaluate on the first N samples only")
    e.add_argument(
        "--sparse-inference",
        action="store_true",
        help="run pruned layers with sparse (CSR) kernels where a timing on the first batch says they are faster",
    )

    d = sub.add_parser("demo", help="prune the reference CNN on Fashion-MNIST: dense vs magnitude vs fcpts")
    d.add_argument("--sparsity", type=float, default=0.9)
    d.add_argument("--iters", type=int, default=FCPTSConfig.iters)
    d.add_argument("--calib-samples", type=int, default=4096)
    d.add_argument("--data-dir")
    d.add_argument("--device", default="cpu")
    d.add_argument("--seed", type=int, default=0)

    sub.add_parser("methods", help="list the pruning methods")

    x = sub.add_parser("export", help="export a pruned model (a prune output directory) as dense, compressed or onnx")
    x.add_argument("dir", help="output directory of fcpts prune (model.safetensors, report.json)")
    x.add_argument("--format", required=True, choices=sorted(FORMATS), help="dense, compressed or onnx")
    x.add_argument("--out", required=True, help="export directory (written atomically); fcpts.load(OUT) reads it")
    x.add_argument(
        "--input-shape", type=_shape, metavar="C,H,W", help="input shape without batch, for onnx (refcnn: 1,28,28)"
    )
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty export directory")
    return parser


def _config(args: argparse.Namespace) -> Any:
    entry = METHODS[args.method]
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    given = {flag: getattr(args, flag) for flag in METHOD_OPTIONS}
    if args.resume is not None:  # --resume DIR: read the checkpoint in DIR and keep checkpointing there
        given["resume"], given["checkpoint_dir"] = True, args.resume
    if given["checkpoint_dir"] is not None and given["checkpoint_every"] is None:
        given["checkpoint_every"] = DEFAULT_CHECKPOINT_EVERY
    options: dict[str, Any] = {}
    for flag, field in METHOD_OPTIONS.items():
        value = given[flag]
        if value is None:
            continue
        if field not in fields:
            raise FcptsError(f"--{flag.replace('_', '-')} does not apply to method {args.method!r}")
        options[field] = value
    sparsity = args.sparsity
    if sparsity is None:
        if args.pattern is None:
            raise FcptsError("--sparsity is required (or --pattern N:M, which means sparsity N/M)")
        n, m = parse_pattern(args.pattern)
        sparsity = n / m
    return make_config(
        args.method,
        target_sparsity=sparsity,
        pattern=args.pattern,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        **options,
    )


def _accuracy(model: torch.nn.Module, split: Split) -> float | None:
    # Labels are there for classifiers; an embedding model's argmax is no prediction (e.g. a labelled hf-dataset).
    return None if split.y is None or _outputs_embeddings(model, split) else accuracy(model, split.x, split.y)


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, DataSource]:
    model = load_model(args.model, args.weights, device=resolve_device(args.device), random_weights=args.random_weights)
    specs = [args.data] + ([args.eval_data] if getattr(args, "eval_data", None) else [])
    options = {"crop": args.crop, "normalize": args.normalize, "max_length": args.max_length}
    # The tokenizer is loaded only if the data holds text (an hf: image model may have none).
    options["tokenizer_loader"] = functools.cache(lambda: load_tokenizer(args.model))
    for key in ("split", "eval_split", "image_column", "text_column", "label_column"):
        options[key] = getattr(args, key)
    data = load_data(args.data, args.data_dir, args.image_size, args.channels, **options)
    if len(specs) > 1:  # held-out evaluation data (e.g. text:eval.txt beside text:calib.txt)
        held_out = load_data(args.eval_data, args.data_dir, args.image_size, args.channels, **options)
        data = DataSource(data.name, data.calibration, held_out.evaluation)
    return model, data


def _outputs_embeddings(model: torch.nn.Module, split: Split) -> bool:
    """True if the model's output on a sample holds embeddings (no logits): report fidelity, not accuracy."""
    from .calibration import call_model, rows, to_device

    device = next(model.parameters()).device
    with torch.no_grad():
        return not is_logits_output(call_model(model, to_device(rows(split.x, slice(0, 1)), device)))


def cmd_prune(args: argparse.Namespace) -> None:
    config = _config(args)  # validates the sparsity and options before any loading
    check_output_dir_arg(args)
    # Under torchrun (WORLD_SIZE > 1) join the process group: every rank loads the same model and
    # data and learns on its shard of each batch; rank 0 alone evaluates, writes and prints.
    config.device = distributed.init_from_env(config.device)
    args.device = str(config.device)
    try:
        _prune(args, config)
    finally:
        distributed.shutdown()


def _prune(args: argparse.Namespace, config: Any) -> None:
    model, data = _load(args)
    if args.calib_samples < 1:
        raise FcptsError(f"--calib-samples must be ≥ 1, got {args.calib_samples}")
    calibration = data.calibration.subset(args.calib_samples, args.seed)
    result = prune(model, calibration.x, config)  # a tensor, or a dict of token tensors for text
    if not distributed.is_main():
        return  # the same result as rank 0's, which writes it
    dense_acc, sparse_acc = _accuracy(model, data.evaluation), _accuracy(result.model, data.evaluation)
    extra: dict[str, Any] = {"random_weights": args.random_weights, "evaluation_data_spec": args.eval_data}
    if _outputs_embeddings(model, data.evaluation):  # embeddings: fidelity to the dense model on the data
        extra["fidelity"] = model_fidelity(result.model, model, data.evaluation.x)
    report = build_report(
        result,
        model_spec=args.model,
        weights=args.weights,
        data_spec=data.name,
        calibration_samples=len(calibration),
        evaluation_samples=len(data.evaluation),
        dense_accuracy=dense_acc,
        sparse_accuracy=sparse_acc,
        **extra,
    )
    out = write_outputs(result, args.out, report, args.overwrite)
    print(_summary(result, dense_acc, sparse_acc))
    if "fidelity" in extra:
        f = extra["fidelity"]
        print(f"fidelity         mean cosine {f['mean_cosine']:.4f}, recall@1 {f['recall_at_1']:.2%}")
    if args.random_weights:
        print("note             random weights (--random-weights): no pretrained weights were loaded")
    print(f"wrote {out}/model.safetensors, report.json, allocation.png")


def check_output_dir_arg(args: argparse.Namespace) -> None:
    out = Path(args.out)
    check_output_dir(out, args.overwrite)
    checkpoints = args.resume or args.checkpoint_dir
    if checkpoints is not None and Path(checkpoints).resolve().is_relative_to(out.resolve()):
        # The output directory is replaced as a whole at the end: checkpoints inside it would be lost.
        raise FcptsError(f"checkpoint directory {checkpoints} must be outside the output directory {out}")


def _summary(result: PruneResult, dense_acc: float | None, sparse_acc: float | None) -> str:
    lines = [
        f"method           {result.method}",
        f"target sparsity  {result.target_sparsity:g}",
        f"global sparsity  {result.global_sparsity:.6f} ({result.zeros} of {result.numel} weights zero)",
        f"prune time       {result.wall_time_s:.1f} s",
    ]
    if dense_acc is not None and sparse_acc is not None:
        lines.append(f"top-1            dense {dense_acc:.2%} → sparse {sparse_acc:.2%}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> None:
    model, data = _load(args)
    split = data.evaluation
    if args.limit:
        split = Split(split.x[: args.limit], None if split.y is None else split.y[: args.limit])
    sparsity = global_sparsity(model)
    kernels = ""
    if args.sparse_inference:  # timed on one evaluation batch (predict's batch size)
        choices = sparse_inference.plan(model, split.x[:1000].to(resolve_device(args.device)))
        model = sparse_inference.apply(model, choices)
        kernels = f"{sum(c.chosen != 'dense' for c in choices)} of {len(choices)} layers sparse"
    acc = _accuracy(model, split)
    print(f"model     {args.model}" + (f" ({args.weights})" if args.weights else ""))
    print(f"data      {data.name} ({len(split)} samples)")
    print(f"top-1     {'n/a (no labels)' if acc is None else f'{acc:.2%}'}")
    print(f"sparsity  {sparsity:.6f}")
    if kernels:
        print(f"kernels   {kernels}")


def cmd_demo(args: argparse.Namespace) -> None:
    model = load_model("refcnn", device=resolve_device(args.device))
    data = load_data("fashion-mnist", args.data_dir)
    calibration = data.calibration.subset(args.calib_samples, args.seed).x
    test = data.evaluation
    print(
        f"reference CNN on Fashion-MNIST: {args.calib_samples} unlabeled calibration images, "
        f"{len(test)} test images, target sparsity {args.sparsity:g}"
    )
    rows = [("dense", accuracy(model, test.x, test.y), 0.0, None)]
    common = {"target_sparsity": args.sparsity, "seed": args.seed, "device": args.device}
    for config in (make_config("uniform-magnitude", **common), FCPTSConfig(iters=args.iters, progress=True, **common)):
        result = prune(model, calibration, config)
        rows.append((config.method, accuracy(result.model, test.x, test.y), result.global_sparsity, result.wall_time_s))
    print(f"{'method':<20}{'top-1':>8}{'sparsity':>12}{'time':>9}")
    for name, acc, sparsity, seconds in rows:
        print(f"{name:<20}{acc:>8.2%}{sparsity:>12.6f}{'' if seconds is None else f'{seconds:.1f} s':>9}")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 1,28,28, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape


def cmd_export(args: argparse.Namespace) -> None:
    info = export(args.dir, args.out, args.format, input_shape=args.input_shape, overwrite=args.overwrite)
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
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        COMMANDS[args.command](args)
    except FcptsError as exc:
        print(f"fcpts: error: {exc}", file=sys.stderr)
        return 2
    if args.command == "demo":
        print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
