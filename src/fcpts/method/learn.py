"""FCPTS (Gong et al., AAAI 2024) in one file: losses, the learning loop, and the method.

    L = L_rec(teacher(x), student(x)) + λ · |S(t) − S*|

* every prunable layer has one threshold ``t_l``; its mask is ``|W_l| > t_l`` (:mod:`fcpts.sparsify`);
* ``S(t) = Σ n_l s_l(t_l) / Σ n_l`` is exact in value, and differentiable through the KDE bridge
  ``ds_l/dt_l = p̂_l(t_l)`` (:mod:`fcpts.bridge`), so the control loss moves the thresholds;
* ``L_rec``: KL divergence with temperature between the dense teacher's and the sparse student's
  logits (``loss="kl"``), or, for a model whose output holds embeddings rather than logits (a
  sentence encoder, ``last_hidden_state``), ``1 − cosine`` (``"cosine"``) or MSE (``"mse"``) on the
  output vectors; ``"auto"`` chooses kl or cosine by the output kind. Plus optional MSE on chosen
  intermediate modules (block-wise feature matching);
* thresholds and the kept weights are optimised jointly (Adam); the reconstruction loss reaches
  the thresholds through a sigmoid surrogate of the mask (``threshold_grad``);
* for the last 10% of the steps (``freeze_masks_at``) the masks are held at finalize's exact
  global count, so the kept weights adapt to the final masks and :func:`fcpts.sparsify.finalize`
  (zero count exactly ``round(S* · N)``) changes no mask; the ablation measured it against learning
  the thresholds to the last step (README, Ablation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..api import RunOptions
from ..core import distributed
from ..core.calibration import Calibration, batch_size_of, call_model, shard
from ..core.checks import check_finite
from ..core.evaluate import output_logits
from ..errors import FcptsError
from .checkpoint import has_checkpoint, load_checkpoint, restore_checkpoint, save_checkpoint
from .config import FCPTSConfig
from .losses import RECONSTRUCTION_LOSSES, control_loss, resolve_loss
from .prepare import Prepared, exact_keep_masks


class _FeatureTap:
    """Forward hooks that record the outputs of the named modules of one model (removed on close)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise FcptsError(f"feature_modules not found in the model: {', '.join(missing)}")
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[name] = output_logits(output)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


#: Largest teacher-output cache, in bytes, :func:`learn` keeps for tensor calibration data; above
#: it the teacher runs on every batch instead, so memory does not grow with N × output size.
#: 256 MiB holds 4096 samples of a 16k-way float32 output.
TEACHER_CACHE_BYTES = 256 * 2**20


#: How a non-finite teacher output is named in the error (the dense model is the teacher).
TEACHER_OUTPUTS = "the dense model's output on the calibration data"


@torch.no_grad()
def cache_teacher_outputs(
    teacher: nn.Module, calibration: Calibration, batch_size: int, budget_bytes: int
) -> torch.Tensor | None:
    """The teacher's outputs on every row of a tensor calibration set, on its device; None to stream.

    One sample gives the output size; the cache (preallocated: no list + concatenate peak) is
    built only if ``N × output size`` fits ``budget_bytes``.
    """
    x, device = calibration.tensor, calibration.device
    if x is None:
        return None
    probe = output_logits(call_model(teacher, x[:1].to(device)))  # (1, C...)
    if len(x) * probe[0].numel() * probe.element_size() > budget_bytes:
        return None
    cached = torch.empty((len(x), *probe.shape[1:]), dtype=probe.dtype, device=device)
    for i in range(0, len(x), batch_size):
        cached[i : i + batch_size] = output_logits(call_model(teacher, x[i : i + batch_size].to(device)))
    check_finite(cached, TEACHER_OUTPUTS)
    return cached


