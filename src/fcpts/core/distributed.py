"""Data parallelism over the calibration set: small helpers over :mod:`torch.distributed`.

fcpts runs data-parallel whenever the default process group is initialised (by ``torchrun`` through
the CLI, or by your own ``torch.distributed.init_process_group`` around :func:`fcpts.prune`). Every
rank holds the whole model and the whole calibration set, starts from rank 0's weights, computes on
its own shard of every global batch, and sums the gradients over the ranks (each weighted by its
share of the batch) before every optimizer step: all ranks take the same step, the one a single
process would take on the whole batch, and end with the same thresholds and masks.

Without a process group (or with one process) every helper is a no-op, so the learning loop calls
them unconditionally.

>>> is_initialized(), rank(), world_size(), is_main()
(False, 0, 1, True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import FcptsError


def is_initialized() -> bool:
    """Whether the default process group exists (``torch.distributed`` built and initialised)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes in the default group; 1 without one."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that prints, evaluates and writes files."""
    return rank() == 0


def launched() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` > 1).

    >>> launched()  # a plain process
    False
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; return this rank's device.

    A no-op (``device`` returned as is) when ``WORLD_SIZE`` is unset or 1, or a group already exists.
    The backend is gloo for a CPU device and nccl for CUDA; ``cuda`` without an index becomes
    ``cuda:$LOCAL_RANK`` (one GPU per process).

    >>> init_from_env(torch.device("cpu"))  # a plain process: nothing to join
    device(type='cpu')
    """
    if not launched() or is_initialized():
        return device
    if not dist.is_available():
        raise FcptsError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "gloo"
    if device.type == "cuda":
        backend = "nccl"
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, init_method="env://")
    except (RuntimeError, ValueError) as exc:
        raise FcptsError(f"cannot join the {backend} process group described by the environment: {exc}") from exc
    return device


def shutdown(failed: bool = False) -> None:
    """Leave the default process group if there is one (the CLI's counterpart of :func:`init_from_env`).

    The ranks first wait for each other: a rank that tears down its group and exits while a peer
    still works (rank 0 writing the outputs) can abort at exit in gloo's C++ teardown. After a
    failure the ranks have already met in :func:`all_or_none` (or a peer is gone): no barrier,
    which would wait for a peer that never comes.
    """
    if is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


class PeerFailure(FcptsError):
    """Raised on every other rank when one rank of the job failed; the message is that rank's."""


@contextlib.contextmanager
def all_or_none() -> Iterator[None]:
    """Run a block without collectives; then every rank learns whether any rank failed in it.

    The block's error is re-raised on its own rank, and a :class:`PeerFailure` carrying that message
    on every other rank, so no rank goes on to a collective that a failed peer never joins (which
    would hang until the backend's timeout). One ``all_gather_object`` per use: for stage
    boundaries and rank-0-only work (writing checkpoints and outputs), not for every step.
    """
    error: BaseException | None = None
    try:
        yield
    except Exception as exc:
        error = exc
    if world_size() > 1:
        messages: list[str | None] = [None] * world_size()
        dist.all_gather_object(messages, None if error is None else str(error) or type(error).__name__)
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed and error is None:
            r, message = failed[0]
            raise PeerFailure(f"rank {r}: {message}")
    if error is not None:
        raise error


def _groups(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` grouped by (dtype, device), so that each group travels as one flat tensor."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def _copy_from_flat(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Write consecutive slices of ``flat`` back into ``tensors`` (in place, bumping their versions)."""
    for t, part in zip(tensors, torch.split(flat, [t.numel() for t in tensors]), strict=True):
        t.copy_(part.view_as(t))


@torch.no_grad()
def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (in place, on every rank) with rank ``src``'s values.

    One collective per dtype and device instead of one per tensor. ``copy_`` (not a write through
    ``.data``) bumps each tensor's version counter, so caches keyed on it see the change.
    """
    if world_size() == 1:
        return
    for group in _groups(tensors):
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        # Not every backend carries bool; one byte per value travels everywhere.
        wire = flat.to(torch.uint8) if flat.dtype == torch.bool else flat
        dist.broadcast(wire, src)
        _copy_from_flat(wire.to(flat.dtype), group)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every rank's ``module`` hold rank ``src``'s parameters and buffers.

    Used at the start (a model built without a fixed seed differs between processes) and at the end
    of learning (so the thresholds and masks are identical whatever the backend's reduction order).
    """
    broadcast_tensors([*module.parameters(), *module.buffers()], src)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place; returns it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def all_reduce_gradients(params: Sequence[torch.Tensor], weight: float) -> None:
    """Replace each parameter's gradient with ``Σ_r weight_r · grad_r`` over the ranks ``r``.

    ``weight`` is this rank's share of the global batch (its samples / the global batch size): the
    result is then the gradient of the loss averaged over the global batch, as one process computes
    it, and a term every rank computes identically (the control loss) keeps its value because the
    shares sum to 1. A parameter without a gradient on some ranks counts as zero there; one without
    a gradient on every rank keeps none, so Adam skips it as it would in one process.
    """
    if world_size() == 1 or not params:
        return
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    all_reduce_sum_(has_grad)
    reduced = []
    for p, count in zip(params, has_grad.tolist(), strict=True):
        if count == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        reduced.append(p.grad)
    for group in _groups(reduced):
        flat = torch.cat([g.reshape(-1) for g in group]).mul_(weight)
        _copy_from_flat(all_reduce_sum_(flat), group)
