"""The ridge refit of a pruned layer's kept weights to the dense layer's outputs (POT's objective).

Layer by layer in forward order, the kept weights of each output row are refitted so that the
pruned layer, fed the *pruned* upstream model's inputs ``X̃``, reproduces the *dense* layer's
output on its dense inputs ``X``:

    min_{w_K}  ‖X̃_K w_K − X w_dense‖² + λ‖w_K‖²     (λ = damp · mean(diag X̃ᵀX̃))

a ridge least-squares problem solved in closed form from ``G = X̃ᵀX̃`` and ``C = X̃ᵀX``:
``(G_KK + λI) w_K = C_K· w_dense``. Pruned weights stay exactly zero, so the count is unchanged.
Used by the POT baseline (:mod:`fcpts.baselines.pot`) and by fcpts's ``refit_init``.
"""

from __future__ import annotations

import torch
from torch import nn

from .activations import gram
from .calibration import Calibration
from .replay import Replay


def refit_rows(weight: torch.Tensor, keep: torch.Tensor, g: torch.Tensor, c: torch.Tensor, damp: float) -> torch.Tensor:
    """Kept weights refitted per output row: ``(G_KK + λI) w_K = C_K· w_r``; pruned ones 0 (weight's shape).

    ``weight`` (out, ...) is the dense weight, ``keep`` its bool keep-mask, ``g``/``c`` (cols, cols).

    A grouped conv's ``g``/``c`` are (groups, cols, cols): see :func:`refit_rows_grouped`.

    A layer whose inputs are all zero on the calibration data (a dead layer, e.g. behind ReLUs
    that never fire in a randomly initialised detector) has nothing to fit, and ``G = 0`` makes
    ``λ = 0`` and every system singular: its kept weights stay the dense ones.

    >>> g = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    >>> refit_rows(torch.tensor([[1.0, 1.0]]), torch.tensor([[True, False]]), g, g, 1e-9).tolist()
    [[1.5, 0.0]]
    >>> refit_rows(torch.tensor([[1.0, 2.0]]), torch.tensor([[False, True]]), 0 * g, 0 * g, 0.01).tolist()
    [[0.0, 2.0]]
    """
    if g.dim() == 3:
        return refit_rows_grouped(weight, keep, g, c, damp)
    if not torch.diagonal(g).any():  # dead inputs: diag(G) is each input's sum of squares
        return weight.detach() * keep.reshape(weight.shape).to(weight.device)
    w = weight.detach().reshape(weight.shape[0], -1).double()  # (out, cols)
    k = keep.reshape(w.shape)
    g, c = g.double(), c.double()
    lam = damp * torch.diagonal(g).mean()
    rhs = w @ c.T  # (out, cols): row r is C w_r
    out = torch.zeros_like(w)
    for r in range(w.shape[0]):
        idx = k[r].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        # G_KK gathered at once: g[idx][:, idx] would copy the kept rows whole first (13× slower for
        # a 12,544-input layer at 70%: Faster R-CNN's box head, 1,024 rows of 3,763 kept).
        a = g[idx[:, None], idx] + lam * torch.eye(idx.numel(), dtype=g.dtype, device=g.device)
        out[r, idx] = torch.linalg.solve(a, rhs[r, idx])
    return out.to(weight.dtype).reshape(weight.shape)


def refit_rows_grouped(
    weight: torch.Tensor, keep: torch.Tensor, g: torch.Tensor, c: torch.Tensor, damp: float
) -> torch.Tensor:
    """:func:`refit_rows` of a grouped conv: the rows of group ``i`` use ``g[i]``, ``c[i]`` and their own λ.

    A group whose inputs are all zero (a dead channel of a depthwise conv) has nothing to fit: its
    kept weights stay the dense ones (:func:`refit_rows`'s dead layer).

    >>> g = torch.tensor([[[2.0, 1.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 1.0]]])
    >>> refit_rows_grouped(torch.ones(2, 2), torch.tensor([[True, False], [True, False]]), g, g, 1e-9).tolist()
    [[1.5, 0.0], [1.0, 0.0]]
    """
    per = weight.shape[0] // g.shape[0]  # rows per group
    w, k = weight.detach().reshape(weight.shape[0], -1), keep.reshape(weight.shape[0], -1)
    parts = []
    for i in range(len(g)):
        rows = slice(i * per, (i + 1) * per)
        parts.append(refit_rows(w[rows], k[rows], g[i], c[i], damp))
    return torch.cat(parts).reshape(weight.shape)


@torch.no_grad()
def refit_layers(
    model: nn.Module,
    dense: nn.Module,
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
    calibration: Calibration,
    damp: float,
) -> None:
    """Refit, in forward order, the kept weights of every ``name: (stored weight, keep-mask)`` in ``layers``.

    ``model`` must already compute with the masks (pruned weights zero, or masked by a
    parametrization: then ``stored weight`` is its dense ``original`` and only its kept entries
    are overwritten). ``dense`` is the unpruned model the outputs are matched to.
    """
    dense_layers = dict(dense.named_modules())
    replay = Replay(model, calibration.epoch, reference=dense)  # inputs on the model refitted up to each layer
    for name, (weight, keep) in layers.items():
        g, c, _ = gram(model, name, replay, reference=dense)
        assert c is not None
        refit = refit_rows(dense_layers[name].weight, keep, g, c, damp)
        # A refitted weight landing on exactly 0 would add a zero: keep it at the smallest normal value.
        tiny = torch.finfo(refit.dtype).tiny
        keep = keep.to(refit.device)
        refit = torch.where((refit == 0) & keep, torch.full_like(refit, tiny), refit)
        weight.copy_(torch.where(keep, refit, weight))
