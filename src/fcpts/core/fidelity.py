"""Fidelity of a pruned embedding model to its dense original: mean cosine and retrieval recall@1.

For models that output embeddings rather than class logits (sentence encoders), accuracy has no
labels to use; what matters is whether the sparse model still embeds like the dense one:

* ``mean_cosine``: mean over samples of ``cos(sparse_i, dense_i)``;
* ``recall_at_1``: the fraction of samples whose sparse embedding's nearest dense embedding (by
  cosine, among all N of the held-out set) is its own: ranking survives pruning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .evaluate import predict


def embedding_fidelity(sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, float]:
    """``{"mean_cosine", "recall_at_1"}`` of sparse embeddings (N, D) against dense ones (N, D).

    >>> dense = torch.eye(3)
    >>> embedding_fidelity(dense, dense)
    {'mean_cosine': 1.0, 'recall_at_1': 1.0}
    >>> embedding_fidelity(dense[[1, 0, 2]], dense)  # rows 0 and 1 swapped: only row 2 finds itself
    {'mean_cosine': 0.3333333432674408, 'recall_at_1': 0.3333333432674408}
    """
    if sparse.shape != dense.shape or sparse.ndim != 2:
        raise ValueError(f"expected two (N, D) embedding matrices of one shape, got {sparse.shape} and {dense.shape}")
    s, d = F.normalize(sparse.float(), dim=1), F.normalize(dense.float(), dim=1)
    mean_cosine = (s * d).sum(1).mean().item()
    nearest = (s @ d.T).argmax(1)  # (N,) index of the closest dense embedding
    recall = (nearest == torch.arange(len(s))).float().mean().item()
    return {"mean_cosine": mean_cosine, "recall_at_1": recall}


def model_fidelity(
    sparse: nn.Module, dense: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor], batch_size: int = 256
) -> dict[str, float]:
    """:func:`embedding_fidelity` of two models' outputs on held-out ``inputs`` (a tensor or token dict).

    Outputs with more than two dimensions (token embeddings, B×T×D) are flattened per sample.
    """
    s, d = predict(sparse, inputs, batch_size), predict(dense, inputs, batch_size)
    return embedding_fidelity(s.flatten(1), d.flatten(1))
