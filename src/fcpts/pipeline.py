"""The run pipeline: load → prune → evaluate → report → write atomically. ``fcpts prune`` is this.

:func:`run` takes a :class:`Job` (specs, not objects: what a command line names) and writes the
output directory exactly as the CLI does: ``model.safetensors``, ``report.json`` and
``allocation.png``, all or nothing. Python users who hold a model and tensors call
:func:`fcpts.prune` directly; this module is for runs that should leave a report behind.

>>> import tempfile, numpy as np, fcpts
>>> from fcpts.pipeline import Job, run
>>> tmp = tempfile.mkdtemp()
>>> np.savez(f"{tmp}/calib.npz", x=np.random.rand(64, 1, 28, 28).astype("float32"))
>>> config = fcpts.make_config("global-magnitude", target_sparsity=0.8)
>>> job = Job("refcnn", f"npz:{tmp}/calib.npz", f"{tmp}/out", config)
>>> done = run(job)
>>> done.report["global_sparsity"], sorted(p.name for p in done.out.iterdir())
(0.8, ['allocation.png', 'model.safetensors', 'report.json'])
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import PruneConfig, PruneResult, RunOptions, prune
from .core import distributed
from .core.fidelity import classifier_fidelity, model_fidelity
from .data import DataSource, Split, load_data
from .errors import FcptsError
from .evaluation import FIDELITY_SAMPLES, outputs_embeddings, split_accuracy, split_detection_map
from .files import check_output_dir
from .models import load_model, resolved_spec
from .models.detection import is_detector
from .models.zoo import load_tokenizer
from .report import build_report, write_outputs


@dataclass
class DataSettings:
    """How data specs are read: the :class:`fcpts.data.DataOptions` fields a command line sets."""

    data_dir: str | None = None  # fashion-mnist: the IDX directory
    image_size: int | None = None
    channels: int | None = None
    crop: int | None = None
    normalize: str | None = None
    max_length: int = 128
    split: str | None = None
    eval_split: str | None = None
    image_column: str | None = None
    text_column: str | None = None
    label_column: str | None = None


@dataclass
class Job:
    """One pruning run, named by specs: ``model`` and ``data`` as ``fcpts prune --model/--data`` take them."""

    model: str
    data: str
    out: str | os.PathLike[str]
    config: PruneConfig
    options: RunOptions = field(default_factory=RunOptions)
    weights: str | None = None
    weights_map: str | None = None  # how --weights' names map onto the model's (KEY_MAPS: "order")
    random_weights: bool = False
    eval_data: str | None = None  # held-out evaluation data (default: the data spec's own evaluation split)
    calib_samples: int = 4096
    eval_samples: int | None = None  # the first N held-out samples (None: all; fidelity: FIDELITY_SAMPLES)
    overwrite: bool = False
    data_settings: DataSettings = field(default_factory=DataSettings)


@dataclass
class Done:
    """What :func:`run` returns on the main process: the result, its report and where it was written."""

    result: PruneResult
    report: dict[str, Any]
    out: Path
    dense_accuracy: float | None
    sparse_accuracy: float | None
    dense_map: dict[str, float] | None = None  # detection: {"map50", "map"} (pycocotools) on the evaluation split
    sparse_map: dict[str, float] | None = None


def check_job(job: Job) -> None:
    """Every check that needs no loading: the output directory, checkpoints outside it, the sample count."""
    out = Path(job.out)
    check_output_dir(out, job.overwrite, inputs=job_inputs(job))
    checkpoints = job.options.checkpoint_dir
    if checkpoints is not None and Path(checkpoints).resolve().is_relative_to(out.resolve()):
        # The output directory is replaced as a whole at the end: checkpoints inside it would be lost.
        raise FcptsError(f"checkpoint directory {checkpoints} must be outside the output directory {out}")
    if job.calib_samples < 1:
        raise FcptsError(f"--calib-samples must be ≥ 1, got {job.calib_samples}")
    if job.eval_samples is not None and job.eval_samples < 1:
        raise FcptsError(f"--eval-samples must be ≥ 1, got {job.eval_samples}")


def job_inputs(job: Job) -> list[str]:
    """The files and directories a job reads: they must survive ``--overwrite`` of its output."""
    paths = [job.weights, job.data_settings.data_dir, job.options.checkpoint_dir]
    for spec in (job.model, job.data, job.eval_data):
        if spec:
            paths += [spec.partition(":")[2], spec.rpartition(":")[0]]  # prefix:PATH, or path.py:factory
    return [p for p in paths if p]


def job_fingerprint(job: Job) -> dict[str, Any]:
    """What a checkpoint of ``job`` records of its inputs: the specs, the weights file's hash, the sample count."""
    prints: dict[str, Any] = {
        "model spec": resolved_spec(job.model),
        "data spec": job.data,
        "calibration samples": job.calib_samples,
    }
    if job.weights:
        h = hashlib.sha256()
        with open(job.weights, "rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        prints["weights file"] = h.hexdigest()[:16]
    return prints


def load_inputs(
    model_spec: str,
    data_spec: str,
    weights: str | None = None,
    random_weights: bool = False,
    eval_data: str | None = None,
    settings: DataSettings | None = None,
    device: str | torch.device = "cpu",
    weights_map: str | None = None,
) -> tuple[nn.Module, DataSource]:
    """The model and the data of a run; ``eval_data`` replaces the data's evaluation split."""
    model = load_model(model_spec, weights, device=device, random_weights=random_weights, key_map=weights_map)
    options = dataclasses.asdict(settings or DataSettings())
    base = {k: options.pop(k) for k in ("data_dir", "image_size", "channels")}
    # The tokenizer is loaded only if the data holds text (an hf: image model may have none).
    options["tokenizer_loader"] = functools.cache(lambda: load_tokenizer(model_spec))
    data = load_data(data_spec, **base, **options)
    if eval_data:  # held-out evaluation data (e.g. text:eval.txt beside text:calib.txt)
        held_out = load_data(eval_data, **base, **options)
        data = DataSource(data.name, data.calibration, held_out.evaluation)
    return model, data


def run(job: Job) -> Done | None:
    """Run ``job`` and write its output directory; None on the other ranks of a torchrun job.

    Under torchrun (``WORLD_SIZE`` > 1) every rank joins the process group, loads the same model
    and data and learns on its shard of each batch; rank 0 alone evaluates and writes.
    """
    check_job(job)
    options = dataclasses.replace(job.options, device=distributed.init_from_env(job.options.device))
    failed = True
    try:
        done = _run(job, options)
        failed = False
        return done
    finally:
        distributed.shutdown(failed)


def _run(job: Job, options: RunOptions) -> Done | None:
    # Every stage either succeeds on all ranks or fails on all of them (distributed.all_or_none).
    with distributed.all_or_none():
        model, data = load_inputs(
            job.model,
            job.data,
            job.weights,
            job.random_weights,
            job.eval_data,
            job.data_settings,
            options.device,
            job.weights_map,
        )
        calibration = data.calibration.subset(job.calib_samples, job.config.seed)
        if job.eval_samples is not None:
            data = dataclasses.replace(data, evaluation=data.evaluation.first(job.eval_samples))
    if options.checkpoint_dir is not None:  # a resume must read the same inputs (prune adds the data's hash)
        options = dataclasses.replace(options, fingerprint={**options.fingerprint, **job_fingerprint(job)})
    result = prune(model, calibration.x, job.config, options)  # a tensor, or a dict of token tensors for text
    done = None
    with distributed.all_or_none():
        if distributed.is_main():  # the same result on every rank: rank 0 evaluates and writes it
            done = _report_and_write(job, options, model, data, calibration, result)
    return done


def _report_and_write(
    job: Job, options: RunOptions, model: nn.Module, data: DataSource, calibration: Split, result: PruneResult
) -> Done:
    dense_acc, sparse_acc = split_accuracy(model, data.evaluation), split_accuracy(result.model, data.evaluation)
    extra: dict[str, Any] = {"random_weights": job.random_weights, "evaluation_data_spec": job.eval_data}
    if job.weights_map is not None:
        extra["weights_map"] = job.weights_map
    dense_map = sparse_map = None
    if is_detector(model):  # detection: mAP of the post-processed detections (pycocotools)
        dense_map, sparse_map = (
            split_detection_map(model, data.evaluation),
            split_detection_map(result.model, data.evaluation),
        )
        if dense_map is not None and sparse_map is not None:
            extra.update(dense_map50=dense_map["map50"], sparse_map50=sparse_map["map50"])
            extra.update(dense_map=dense_map["map"], sparse_map=sparse_map["map"])
    elif outputs_embeddings(model, data.evaluation):  # embeddings: fidelity to the dense model on the data
        extra["fidelity"] = model_fidelity(result.model, model, data.evaluation.x)
    elif dense_acc is None:  # no top-1 that means anything: the sparse model's agreement with the dense one
        if job.eval_samples is None:
            data = dataclasses.replace(data, evaluation=data.evaluation.first(FIDELITY_SAMPLES))
        extra["fidelity"] = classifier_fidelity(result.model, model, data.evaluation.x)
    report = build_report(
        result,
        model_spec=resolved_spec(job.model),
        weights=job.weights,
        data_spec=data.name,
        calibration_samples=len(calibration),
        evaluation_samples=len(data.evaluation),
        dense_accuracy=dense_acc,
        sparse_accuracy=sparse_acc,
        run_options={
            "device": str(options.device),
            "checkpoint_every": options.checkpoint_every,
            "retain_heap": options.retain_heap,
        },
        **extra,
    )
    out = write_outputs(result, job.out, report, job.overwrite)
    return Done(result, report, out, dense_acc, sparse_acc, dense_map, sparse_map)