def learn(
    prepared: Prepared,
    teacher: nn.Module,
    calibration: Calibration,
    config: FCPTSConfig,
    options: RunOptions | None = None,
) -> list[dict[str, float]]:
    """Minimise ``L_rec + L_c`` over thresholds and kept weights; returns the per-step loss history.

    **Data parallel.** Inside an initialised process group (``torchrun``, or your own
    ``init_process_group``), ``config.batch_size`` is the *global* batch: every rank reads the same
    global batch and computes on its own contiguous shard of it (``batch_size / world_size``
    samples; shard sizes differ by at most one), and each rank's gradients, weighted by its share of
    the batch, are summed over the ranks before every step (:mod:`fcpts.distributed`). Every rank
    thus takes the step one process takes on the whole batch (equal up to float rounding: the sums
    run in another order) and all ranks end with identical thresholds and weights. The data and the
    model must be the same on every rank; rank 0's weights are broadcast at the start and the end.

    **Checkpoints.** With ``options.checkpoint_every = N`` the training state (step, student with
    thresholds, optimizer, scheduler, RNG, history) goes to ``options.checkpoint_dir`` every N steps
    (by rank 0); ``options.resume`` continues from it and reaches the same result, bit for bit, as
    an uninterrupted run with the same options (:mod:`fcpts.checkpoint`).
    """
    options = RunOptions() if options is None else options
    student = prepared.model
    teacher.eval().requires_grad_(False)
    student.eval()  # BatchNorm uses the dense running statistics; the kept weights adapt to them
    thresholds = prepared.threshold_parameters()
    for p in thresholds:
        p.requires_grad_(config.learn_thresholds)
    if not config.learn_thresholds:
        # A fixed allocation: hold the initial masks, so that the kept weights learning cannot move
        # weights across the (fixed) thresholds. Before a resume restores the learned weights, so
        # a resumed run freezes the same masks.
        for layer in prepared.layers:
            layer.mask.freeze(layer.weight)
    threshold_ids = {id(p) for p in thresholds}
    weights = [p for p in student.parameters() if p.requires_grad and id(p) not in threshold_ids]
    if config.lr_weight <= 0:
        weights = []
    # Thresholds keep a constant rate to track the target to the end; the weights decay (cosine) to 0.
    groups, schedules = [], []
    if config.learn_thresholds:
        groups.append({"params": thresholds, "lr": config.lr_threshold})
        schedules.append(lambda i: 1.0)
    if weights:
        groups.append({"params": weights, "lr": config.lr_weight})
        schedules.append(lambda i: 0.5 * (1 + math.cos(math.pi * i / config.iters)))
    if not groups or config.iters == 0:
        return []
    if options.checkpoint_every and not options.resume and has_checkpoint(options.checkpoint_dir):  # type: ignore[arg-type]
        raise FcptsError(
            f"{options.checkpoint_dir} already holds a checkpoint: resume it (--resume) or choose another directory"
        )
    rank, world = distributed.rank(), distributed.world_size()
    if config.batch_size < world:
        raise FcptsError(f"batch_size {config.batch_size} (the global batch) is smaller than the {world} processes")
    # Every rank starts from rank 0's model (one built without a fixed seed differs between processes).
    distributed.broadcast_module(student)
    distributed.broadcast_module(teacher)
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    # Parameters outside the optimizer need no gradient; their flags are restored at the end.
    flags = [(p, p.requires_grad) for p in student.parameters()]
    trained = {id(p) for g in groups for p in g["params"]}
    for p, _ in flags:
        p.requires_grad_(id(p) in trained)
    teacher_tap = _FeatureTap(teacher, config.feature_modules)
    student_tap = _FeatureTap(student, config.feature_modules)
    # Without feature matching, the teacher's outputs on a tensor calibration set are computed
    # once (N, C) instead of once per step: a quarter of the step time on the reference CNN.
    # Only while they fit TEACHER_CACHE_BYTES; otherwise (and for streamed data) once per batch.
    reconstruction = None  # chosen from the student's first output (logits or embeddings: the "auto" loss)
    cached = None
    if calibration.tensor is not None and not config.feature_modules:
        cached = cache_teacher_outputs(teacher, calibration, config.batch_size, TEACHER_CACHE_BYTES)
    history: list[dict[str, float]] = []
    start = 0
    # The step that freezes the masks (none with fixed masks; at iters or beyond: never reached).
    freeze_step = math.ceil(config.freeze_masks_at * config.iters) if config.learn_thresholds else None
    if options.resume:
        state = load_checkpoint(options.checkpoint_dir, config.to_dict())  # type: ignore[arg-type]
        start, history = restore_checkpoint(state, student, optimizer, scheduler)
        if state.get("frozen_masks") is not None:  # frozen before the checkpoint: the masks of then
            _hold_masks(prepared, thresholds, state["frozen_masks"])
    trained_params = [p for g in groups for p in g["params"]]
    stream = calibration.stream(start_step=start)
    progress = options.progress and distributed.is_main()
    try:
        steps = range(start, config.iters)
        # disable=None: tqdm hides the bar when stderr is not a terminal (CI logs, pipes).
        disable = None if progress else True
        for step in tqdm(steps, desc="fcpts", initial=start, total=config.iters, disable=disable, leave=False):
            if step == freeze_step:  # allocation learned: the remaining steps only reconstruct
                _hold_masks(prepared, thresholds)
            # The weights changed in the last step: every learning layer's KDE bandwidth at once,
            # before the forward pass's surrogate masks and the bridge read them.
            prepared.refresh_bandwidths()
            inputs, index = next(stream)
            total = batch_size_of(inputs)
            if world > 1:  # this rank's shard of the global batch
                if total < world:
                    raise FcptsError(f"a calibration batch of {total} samples cannot be split over {world} processes")
                inputs, index = shard(inputs, rank, world), shard(index, rank, world)
            share = batch_size_of(inputs) / total
            if cached is not None and index is not None:
                target_logits = cached[index.to(cached.device)]
            else:
                with torch.no_grad():
                    target_logits = output_logits(call_model(teacher, inputs))
                check_finite(target_logits, TEACHER_OUTPUTS)
            output = call_model(student, inputs)
            if reconstruction is None:
                reconstruction = RECONSTRUCTION_LOSSES[resolve_loss(config.loss, output)]
            rec = reconstruction(output_logits(output), target_logits, config.temperature)
            feat = sum(
                (
                    F.mse_loss(student_tap.outputs[n].float(), teacher_tap.outputs[n].float())
                    for n in config.feature_modules
                ),
                torch.zeros((), device=rec.device),
            )
            sparsity = prepared.global_sparsity()
            ctrl = control_loss(sparsity, config.target_sparsity, config.control_loss)
            loss = rec + config.feature_weight * feat + config.control_weight * ctrl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_gradients(trained_params, share)
            optimizer.step()
            scheduler.step()
            # The logged losses are the global batch's (weighted sum over ranks, as for the gradients).
            stats = torch.stack([loss.detach(), rec.detach(), feat.detach()]).float() * share
            loss_value, rec_value, feat_value = distributed.all_reduce_sum_(stats).tolist()
            history.append(
                {"step": step, "loss": loss_value, "rec": rec_value, "feature": feat_value, "sparsity": sparsity.item()}
            )
            if options.checkpoint_every and (step + 1) % options.checkpoint_every == 0 and distributed.is_main():
                save_checkpoint(
                    options.checkpoint_dir,  # type: ignore[arg-type]
                    step + 1,
                    student,
                    optimizer,
                    scheduler,
                    history,
                    config.to_dict(),
                    _frozen_masks(prepared),
                )
        # Identical on every rank whatever the backend's reduction order: rank 0's result for all.
        distributed.broadcast_module(student)
    finally:
        teacher_tap.close()
        student_tap.close()
        for p, flag in flags:
            p.requires_grad_(flag)
    return history


def _hold_masks(prepared: Prepared, thresholds: list[nn.Parameter], masks: list[torch.Tensor] | None = None) -> None:
    """Freeze every layer's mask at the exact target count, or at ``masks`` (a checkpoint's); t stops learning.

    The exact count is finalize's (:func:`fcpts.sparsify.exact_keep_masks`): the remaining steps
    reconstruct under the final masks, and finalize then changes no mask.
    """
    masks = exact_keep_masks(prepared) if masks is None else masks
    for layer, keep in zip(prepared.layers, masks, strict=True):
        layer.mask.frozen_keep = keep.to(layer.weight.device)
    for p in thresholds:
        p.requires_grad_(False)
        p.grad = None  # Adam skips a parameter without a gradient


def _frozen_masks(prepared: Prepared) -> list[torch.Tensor] | None:
    """Every layer's frozen mask, or None while the masks still follow the thresholds."""
    masks = [layer.mask.frozen_keep for layer in prepared.layers]
    return None if any(m is None for m in masks) else masks  # type: ignore[return-value]
