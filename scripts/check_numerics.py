"""Same numerics check: run a fixed set of CLI prunes and compare the bytes of their weights.

Every run writes ``model.safetensors``; its SHA-256 is compared with the value recorded in
``scripts/numerics.json``. A refactor that claims identical numerics must reproduce every hash.

    python scripts/check_numerics.py            # compare with scripts/numerics.json
    python scripts/check_numerics.py --record   # (re)write scripts/numerics.json

The set: every registered method on the reference CNN at 0.9, fcpts at 2:4 on the CNN, a short
fcpts run on the reference ViT, and a 2-process torchrun of fcpts. Runs use one thread so the
bytes do not depend on the machine's core count. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RECORD = Path(__file__).with_name("numerics.json")
METHODS = (
    "uniform-magnitude",
    "global-magnitude",
    "erk-magnitude",
    "lamp-magnitude",
    "wanda",
    "owl-wanda",
    "sparsegpt",
    "pot",
    "fcpts",
)
COMMON = ["--data", "fashion-mnist", "--calib-samples", "256", "--no-progress"]
FCPTS_SHORT = ["--iters", "20"]


def runs() -> dict[str, list[str]]:
    """Name → arguments of ``fcpts prune`` (without ``--out``)."""
    out: dict[str, list[str]] = {}
    for method in METHODS:
        extra = FCPTS_SHORT if method == "fcpts" else []
        out[f"refcnn-{method}-0.9"] = ["--model", "refcnn", "--method", method, "--sparsity", "0.9", *extra]
    out["refcnn-fcpts-2:4"] = ["--model", "refcnn", "--pattern", "2:4", *FCPTS_SHORT]
    out["refvit-fcpts-0.8"] = ["--model", "refvit", "--sparsity", "0.8", *FCPTS_SHORT]
    out["refcnn-fcpts-0.8-torchrun2"] = ["--model", "refcnn", "--sparsity", "0.8", *FCPTS_SHORT]
    return {name: [*args, *COMMON] for name, args in out.items()}


def command(name: str, args: list[str], out: Path) -> list[str]:
    cli = [*args, "--out", str(out)]
    if name.endswith("torchrun2"):
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        return [*launch, "-m", "fcpts", "prune", *cli]
    return [sys.executable, "-m", "fcpts", "prune", *cli]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", action="store_true", help="write the hashes instead of comparing")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these named runs")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    expected = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    hashes: dict[str, str] = {}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run_args in runs().items():
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / name.replace(":", "-")
            subprocess.run(command(name, run_args, out), check=True, env=env, stdout=subprocess.DEVNULL)
            hashes[name] = sha256(out / "model.safetensors")
            same = "recorded" if args.record else ("same" if expected.get(name) == hashes[name] else "DIFFERENT")
            failed += [name] if same == "DIFFERENT" else []
            print(f"{name:<32}{hashes[name][:16]}  {same}", flush=True)
    if args.record:
        RECORD.write_text(json.dumps({**expected, **hashes}, indent=2) + "\n")
        return 0
    print(f"{len(hashes) - len(failed)} of {len(hashes)} runs give the recorded bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
