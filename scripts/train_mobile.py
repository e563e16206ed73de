"""Train the depthwise reference (refmobile) on Fashion-MNIST and write its weights (the committed file).

    python scripts/train_mobile.py                    # 1 thread
    python scripts/train_mobile.py --out /tmp/w.safetensors --epochs 1

Fixed seed, SGD with Nesterov momentum and a one-cycle learning rate, the same 2-pixel translation
and flip augmentation as the reference CNN (scripts/train_reference.py). Prints the test accuracy
per epoch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from train_reference import fit  # this script's folder is on sys.path when run as a script

from fcpts.data.fashion_mnist import load_fashion_mnist
from fcpts.models import BUILTIN_MODELS
from fcpts.models.mobile import ReferenceMobileNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=BUILTIN_MODELS["refmobile"].weights_path())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = load_fashion_mnist(args.data_dir)
    train, test = data.calibration, data.evaluation
    model = ReferenceMobileNet().to(memory_format=torch.channels_last)  # a third faster on CPU
    # No weight decay on BatchNorm and the depthwise kernels (9 weights a channel): the usual MobileNet recipe.
    decay = [p for p in model.parameters() if p.ndim > 1 and p.shape[1] != 1]
    rest = [p for p in model.parameters() if not (p.ndim > 1 and p.shape[1] != 1)]
    groups = [{"params": decay, "weight_decay": 4e-4}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
    fit(model, opt, train, test, args, gen)


if __name__ == "__main__":
    main()
