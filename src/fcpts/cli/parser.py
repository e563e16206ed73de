"""The ``fcpts`` command line: every command, flag and help text (parsing only; :mod:`.commands` runs them).

About 320 lines, over 300 on purpose: one place lists every flag with its help, grouped by command
and by the method it applies to, as ``fcpts prune --help`` shows them.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

from ..api import DEFAULT_CHECKPOINT_EVERY, METHODS
from ..core.allocation import ALLOCATIONS
from ..core.importance import IMPORTANCES
from ..core.memory_format import MEMORY_FORMATS
from ..data.images import NORMALIZATIONS
from ..deploy.export import FORMATS
from ..method.bridge import DENSITIES
from ..method.budget import parse_duration
from ..method.config import ALLOCATION_LR_WEIGHT, CHOICES, ONESHOT_LR_WEIGHT, FCPTSConfig, oneshot_methods
from ..method.losses import RECONSTRUCTION_LOSSES
from ..method.speed import TEACHER_PRECISIONS
from ..method.threshold_mask import THRESHOLD_GRADS
from ..models.state_dicts import KEY_MAPS

#: Flags that set a method's config field of the same name; only some methods take each.
METHOD_FLAGS = (
    "iters",
    "lr_weight",
    "lr_threshold",
    "init",
    "threshold_grad",
    "density",
    "bandwidth_update",
    "lr_schedule",
    "sampling",
    "control_weight",
    "temperature",
    "feature_modules",
    "recalibrate_bn",
    "loss",
    "learn_thresholds",
    "importance",
    "allocation",
    "damp",
    "blocksize",
    "sequential",
    "refit_init",
    "keep_start",
    "refit_rank",
    "refit_samples",
    "start_samples",
    "freeze_masks_at",
    "memory_format",
    "teacher_precision",
    "time_budget_s",
)

#: The flags of :data:`METHOD_FLAGS` whose name is not the field's (``--time-budget`` sets ``time_budget_s``).
FLAG_NAMES = {"time_budget_s": "--time-budget"}


def flag_name(field: str) -> str:
    """The command-line flag that sets config field ``field``.

    >>> flag_name("lr_weight"), flag_name("time_budget_s")
    ('--lr-weight', '--time-budget')
    """
    return FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _add_model_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="built-in name (refcnn, refvit, refmobile, efficientnet_lite1, efficientnet_lite2, minilm), "
        "torchvision:NAME, timm:NAME, hf:DIR, path/to/file.py:factory or package.module:factory",
    )
    p.add_argument("--weights", help="weights file (safetensors, or a torch.save state dict; never unpickled)")
    p.add_argument(
        "--weights-map",
        choices=KEY_MAPS.names(),
        help="--weights names its tensors differently (another implementation of the architecture): "
        "order pairs the file's entries with the model's by position, checking every shape",
    )
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


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``fcpts: error: ...``, and exit status 2.

    argparse prints the whole usage (dozens of lines for ``prune``) before the message; ``--help``
    still shows it.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fcpts: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fcpts`` parser: ``prune``, ``eval``, ``demo``, ``methods``, ``export``."""
    parser = OneLineParser(prog="fcpts", description="Fast and controllable post-training sparsity.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prune(sub.add_parser("prune", help="prune a model to an exact global sparsity"))
    _add_eval(sub.add_parser("eval", help="accuracy and sparsity of a model on a dataset"))
    _add_demo(
        sub.add_parser(
            "demo", help="prune the reference CNN on Fashion-MNIST: dense, magnitude, the best one-shot, fcpts"
        )
    )
    sub.add_parser("methods", help="list the pruning methods")
    _add_export(
        sub.add_parser("export", help="export a pruned model (a prune output directory) as dense, compressed or onnx")
    )
    return parser


def _add_prune(p: argparse.ArgumentParser) -> None:
    _add_model_data_args(p)
    p.add_argument("--sparsity", type=float, help="global target sparsity in (0, 1) (default with --pattern N:M: N/M)")
    p.add_argument(
        "--pattern",
        metavar="N:M|1xB",
        help="semi-structured sparsity: N zeros in every M consecutive input weights (e.g. 2:4); or 1xB "
        "(e.g. 1x4, 1x8): weights pruned in aligned blocks of B consecutive input weights, at --sparsity "
        "(the cpu-block kernel runs them); layers whose input size does not divide by M (B) stay dense",
    )
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--eval-data", metavar="SPEC", help="evaluate on this held-out data spec (e.g. text:eval.txt)")
    p.add_argument("--method", default="fcpts", choices=METHODS.names(), help="default: fcpts")
    p.add_argument("--calib-samples", type=int, default=4096, help="calibration samples (default: 4096)")
    p.add_argument(
        "--eval-samples",
        type=int,
        metavar="N",
        help="evaluate on the first N held-out samples (default: all of them; a classifier's fidelity "
        "to the dense model, on data whose labels are not its classes, reads the first 1000)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="calibration batch (default: 64; fcpts's learning batch: 64 from an allocation start, 16 from a "
        "one-shot start)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--no-retain-heap",
        action="store_true",
        help="let glibc return freed memory to the system during the run (default: kept for reuse, "
        "which spares a large model's steps their page faults)",
    )
    p.add_argument(
        "--memory-format",
        choices=MEMORY_FORMATS,
        help="hold the model (and fcpts's image batches) in this memory format while pruning "
        "(default: auto: channels_last for a model with Conv2d, else contiguous)",
    )
    _add_fcpts_options(p.add_argument_group("fcpts options"))
    _add_score_options(
        p.add_argument_group("score-based method options (wanda, sparsegpt, pot; --importance also fcpts)")
    )
    _add_checkpoint_options(p.add_argument_group("checkpoints (fcpts)"))


def _add_fcpts_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--iters", type=int, help=f"learning iterations (default: {FCPTSConfig.iters})")
    g.add_argument(
        "--lr-weight",
        type=float,
        help=f"kept-weight learning rate, 0 freezes (default: {ALLOCATION_LR_WEIGHT:g} from an allocation, "
        f"{ONESHOT_LR_WEIGHT:g} from a one-shot start)",
    )
    g.add_argument("--lr-threshold", type=float, help=f"threshold learning rate (default: {FCPTSConfig.lr_threshold})")
    _add_start_options(g)
    g.add_argument(
        "--threshold-grad",
        choices=THRESHOLD_GRADS,
        help="how the reconstruction loss reaches the thresholds: surrogate (default), ste (straight-through: "
        "the pruned weights near t learn too and can grow back), none",
    )
    g.add_argument(
        "--density",
        choices=DENSITIES.names(),
        help=f"density behind ds/dt (default: {FCPTSConfig.density})",
    )
    g.add_argument(
        "--control-weight", type=float, help=f"λ of the control loss (default: {FCPTSConfig.control_weight})"
    )
    g.add_argument("--temperature", type=float, help="distillation temperature (default: 1)")
    g.add_argument(
        "--loss",
        choices=("auto", *RECONSTRUCTION_LOSSES),
        help="reconstruction loss on the outputs (default: auto: kl for logits, cosine for embeddings, "
        "detection for a torchvision detector)",
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
    _add_loop_options(g)
    _add_refit_and_freeze_options(g)


def _add_start_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--init",
        choices=["auto", *ALLOCATIONS.names(), *oneshot_methods()],
        metavar="auto|RULE|METHOD",
        help=f"initial allocation ({', '.join(ALLOCATIONS.names())}), or a one-shot method to start from: its "
        f"masks and weights ({', '.join(oneshot_methods())}); default auto: erk, or pot with --allocation lamp "
        "when the time budget affords fewer than half the --iters steps",
    )
    g.add_argument(
        "--start-samples",
        type=int,
        metavar="N",
        help=f"calibration samples a one-shot start reads, 0 all (default: {FCPTSConfig.start_samples})",
    )


def _add_loop_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--bandwidth-update",
        choices=CHOICES["bandwidth_update"],
        help="KDE bandwidths recomputed every step or fixed once at the start "
        f"(default: {FCPTSConfig.bandwidth_update})",
    )
    g.add_argument(
        "--lr-schedule",
        choices=CHOICES["lr_schedule"],
        help=f"kept-weight learning rate: a cosine decay to 0 or constant (default: {FCPTSConfig.lr_schedule})",
    )
    g.add_argument(
        "--sampling",
        choices=CHOICES["sampling"],
        help=f"calibration batches: shuffled epochs or drawn with replacement (default: {FCPTSConfig.sampling})",
    )


def _add_refit_and_freeze_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--refit-init",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fcpts: refit the kept weights layer by layer (POT's least squares) before learning (default: off)",
    )
    g.add_argument(
        "--keep-start",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with a one-shot --init: return its result if learning ends with a higher reconstruction loss "
        "on the calibration data (default: on)",
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
    g.add_argument(
        "--time-budget",
        dest="time_budget_s",
        type=_duration,
        metavar="DURATION",
        help="finish the whole fcpts run within this wall time (90s, 10m, 1h or seconds; default: 10m): the first "
        "steps are timed and --iters becomes the most steps that fit (at most --iters; a resume keeps the "
        "checkpoint's); none: exactly --iters steps, however long",
    )
    g.add_argument(
        "--teacher-precision",
        choices=TEACHER_PRECISIONS,
        help="the teacher's no-grad forward and cached outputs: float32 (default) or bfloat16 (autocast)",
    )


def _add_score_options(o: argparse._ArgumentGroup) -> None:
    o.add_argument("--importance", choices=IMPORTANCES.names(), help="importance score (fcpts default: magnitude)")
    o.add_argument(
        "--allocation",
        choices=ALLOCATIONS.names(),
        help="per-layer sparsities (default: uniform); fcpts: of the one-shot method its --init names "
        "(or --init auto starts from; default there: lamp)",
    )
    o.add_argument("--damp", type=float, help="sparsegpt/pot: relative Hessian dampening (default: 0.01)")
    o.add_argument("--blocksize", type=int, help="sparsegpt: columns per block (default: 128)")
    o.add_argument(
        "--sequential",
        action=argparse.BooleanOptionalAction,
        help="wanda, owl-wanda: each layer's input norms on the model whose earlier layers are already pruned, "
        "layer after layer in forward order (the reference code for language models); default --no-sequential: "
        "all from one pass of the dense model (the reference code for image classifiers)",
    )


def _add_checkpoint_options(c: argparse._ArgumentGroup) -> None:
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


def _add_eval(e: argparse.ArgumentParser) -> None:
    _add_model_data_args(e)
    e.add_argument("--limit", type=int, help="evaluate on the first N samples only")
    e.add_argument(
        "--sparse-inference",
        action="store_true",
        help="run pruned layers with sparse (CSR) kernels where a timing on the first batch says they are faster",
    )


def _add_demo(d: argparse.ArgumentParser) -> None:
    d.add_argument("--sparsity", type=float, default=0.9)
    d.add_argument("--iters", type=int, default=FCPTSConfig.iters)
    d.add_argument("--calib-samples", type=int, default=4096)
    d.add_argument("--data-dir")
    d.add_argument("--device", default="cpu")
    d.add_argument("--seed", type=int, default=0)


def _add_export(x: argparse.ArgumentParser) -> None:
    x.add_argument("dir", help="output directory of fcpts prune (model.safetensors, report.json)")
    x.add_argument(
        "--format",
        required=True,
        choices=FORMATS.names(),
        help="dense, compressed, compressed-tensors (hf: models) or onnx",
    )
    x.add_argument("--out", required=True, help="export directory (written atomically); fcpts.load(OUT) reads it")
    x.add_argument(
        "--input-shape", type=_shape, metavar="C,H,W", help="input shape without batch, for onnx (refcnn: 1,28,28)"
    )
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty export directory")
    x.add_argument(
        "--trust-model-code",
        action="store_true",
        help="allow the model spec recorded in DIR to import and run code (file.py:factory, module:factory); "
        "never for a directory you did not make",
    )


def _duration(text: str) -> float:
    """Seconds of a ``--time-budget``; ``none`` is infinity, which the command turns into no budget (None)."""
    if text.strip().lower() == "none":
        return math.inf
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes like 1,28,28, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return shape
