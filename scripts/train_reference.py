"""Train the reference CNN on Fashion-MNIST and write its weights (the file committed in the repo).

    python scripts/train_reference.py                    # ~6 CPU minutes on 2 cores
    python scripts/train_reference.py --out /tmp/w.safetensors --epochs 1

Fixed seed, SGD with Nesterov momentum, one-cycle learning rate, random-crop and flip
augmentation. Prints the test accuracy per epoch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from fcpts.core.evaluate import accuracy
from fcpts.data.fashion_mnist import load_fashion_mnist
from fcpts.data.specs import Split
from fcpts.models import BUILTIN_MODELS
from fcpts.models.reference import ReferenceCNN


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2-pixel translation (pad + crop) and horizontal flip; x is (B, 1, 28, 28)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2, b), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def fit(
    model: nn.Module, opt: torch.optim.Optimizer, train: Split, test: Split, args: Any, gen: torch.Generator
) -> None:
    """Train with a one-cycle rate (``args.lr``, ``args.epochs``, ``args.batch_size``), write ``args.out``."""
    steps_per_epoch = len(train) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            loss = F.cross_entropy(model(augment(train.x[idx], gen)), train.y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, test.x, test.y)
        print(
            f"epoch {epoch + 1}/{args.epochs}  loss {loss.item():.3f}  test top-1 {acc:.2%}  "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=BUILTIN_MODELS["refcnn"].weights_path())
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    data = load_fashion_mnist(args.data_dir)
    train, test = data.calibration, data.evaluation
    model = ReferenceCNN()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fit(model, opt, train, test, args, gen)


if __name__ == "__main__":
    main()
