"""fcpts.pipeline.run: the directory ``fcpts prune`` writes, its report, and the checks before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fcpts
from fcpts.pipeline import DataSettings, Job, load_inputs, run
from tests.helpers import FACTORY_TOTAL, load_factory, write_npz

RUN_FIELDS = {"device", "progress", "checkpoint_dir", "checkpoint_every", "resume", "retain_heap"}


def fcpts_job(model_file: Path, npz_file: Path, out: Path, **fields: object) -> Job:
    config = fcpts.make_config("fcpts", target_sparsity=0.6, iters=5, batch_size=16)
    return Job(f"{model_file}:factory", f"npz:{npz_file}", out, config, **{"calib_samples": 32, **fields})


def test_run_writes_what_the_cli_writes(run_cli, model_file, npz_file, tmp_path):
    done = run(fcpts_job(model_file, npz_file, tmp_path / "api"))
    code, _, err = run_cli(
        "prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--sparsity", "0.6",
        "--iters", "5", "--batch-size", "16", "--calib-samples", "32", "--out", tmp_path / "cli", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    api, cli = tmp_path / "api", tmp_path / "cli"
    assert done.out == api
    assert sorted(p.name for p in api.iterdir()) == sorted(p.name for p in cli.iterdir())
    assert sorted(p.name for p in api.iterdir()) == ["allocation.png", "model.safetensors", "report.json"]
    # Identical numerics: the same weight bytes, the same report apart from the wall time.
    assert (api / "model.safetensors").read_bytes() == (cli / "model.safetensors").read_bytes()
    api_report, cli_report = (json.loads((d / "report.json").read_text()) for d in (api, cli))
    assert api_report.pop("prune_time_s") > 0 and cli_report.pop("prune_time_s") > 0
    assert api_report == cli_report


def test_report_content(model_file, npz_file, tmp_path):
    out = tmp_path / "out"
    done = run(fcpts_job(model_file, npz_file, out))
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(done.report, default=str))  # what run() returns is what it wrote
    k = round(0.6 * FACTORY_TOTAL)
    assert (report["method"], report["target_sparsity"], report["zeros"]) == ("fcpts", 0.6, k)
    assert report["prunable_weights"] == FACTORY_TOTAL and report["global_sparsity"] == k / FACTORY_TOTAL
    assert [(la["name"], la["numel"]) for la in report["layers"]] == [("0", 36), ("4", 1440)]
    assert sum(la["zeros"] for la in report["layers"]) == k
    # The written weights hold exactly the reported zeros, layer by layer.
    state = load_file(out / "model.safetensors")
    assert [int((state[f"{la['name']}.weight"] == 0).sum()) for la in report["layers"]] == [
        la["zeros"] for la in report["layers"]
    ]
    # Run options are reported apart from the config, which holds the method's settings only.
    assert report["run_options"] == {"device": "cpu", "checkpoint_every": None, "retain_heap": True}
    assert not RUN_FIELDS & set(report["config"])
    # init "auto" and lr_weight None are reported as the start and rate the run took (fcpts.method.start)
    asked = {k: v for k, v in report["config"].items() if k in ("target_sparsity", "iters", "batch_size")}
    start = {"init": "erk", "allocation": None, "reason": "the budget affords at least 50% of the steps"}
    assert report["config"] == {
        **fcpts.make_config("fcpts", **asked, init="erk", lr_weight=1e-3).to_dict(),
        "start": start,
    }
    assert (report["calibration_samples"], report["evaluation_samples"]) == (32, 48)
    assert report["random_weights"] is False and report["evaluation_data_spec"] is None
    assert report["model_spec"] == f"{model_file}:factory" and report["data_spec"] == f"npz:{npz_file}"
    assert len(report["loss_history"]) == 5
    # Accuracies: the dense model's and the written model's, on the data's evaluation split.
    data = np.load(npz_file)
    x, y = torch.from_numpy(data["x"]).float().div(255).unsqueeze(1), torch.from_numpy(data["y"]).long()
    model = load_factory(model_file)
    assert report["dense_accuracy"] == done.dense_accuracy == fcpts.accuracy(model, x, y)
    model.load_state_dict(state)
    assert report["sparse_accuracy"] == done.sparse_accuracy == fcpts.accuracy(model, x, y)


def test_run_options_reach_the_report(model_file, npz_file, tmp_path):
    options = fcpts.RunOptions(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
    done = run(fcpts_job(model_file, npz_file, tmp_path / "out", options=options))
    assert done.report["run_options"] == {"device": "cpu", "checkpoint_every": 2, "retain_heap": True}
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()


def test_eval_data_replaces_the_evaluation_split(model_file, npz_file, tmp_path):
    held_out = write_npz(tmp_path / "held_out.npz", n=20, seed=9)
    _, data = load_inputs(f"{model_file}:factory", f"npz:{npz_file}", eval_data=f"npz:{held_out}")
    assert len(data.calibration) == 48 and len(data.evaluation) == 20
    done = run(fcpts_job(model_file, npz_file, tmp_path / "out", eval_data=f"npz:{held_out}"))
    assert done.report["evaluation_samples"] == 20 and done.report["evaluation_data_spec"] == f"npz:{held_out}"
    assert done.report["calibration_samples"] == 32  # calibration still comes from --data


def test_checks_before_any_work(model_file, npz_file, tmp_path):
    out = tmp_path / "out"
    bad_samples = fcpts_job(model_file, npz_file, out, calib_samples=0)
    with pytest.raises(fcpts.FcptsError, match=r"^--calib-samples must be ≥ 1, got 0$"):
        run(bad_samples)
    inside = fcpts_job(model_file, npz_file, out, options=fcpts.RunOptions(checkpoint_dir=out / "ckpt"))
    with pytest.raises(fcpts.FcptsError, match="must be outside the output directory"):
        run(inside)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(fcpts.FcptsError, match="already exists and is not empty; pass --overwrite"):
        run(fcpts_job(model_file, npz_file, out))
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    done = run(fcpts_job(model_file, npz_file, out, overwrite=True))
    assert sorted(p.name for p in done.out.iterdir()) == ["allocation.png", "model.safetensors", "report.json"]


def test_data_settings_are_the_cli_flags():
    """Every DataSettings field is a ``fcpts prune`` flag (the CLI builds one from its arguments)."""
    from fcpts.cli.parser import build_parser

    args = build_parser().parse_args(["prune", "--model", "m", "--data", "d", "--sparsity", "0.5", "--out", "o"])
    assert {f: getattr(args, f) for f in DataSettings.__dataclass_fields__} == vars(DataSettings())
