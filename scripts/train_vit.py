"""Train the ViT reference on Fashion-MNIST and write its weights (the file committed in the repo).

    python scripts/train_vit.py                    # 2 epochs: 12 minutes on 2 shared (busy) CPU cores
    python scripts/train_vit.py --out /tmp/w.safetensors --epochs 1

Fixed seed, AdamW with a one-cycle learning rate, the same 2-pixel translation and flip
augmentation as the reference CNN (scripts/train_reference.py). Prints the test accuracy per epoch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from train_reference import fit  # this script's folder is on sys.path when run as a script

from fcpts.data.fashion_mnist import load_fashion_mnist
from fcpts.models import BUILTIN_MODELS
from fcpts.models.vit import ReferenceViT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=BUILTIN_MODELS["refvit"].weights_path())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = load_fashion_mnist(args.data_dir)
    train, test = data.calibration, data.evaluation
    model = ReferenceViT()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    fit(model, opt, train, test, args, gen)


if __name__ == "__main__":
    main()
