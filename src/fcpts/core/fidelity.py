"""Fidelity of a pruned model to its dense original: for embeddings, mean cosine and retrieval
recall@1; for a classifier without meaningful labels, top-1/top-5 agreement and KL divergence.

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


def logit_fidelity(sparse: torch.Tensor, dense: torch.Tensor) -> dict[str, float]:
    """``{"top1_agreement", "top5_agreement", "kl"}`` of sparse logits (N, K) against dense ones (N, K).

    Top-1 agreement: the sparse argmax is the dense one; top-5: the dense argmax is among the sparse
    top 5; ``kl``: mean ``KL(p_dense || p_sparse)`` in nats. For a classifier on data whose labels
    are not its classes (an ImageNet model on Fashion-MNIST), where top-1 accuracy means nothing.

    >>> dense = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> logit_fidelity(dense, dense)
    {'top1_agreement': 1.0, 'top5_agreement': 1.0, 'kl': 0.0}
    >>> logit_fidelity(dense[[1, 0]], dense)["top1_agreement"]
    0.0
    """
    if sparse.shape != dense.shape or sparse.ndim != 2:
        raise ValueError(f"expected two (N, K) logit matrices of one shape, got {sparse.shape} and {dense.shape}")
    target = dense.argmax(1, keepdim=True)  # (N, 1)
    top1 = (sparse.argmax(1, keepdim=True) == target).float().mean().item()
    top5 = (sparse.topk(min(5, sparse.shape[1]), 1).indices == target).any(1).float().mean().item()
    log_d, log_s = F.log_softmax(dense.float(), 1), F.log_softmax(sparse.float(), 1)
    kl = F.kl_div(log_s, log_d, log_target=True, reduction="batchmean").clamp(min=0).item()
    return {"top1_agreement": top1, "top5_agreement": top5, "kl": kl}


def classifier_fidelity(
    sparse: nn.Module, dense: nn.Module, inputs: torch.Tensor | dict[str, torch.Tensor], batch_size: int = 256
) -> dict[str, float]:
    """:func:`logit_fidelity` of two classifiers' logits on held-out ``inputs``."""
    return logit_fidelity(predict(sparse, inputs, batch_size), predict(dense, inputs, batch_size))
