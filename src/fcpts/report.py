"""The prune run's report: ``report.json`` (target and achieved sparsity, layers, time, config, history,
versions) and ``allocation.png``, written with the weights into an atomic output directory.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .api import PruneResult
from .files import MODEL_NAME, PLOT_NAME, REPORT_NAME, atomic_directory, save_weights
from .version import __version__


def versions() -> dict[str, str]:
    return {
        "fcpts": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def build_report(result: PruneResult, **extra: Any) -> dict[str, Any]:
    """The ``report.json`` content: target, achieved sparsity, layers, wall time, config, versions."""
    return {
        "method": result.method,
        "target_sparsity": result.target_sparsity,
        "global_sparsity": result.global_sparsity,
        "zeros": result.zeros,
        "prunable_weights": result.numel,
        "layers": [
            {"name": layer.name, "numel": layer.numel, "zeros": layer.zeros, "sparsity": layer.sparsity}
            for layer in result.layers
        ],
        "prune_time_s": result.wall_time_s,
        **extra,
        "config": result.config,
        "loss_history": result.history,
        "versions": versions(),
    }


def plot_allocation(result: PruneResult, path: str | os.PathLike[str]) -> None:
    """Bar chart of the per-layer sparsity, with the global target as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [layer.name for layer in result.layers]
    fig = Figure(figsize=(max(6.0, 0.35 * len(names) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(len(names)), [layer.sparsity for layer in result.layers], color="tab:blue")
    ax.axhline(
        result.target_sparsity, color="tab:red", linestyle="--", label=f"global target {result.target_sparsity:g}"
    )
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("layer sparsity")
    ax.set_title(f"{result.method}: global sparsity {result.global_sparsity:.4f}")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110)


def write_outputs(result: PruneResult, out: str | os.PathLike[str], report: dict[str, Any], overwrite: bool) -> Path:
    """Write ``model.safetensors``, ``report.json`` and ``allocation.png`` to ``out`` atomically."""
    with atomic_directory(out, overwrite) as tmp:
        save_weights(result.model, tmp / MODEL_NAME)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
        plot_allocation(result, tmp / PLOT_NAME)
    return Path(out)
