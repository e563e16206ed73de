"""The one-call API: :func:`prune`, its result, the shared method settings, the run options and
the method registry.

A method's settings (:class:`PruneConfig` and its subclasses) decide the result; the
:class:`RunOptions` (device, progress bar, checkpoints) decide how the run executes, not what it
computes. Methods register themselves with :func:`register_method` in their own modules
(:mod:`fcpts.method`, :mod:`fcpts.baselines`); :func:`prune` dispatches on the config's ``method``
name and never modifies the model it is given: it prunes a copy.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .core import distributed
from .core.calibration import Calibration, CalibrationData, check_fits
from .core.checks import validate_target
from .core.evaluate import layer_sparsity
from .core.heap import retained_heap
from .core.layers import LayerFilter, default_layer_filter
from .core.memory_format import MEMORY_FORMATS, held_in, resolve_memory_format
from .core.patterns import block_of, parse_pattern
from .errors import FcptsError
from .models import detection
from .registry import Registry


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, with one clear error for a malformed or unavailable device.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FcptsError(f"invalid device {device!r}: expected cpu, cuda, cuda:N, ...") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FcptsError(f"device {device!r} requested but CUDA is not available in this PyTorch build or machine")
    return dev


@dataclass
class PruneConfig:
    """Options every method shares.

    ``layer_filter(name, module)`` chooses the prunable layers (default: Conv1d/2d/3d, Linear).
    ``seed`` fixes every random choice: same seed and inputs give identical masks. Where and how
    the run executes (device, progress, checkpoints) is :class:`RunOptions`, not part of the config.
    ``pattern`` ``"N:M"``: semi-structured sparsity, N zeros in every M consecutive input weights
    (:mod:`fcpts.patterns`); ``target_sparsity`` must then be N/M. Layers whose input size does not
    divide by M stay dense, so the global sparsity is N/M of the layers that divide. ``"1xB"``:
    weights pruned in aligned blocks of B consecutive input weights (the ``cpu-block`` kernel's
    format) at ``target_sparsity``; layers whose input size does not divide by B stay dense, and
    the target (exactly ``B·round(S*·N/B)`` zeros) applies to the N weights of the layers that divide.
    ``memory_format``: the layout the model is held in while the method runs (its forwards, and
    fcpts's steps): ``"auto"`` is channels_last for a model with a Conv2d (:mod:`fcpts.core.memory_format`).
    """

    target_sparsity: float
    layer_filter: LayerFilter = default_layer_filter
    batch_size: int = 64
    seed: int = 0
    pattern: str | None = None
    memory_format: str = "auto"  # "auto" (channels_last for a model with Conv2d), "contiguous", "channels_last"

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        validate_target(self.target_sparsity)
        if self.pattern is not None and block_of(self.pattern) is None:
            n, m = parse_pattern(self.pattern)
            if self.target_sparsity != n / m:
                raise FcptsError(f"pattern {self.pattern} means sparsity {n / m:g}, not {self.target_sparsity:g}")
        if self.calibration_batch < 1:
            raise FcptsError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.memory_format not in MEMORY_FORMATS:
            raise FcptsError(f"memory_format must be one of {MEMORY_FORMATS}, got {self.memory_format!r}")

    @property
    def calibration_batch(self) -> int:
        """The batch size of the calibration stream the method is handed (``batch_size``)."""
        return self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view of the config (callables by name), for reports."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if callable(value):
                value = getattr(value, "__qualname__", repr(value))
            elif isinstance(value, torch.device):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


#: Steps between checkpoints when a checkpoint directory is given without an interval.
DEFAULT_CHECKPOINT_EVERY = 100


@dataclass
class RunOptions:
    """How a run executes, apart from what it computes (the method's config).

    ``device``: where the model and the calibration batches live (``"cpu"``, ``"cuda"``, ``"cuda:1"``);
    ``progress``: a progress bar while learning; ``checkpoint_dir`` / ``checkpoint_every`` /
    ``resume``: fcpts saves its training state every N steps and continues from it, bit for bit
    (:mod:`fcpts.method.checkpoint`). A checkpoint can be resumed with other run options.
    ``retain_heap``: glibc keeps freed memory for reuse during the run instead of faulting it in
    again every step (:mod:`fcpts.core.heap`; a process-wide setting, undone when the run ends).

    >>> RunOptions().device
    device(type='cpu')
    """

    device: str | torch.device = "cpu"
    progress: bool = False
    checkpoint_dir: str | None = None  # where learn() keeps checkpoint.pt (replaced atomically)
    checkpoint_every: int | None = None  # steps between checkpoints (default: 100, or the resumed checkpoint's)
    resume: bool = False  # continue from the checkpoint in checkpoint_dir: same config, same result
    #: Freed memory stays in the heap while the run lasts (glibc; :mod:`fcpts.core.heap`): SparseGPT
    #: and POT run 1.7× faster on a 240×240 CNN, and fcpts's budget buys 1.9× the steps.
    retain_heap: bool = True
    #: What the run reads (model spec, weights and data hashes...): recorded in a checkpoint, and a
    #: resume on other inputs is refused. :func:`prune` adds the model's and the calibration data's hashes.
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.device)
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise FcptsError(f"checkpoint_every must be ≥ 1 (omit it for the default), got {self.checkpoint_every}")
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        elif self.checkpoint_every is not None or self.resume:
            raise FcptsError("checkpoint_every and resume need a checkpoint_dir")


@dataclass
class LayerResult:
    name: str
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel


@dataclass
class PruneResult:
    """What :func:`prune` returns: the pruned plain model and how it got there."""

    model: nn.Module
    method: str
    target_sparsity: float
    layers: list[LayerResult]
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers)

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def global_sparsity(self) -> float:
        return self.zeros / self.numel

    @property
    def layer_sparsity(self) -> dict[str, float]:
        return {layer.name: layer.sparsity for layer in self.layers}


class History(list):  # type: ignore[type-arg]
    """A method's per-step loss history, and facts of the run for :attr:`PruneResult.config` (``run``).

    E.g. the ``iters`` a time budget chose: :func:`prune` records ``run`` over the config's own fields.

    >>> h = History([{"step": 0}], run={"iters": 1})
    >>> h, h.run
    ([{'step': 0}], {'iters': 1})
    """

    def __init__(self, entries: Any = (), run: dict[str, Any] | None = None) -> None:
        super().__init__(entries)
        self.run: dict[str, Any] = dict(run or {})


MethodFn = Callable[[nn.Module, Calibration, Any, RunOptions], list[dict[str, float]]]


@dataclass(frozen=True)
class Method:
    """A registered method: ``run(model, calibration, config, options)`` prunes ``model`` in place.

    ``run`` returns the loss history (empty for one-shot methods).
    """

    name: str
    config_cls: type[PruneConfig]
    run: MethodFn
    defaults: dict[str, Any]
    description: str
    checkpoints: bool = False  # run() honours RunOptions' checkpoints (saves and resumes)


#: Method name → :class:`Method` (:func:`register_method`).
METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, config_cls: type[PruneConfig], description: str = "", *, checkpoints: bool = False, **defaults: Any
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: register ``fn(model, calibration, config, options) -> history`` as method ``name``.

    ``defaults`` are the config fields that define this method (e.g. ``allocation="erk"``);
    ``checkpoints``: the method saves and resumes its state through :class:`RunOptions`.
    """

    def decorate(fn: MethodFn) -> MethodFn:
        summary = description or (fn.__doc__ or "").split("\n")[0]
        METHODS.register(name, Method(name, config_cls, fn, defaults, summary, checkpoints))
        return fn

    return decorate


def make_config(method: str, **options: Any) -> PruneConfig:
    """The config for a registered method name, with ``options`` on top of its defaults.

    >>> import fcpts
    >>> make_config("erk-magnitude", target_sparsity=0.8).allocation
    'erk'
    """
    entry = METHODS.get(method)
    return entry.config_cls(**{**entry.defaults, **options})


def _digest(tensors: list[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of named tensors' bytes (names, shapes and dtypes included), first 16 hex digits."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(model: nn.Module, calibration_data: CalibrationData) -> dict[str, str]:
    """Hashes of the model's weights and of the calibration data (a tensor or dict of tensors; else none)."""
    prints = {"model weights": _digest(list(model.state_dict().items()))}
    if isinstance(calibration_data, torch.Tensor):
        prints["calibration data"] = _digest([("x", calibration_data)])
    elif isinstance(calibration_data, dict):
        prints["calibration data"] = _digest(sorted(calibration_data.items()))
    return prints


def prune(
    model: nn.Module, calibration_data: CalibrationData, config: PruneConfig, options: RunOptions | None = None
) -> PruneResult:
    """Prune a copy of ``model`` to exactly ``config.target_sparsity`` with the config's method.

    ``calibration_data``: a tensor ``(N, ...)`` of unlabeled inputs, a Dataset or a DataLoader;
    ``options``: device, progress and checkpoints (default: CPU, quiet, no checkpoints).
    Called on every rank of an initialised process group (same model and data everywhere), the
    learning is data-parallel and every rank returns the same result (see :func:`fcpts.learn`).

    >>> import torch, fcpts
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> result = fcpts.prune(net, torch.randn(64, 8), fcpts.FCPTSConfig(target_sparsity=0.75, iters=20))
    >>> result.zeros, result.numel, result.global_sparsity
    (144, 192, 0.75)
    """
    options = RunOptions() if options is None else options
    entry = METHODS.get(config.method)
    start = time.perf_counter()
    # A torchvision detector is pruned on its raw head outputs (models.detection), and returned as itself.
    student = copy.deepcopy(detection.wrap(model)).to(options.device)
    # In a process group every rank prunes rank 0's model, so all ranks return the same result.
    distributed.broadcast_module(student)
    if options.checkpoint_dir is not None:  # a resume must read the same model and data
        prints = {**options.fingerprint, **fingerprint(student, calibration_data)}
        options = dataclasses.replace(options, fingerprint=prints)
    calibration = Calibration(calibration_data, config.calibration_batch, config.seed, options.device)
    check_fits(student.eval(), calibration.first())
    fmt = resolve_memory_format(student, config.memory_format)
    with retained_heap(options.retain_heap), held_in(student, fmt):
        history = entry.run(student, calibration, config, options)
    student = detection.unwrap(student).eval()
    wall = time.perf_counter() - start
    layers = [LayerResult(n, numel, z) for n, (z, numel) in layer_sparsity(student, config.layer_filter).items()]
    recorded = {**config.to_dict(), **getattr(history, "run", {})}  # e.g. the iters a time budget chose
    return PruneResult(student, config.method, config.target_sparsity, layers, list(history), wall, recorded)
