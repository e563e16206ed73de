"""Data-parallel pruning: two gloo processes on this machine give the one-process result.

Tolerance. Two processes compute the same global-batch gradient as one process, but the sums over
the batch run in another order (each rank sums its shard, then the shards are summed), so weights
and thresholds agree to float32 rounding, carried through the run: |Δ| ≤ 1e-5 + 1e-4·|w| is
required (observed on TinyNet: |Δ| ≤ 7e-7 after 20 steps, ≤ 2.3e-6 after 100, with even and
uneven shards and three seeds). A mask bit can flip only where a weight lies within that distance
of its layer's threshold: at most 0.5% of the prunable weights may differ in their mask (none did
in those runs). The global sparsity is exact in both, and the ranks' results are bit for bit equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

import fcpts
from fcpts.core import distributed
from tests.helpers import FACTORY_TOTAL, TINY_TOTAL, TinyNet, load_factory

MASK_TOLERANCE = 0.005  # fraction of prunable weights whose mask may differ from the one-process run
RTOL, ATOL = 1e-4, 1e-5  # weights and thresholds vs the one-process run
WORLD = 2


def calibration_data() -> torch.Tensor:
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(123))


#: Global batches of 16 (8 per rank) and 15 (8 + 7: unequal shards, weighted by their size).
CONFIGS = {
    "even": {"target_sparsity": 0.7, "iters": 20, "batch_size": 16, "seed": 1},
    "odd": {"target_sparsity": 0.6, "iters": 20, "batch_size": 15, "seed": 2},
}


def assert_matches(result: dict[str, torch.Tensor], single: dict[str, torch.Tensor], prunable: list[str]) -> None:
    """Within the stated tolerance of the one-process result (see the module docstring)."""
    assert result.keys() == single.keys()
    flips = sum(int(((result[k] == 0) != (single[k] == 0)).sum()) for k in prunable)
    total = sum(single[k].numel() for k in prunable)
    assert flips <= MASK_TOLERANCE * total, f"{flips} of {total} mask bits differ"
    for key in result:
        both_kept = (result[key] != 0) & (single[key] != 0)
        torch.testing.assert_close(result[key][both_kept], single[key][both_kept], rtol=RTOL, atol=ATOL)


# --- the Python API inside a process group (torch.multiprocessing, gloo) -------------------------


def _rank_main(rank: int, store: str, out: str) -> None:
    """One rank: join the group, check the helpers, prune (each rank starts from another model)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        checks: dict[str, object] = {"rank": distributed.rank(), "world": distributed.world_size()}
        # Gradients: Σ weight_r · grad_r; a missing gradient counts as 0; missing everywhere stays None.
        shared, partial, unused = (nn.Parameter(torch.zeros(3)) for _ in range(3))
        shared.grad = torch.full((3,), float(rank + 1))
        partial.grad = torch.ones(3) if rank == 0 else None
        distributed.all_reduce_gradients([shared, partial, unused], weight=(0.25, 0.75)[rank])
        checks["shared"], checks["partial"] = shared.grad.tolist(), partial.grad.tolist()
        checks["unused"] = unused.grad is None
        # Broadcast: rank 0's parameters and buffers of every dtype.
        net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        with torch.no_grad():
            net[0].weight.fill_(rank)
            net[1].num_batches_tracked.fill_(rank + 5)
        distributed.broadcast_module(net)
        checks["weight"], checks["tracked"] = net[0].weight.flatten().tolist(), int(net[1].num_batches_tracked)
        (Path(out) / f"checks{rank}.json").write_text(json.dumps(checks))

        for name, options in CONFIGS.items():
            torch.manual_seed(100 + rank)  # a different model on every rank: prune() takes rank 0's
            result = fcpts.prune(TinyNet(), calibration_data(), fcpts.FCPTSConfig(**options))
            save_file(result.model.state_dict(), str(Path(out) / f"{name}{rank}.safetensors"))
            (Path(out) / f"{name}{rank}.json").write_text(json.dumps(result.history))
    finally:
        distributed.shutdown()  # barrier, then destroy: no rank exits while its peer still works
    (Path(out) / f"done{rank}").touch()
    # Leave without interpreter finalization: gloo's C++ worker threads can still hold tensors whose
    # release then needs the GIL of an interpreter being torn down, and the process aborts
    # (SIGABRT, "terminate called without an active exception"; seen once in CI after all the work
    # was done). The work is over and its files are written; nothing is lost by skipping teardown.
    os._exit(0)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of one 2-process run of :func:`_rank_main` (spawned once for the module's tests)."""
    out = tmp_path_factory.mktemp("two-ranks")
    mp.spawn(_rank_main, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True)
    assert all((out / f"done{rank}").exists() for rank in range(WORLD))
    return out


def test_helpers_in_a_process_group(two_ranks):
    for rank in range(WORLD):
        checks = json.loads((two_ranks / f"checks{rank}.json").read_text())
        assert (checks["rank"], checks["world"]) == (rank, WORLD)
        assert checks["shared"] == [1.75] * 3  # 0.25·1 + 0.75·2
        assert checks["partial"] == [0.25] * 3  # rank 1 had none: 0.25·1 + 0.75·0
        assert checks["unused"] is True
        assert (checks["weight"], checks["tracked"]) == ([0.0] * 4, 5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ranks_end_identical_and_match_one_process(two_ranks, name):
    ranks = [load_file(two_ranks / f"{name}{r}.safetensors") for r in range(WORLD)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    histories = [json.loads((two_ranks / f"{name}{r}.json").read_text()) for r in range(WORLD)]
    assert histories[0] == histories[1]

    torch.manual_seed(100)  # rank 0's model
    config = fcpts.FCPTSConfig(**CONFIGS[name])
    single = fcpts.prune(TinyNet(), calibration_data(), config)
    prunable = [f"{n}.weight" for n in ("conv1", "conv2", "fc1", "fc2")]
    assert sum(int((ranks[0][k] == 0).sum()) for k in prunable) == round(config.target_sparsity * TINY_TOTAL)
    assert_matches(ranks[0], single.model.state_dict(), prunable)
    # The logged losses are the global batch's, as in one process.
    for got, want in zip(histories[0], single.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-6)
        assert got["sparsity"] == pytest.approx(want["sparsity"], abs=2 / TINY_TOTAL)


def test_one_process_is_a_world_of_one(tiny_net, calib_x):
    """Without a process group the helpers are no-ops and any batch size ≥ 1 works."""
    result = fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(0.5, iters=2, batch_size=1))
    assert result.zeros == round(0.5 * TINY_TOTAL)
    assert distributed.init_from_env(torch.device("cpu")) == torch.device("cpu")  # no WORLD_SIZE: no group
    assert not distributed.is_initialized()


# --- the command line under torchrun ----------------------------------------------------------------


def test_torchrun_two_processes_match_one_process(run_cli, model_file, npz_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        *("prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--sparsity", "0.6"),
        *("--iters", "20", "--calib-samples", "48", "--batch-size", "16", "--no-progress"),
    ]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    # Two processes under torchrun; meanwhile the one-process run with the same global batch, in this one.
    with subprocess.Popen(
        [*launch, "-m", "fcpts", *args, "--out", str(tmp_path / "two")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as two:
        code, _, err = run_cli(*args, "--out", tmp_path / "one")
        assert code == 0, err
        stdout, stderr = two.communicate(timeout=300)
    assert two.returncode == 0, stdout + stderr

    k = round(0.6 * FACTORY_TOTAL)
    assert stdout.count(f"({k} of {FACTORY_TOTAL} weights zero)") == 1  # rank 0 alone prints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "one", "tiny_model.py", "two"]
    result, single = (load_file(tmp_path / d / "model.safetensors") for d in ("two", "one"))
    model = load_factory(model_file)
    model.load_state_dict(result)  # a plain state dict of the model
    prunable = ["0.weight", "4.weight"]
    assert sum(int((result[key] == 0).sum()) for key in prunable) == k  # exact global sparsity
    assert_matches(result, single, prunable)
    report, single_report = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("two", "one"))
    assert report["zeros"] == single_report["zeros"] == k
    assert report["sparse_accuracy"] == pytest.approx(single_report["sparse_accuracy"], abs=1 / 48 + 1e-9)
