"""Write the Fashion-MNIST canvas detection benchmark in PASCAL VOC layout (``voc:DIR`` reads it).

    python scripts/make_detection_data.py /tmp/fcpts-canvas            # 4000 / 200 / 500 canvases, seed 0
    python scripts/make_detection_data.py /tmp/small --train 64 --val 16 --test 32 --seed 1

Seeded: the same arguments write the same files. See :mod:`fcpts.data.detection_canvas`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fcpts.data.detection_canvas import make_detection_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=4000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--size", type=int, default=160, help="canvas side in pixels")
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fashion-dir", help="the Fashion-MNIST IDX directory (default: the system's)")
    args = p.parse_args()
    start = time.perf_counter()
    counts = {"train": args.train, "val": args.val, "test": args.test}
    out = make_detection_dataset(
        args.out, counts, size=args.size, seed=args.seed, max_objects=args.max_objects, fashion_dir=args.fashion_dir
    )
    print(f"wrote {sum(counts.values())} canvases to {out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
