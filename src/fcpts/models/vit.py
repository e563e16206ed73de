"""The ViT reference: a small Vision Transformer for 1×28×28 images (LayerNorm only, no BatchNorm).

Every weight matrix is an ``nn.Linear`` (the patch embedding too, on flattened patches), so the
default layer filter prunes the attention (``qkv``, ``proj``) and MLP (``fc1``, ``fc2``) layers
of every block as well as the embedding and the head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .reference import FASHION_MNIST_MEAN, FASHION_MNIST_STD, Normalize


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` Linear and an output ``proj`` Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, D)
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, H, T, D/H)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D/H)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))`` with GELU."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ReferenceViT(nn.Module):
    """A ViT for 1×28×28 images: 7×7 patches (16 tokens), width 64, 4 blocks of 4 heads, mean-pooled head.

    >>> model = ReferenceViT()
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    134848
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 28,
        patch: int = 7,
        channels: int = 1,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 128,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patch = patch
        self.normalize = Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (B, C, H, W)
        p = self.patch
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (B, T, C·p·p), T = (H/p)·(W/p)
        tokens = self.blocks(self.embed(patches) + self.pos)  # (B, T, D)
        return self.head(self.norm(tokens).mean(1))  # (B, classes)
