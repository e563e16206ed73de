"""Checkpoints of a learning run: save the training state atomically, load it back, resume exactly.

A checkpoint is one file, ``<dir>/checkpoint.pt``, replaced atomically (written to a temporary
file beside it, then ``os.replace``): a run killed while saving leaves the previous checkpoint
intact. It holds the number of completed steps, the student's state dict (with the parametrization
``original`` weights and the log thresholds), the optimizer and scheduler states, the RNG states,
the loss history so far and the config. It is read with ``torch.load(weights_only=True)``: tensors,
numbers, strings, lists and dicts only; nothing is ever unpickled.

The calibration batches need no saved state: :meth:`fcpts.core.calibration.Calibration.stream` recomputes
the batch at any position from the seed.

>>> import tempfile
>>> net = nn.Linear(2, 2)
>>> opt = torch.optim.Adam(net.parameters())
>>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
>>> d = tempfile.mkdtemp()
>>> _ = save_checkpoint(d, 3, net, opt, sched, [], {"seed": 0})
>>> has_checkpoint(d), restore_checkpoint(load_checkpoint(d, {"seed": 0}), net, opt, sched)
(True, (3, []))
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.checks import check_finite
from ..errors import FcptsError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


def checkpoint_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def has_checkpoint(directory: str | os.PathLike[str]) -> bool:
    return checkpoint_path(directory).is_file()


def _rng_state() -> dict[str, torch.Tensor]:
    """The global RNG states (CPU, and every visible GPU once CUDA is in use)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state.update({f"cuda:{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[f"cuda:{i}"] for i in range(sum(k.startswith("cuda:") for k in state))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: list[dict[str, float]],
    config: dict[str, Any],
    frozen_masks: list[torch.Tensor] | None = None,
    fingerprint: dict[str, Any] | None = None,
    every: int = 0,
) -> Path:
    """Write the training state after ``step`` completed steps to ``directory/checkpoint.pt``, atomically.

    ``frozen_masks`` (one bool tensor per layer) are masks held fixed by then: they depend on the
    weights at the moment they were frozen, so the state dict alone cannot give them back.
    ``fingerprint`` names what the run read (model, weights, data: :func:`fcpts.api.fingerprint`);
    a resume with other inputs is refused. ``every``: the checkpoint interval, kept on resume.
    """
    directory = Path(directory)
    state = {
        "format": FORMAT,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "history": history,
        "config": config,
        "frozen_masks": None if frozen_masks is None else [m.detach().cpu() for m in frozen_masks],
        "fingerprint": fingerprint or {},
        "every": every,
    }
    path = checkpoint_path(directory)
    tmp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{CHECKPOINT_NAME}.tmp-", dir=directory)
        # Serialised in memory first: torch's zip writer turns a full disk into a RuntimeError; a
        # plain write gives the system's OSError (ENOSPC, EROFS...).
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only, permissions: the previous checkpoint is intact
        raise FcptsError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


#: What a checkpoint must hold (besides ``format``), and of which type.
REQUIRED = {
    "step": int,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "rng": dict,
    "history": list,
    "config": dict,
}


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> None:
    """Remove the half-written ``.checkpoint.pt.tmp-*`` files a killed run left (one run writes a directory)."""
    for leftover in Path(directory).glob(f".{CHECKPOINT_NAME}.tmp-*"):
        leftover.unlink(missing_ok=True)


def load_checkpoint(
    directory: str | os.PathLike[str], config: dict[str, Any], fingerprint: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The state saved in ``directory``, after checking that it was made with the same ``config`` and inputs.

    ``config`` is :meth:`fcpts.api.PruneConfig.to_dict` of the run that resumes: every field must
    equal the checkpoint's (another value would make another run). The run options (device,
    progress, checkpoint interval) are not part of it and may change. ``fingerprint``: every entry
    the checkpoint also recorded must be equal (the same model, weights and calibration data).
    """
    path = checkpoint_path(directory)
    if not path.is_file():
        raise FcptsError(f"no checkpoint to resume in {directory} (expected {path})")
    remove_stale_temporaries(directory)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: unpickling errors of many kinds
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):  # not torch's paragraphs on turning the protection off
            first = "it holds Python objects that fcpts never unpickles"
        raise FcptsError(
            f"cannot read checkpoint {path} (truncated, corrupt or not an fcpts checkpoint): {first}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FcptsError(f"{path} is not an fcpts checkpoint (format {FORMAT})")
    broken = [k for k, kind in REQUIRED.items() if not isinstance(state.get(k), kind)]
    if broken:
        raise FcptsError(f"{path} is an incomplete fcpts checkpoint: no valid {', '.join(broken)}")
    _check_fingerprint(directory, state.get("fingerprint") or {}, fingerprint or {})
    _check_finite_state(path, state)
    saved = state["config"]
    changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} → {config.get(k)!r}" for k in changed)
        raise FcptsError(
            f"the checkpoint in {directory} belongs to a run with other options ({diff}); "
            "resume with the same options, or start a fresh run with another checkpoint directory"
        )
    return state


def checkpoint_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The config a checkpoint was saved with (empty if there is none or it cannot be read: the resume says why)."""
    path = checkpoint_path(directory)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # no file, or a broken one: load_checkpoint raises the one clear error
        return {}
    config = state.get("config") if isinstance(state, dict) else None
    return config if isinstance(config, dict) else {}


def _check_finite_state(path: Path, state: dict[str, Any]) -> None:
    """A NaN or Inf in the saved weights or optimizer state would make the whole resumed model NaN."""
    for name, tensor in state["model"].items():
        if isinstance(tensor, torch.Tensor):
            check_finite(tensor, f"checkpoint {path}: {name!r}")
    for i, entry in enumerate(state["optimizer"].get("state", {}).values()):
        for key, value in entry.items() if isinstance(entry, dict) else ():
            if isinstance(value, torch.Tensor):
                check_finite(value, f"checkpoint {path}: the optimizer's {key} of parameter {i}")


def _check_fingerprint(directory: str | os.PathLike[str], saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse a resume whose inputs (model, weights, calibration data) differ from the checkpoint's."""
    changed = [k for k in saved if k in now and saved[k] != now[k]]
    if changed:
        diff = ", ".join(f"{k}: {saved[k]!r} → {now[k]!r}" for k in changed)
        raise FcptsError(
            f"the checkpoint in {directory} belongs to a run on other inputs ({diff}); "
            "resume with the same model, weights and data, or start a fresh run with another checkpoint directory"
        )


def restore_checkpoint(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, list[dict[str, float]]]:
    """Put a loaded state back into the model, optimizer, scheduler and RNGs; returns (step, history)."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:  # another model or optimizer layout
        raise FcptsError(f"the checkpoint does not fit the model: {str(exc).splitlines()[0]}") from exc
    _set_rng_state(state["rng"])
    return int(state["step"]), list(state["history"])
