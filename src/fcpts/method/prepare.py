"""The mask lifecycle: :func:`prepare` puts a learnable threshold on every prunable layer, :func:`finalize`
takes it off and leaves a plain ``nn.Module`` with exactly the target number of zeros.

While prepared, each chosen layer's ``weight`` is a :mod:`torch.nn.utils.parametrize`
parametrization: the stored tensor (``parametrizations.weight.original``) holds the dense, still
learnable weights, and reading ``module.weight`` gives ``W * (|W| > t)``. Nothing else of the
model changes. :func:`finalize` removes the parametrization (the module gets its own class back)
and writes the masked weights into the plain ``weight`` parameter.

In between, :class:`Prepared` is the model's view of all its masks at once: the global sparsity
``S(t)`` (one batched bridge), the KDE bandwidths (one batched quantile), holding the masks fixed
(:meth:`Prepared.hold_masks`, :meth:`Prepared.freeze_masks`) and the exact global count
(:func:`exact_keep_masks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.allocation import allocate
from ..core.checks import check_finite_weights, validate_target
from ..core.layers import LayerFilter, default_layer_filter, require_prunable_layers
from ..core.masks import global_cut, target_zeros, threshold_for_sparsity, warn_unless_exact
from ..errors import FcptsError
from .bridge import DENSITIES, bandwidth, bridged_global_sparsity
from .threshold_mask import LayerScore, ThresholdMask


@dataclass
class PreparedLayer:
    name: str
    module: nn.Module
    mask: ThresholdMask
    initial_sparsity: float
    weight_requires_grad: bool
    parameter_order: list[str]  # the module's own parameter names, restored by finalize

    @property
    def weight(self) -> torch.Tensor:
        """The dense stored weights (the parametrization's ``original``)."""
        return self.module.parametrizations.weight.original

    @property
    def numel(self) -> int:
        return self.weight.numel()


@dataclass
class Prepared:
    """A model whose prunable layers carry thresholds; made by :func:`prepare`, consumed by :func:`finalize`."""

    model: nn.Module
    layers: list[PreparedLayer]
    target_sparsity: float

    @property
    def total(self) -> int:
        return sum(layer.numel for layer in self.layers)

    def threshold_parameters(self) -> list[nn.Parameter]:
        return [layer.mask.log_threshold for layer in self.layers]

    def frozen_masks(self) -> list[torch.Tensor] | None:
        """Every layer's held mask, or None while the masks still follow the thresholds."""
        if not all(layer.mask.is_frozen for layer in self.layers):
            return None
        return [layer.mask.frozen_keep for layer in self.layers]  # type: ignore[misc]

    def hold_masks(self, masks: Sequence[torch.Tensor] | None = None) -> None:
        """Hold every layer's mask at the exact target count (:func:`exact_keep_masks`), or at ``masks``.

        The thresholds stop learning (no gradient: Adam skips them). Held at the exact count, the
        remaining steps reconstruct under the final masks and :func:`finalize` changes no mask.
        """
        masks = exact_keep_masks(self) if masks is None else masks
        for layer, keep in zip(self.layers, masks, strict=True):
            layer.mask.hold(keep)
        self._stop_thresholds()

    def freeze_masks(self) -> None:
        """Hold every layer's current mask (a fixed allocation); the thresholds stop learning."""
        for layer in self.layers:
            layer.mask.freeze(layer.weight)
        self._stop_thresholds()

    def _stop_thresholds(self) -> None:
        for p in self.threshold_parameters():
            p.requires_grad_(False)
            p.grad = None  # Adam skips a parameter without a gradient

    def layer_sparsities(self) -> list[torch.Tensor]:
        """Each layer's bridged sparsity (exact value, KDE gradient)."""
        return [layer.mask.sparsity(layer.weight) for layer in self.layers]

    def global_sparsity(self) -> torch.Tensor:
        """``S(t) = Σ n_l s_l / Σ n_l``: exact value, differentiable in the thresholds.

        The same value and gradients as summing :meth:`layer_sparsities`, in one vectorised bridge
        for all layers that still learn (:func:`fcpts.method.bridge.bridged_global_sparsity`); a frozen
        layer adds a constant.
        """
        total = self.total
        value = torch.zeros((), device=self.layers[0].weight.device)
        learning: dict[str, list[PreparedLayer]] = {}  # density → the layers whose threshold decides
        for layer in self.layers:
            if not layer.mask.is_frozen:
                learning.setdefault(layer.mask.density, []).append(layer)
            else:
                value = value + layer.mask.sparsity(layer.weight).to(value.device) * (layer.numel / total)
        for density, layers in learning.items():
            self.refresh_bandwidths(layers)  # one batched quantile instead of one per layer
            scores = [layer.mask.score(layer.weight) for layer in layers]
            t = torch.stack([layer.mask.log_threshold for layer in layers]).exp()  # (L,)
            exact = torch.stack([(s <= tl).float().mean() for s, tl in zip(scores, t.detach(), strict=True)])
            samples = [layer.mask.kde.values(s) for layer, s in zip(layers, scores, strict=True)]
            lengths = torch.tensor([len(x) for x in samples], device=t.device)
            index = torch.repeat_interleave(torch.arange(len(layers), device=t.device), lengths)  # (M,) sample → layer
            h = torch.stack([layer.mask.bandwidth_of(layer.weight) for layer in layers]).float()  # (L,)
            shares = torch.tensor([layer.numel / total for layer in layers], device=t.device)
            value = value + bridged_global_sparsity(
                exact, t, torch.cat(samples), index, h, shares, DENSITIES[density].terms
            )
        return value

    @torch.no_grad()
    def fix_bandwidths(self) -> None:
        """Each layer's KDE bandwidth of its weights as they are now, kept from now on (``bandwidth_update="once"``)."""
        for layer in self.layers:
            layer.mask.kde.fix(layer.weight, layer.mask.score)

    @torch.no_grad()
    def refresh_bandwidths(self, layers: Sequence[PreparedLayer] | None = None) -> None:
        """Recompute the stale KDE bandwidths of ``layers``, batched by sample size and rule.

        Default: every layer whose threshold still decides its mask; a frozen mask reads no
        bandwidth, so after the freeze (or with fixed masks) a step recomputes none. The same
        bandwidths each layer would compute for itself (up to float rounding), with one quantile
        over a (layers, m) stack instead of one per layer.
        """
        if layers is None:
            layers = [layer for layer in self.layers if not layer.mask.is_frozen]
        groups: dict[tuple[int, str | float], list[PreparedLayer]] = {}
        for layer in layers:
            if not layer.mask.kde.is_current(layer.weight):
                groups.setdefault((layer.mask.kde.size, layer.mask.kde.rule), []).append(layer)
        for (_, rule), group in groups.items():
            stacked = torch.stack([layer.mask.kde.values(layer.mask.score(layer.weight)) for layer in group])  # (G, m)
            for layer, h in zip(group, bandwidth(stacked, rule), strict=True):
                layer.mask.kde.store(layer.weight, h)


def prepare(
    model: nn.Module,
    target_sparsity: float,
    init: str = "erk",
    *,
    layer_filter: LayerFilter = default_layer_filter,
    kde_samples: int = 4096,
    bandwidth_rule: str | float = "silverman",
    threshold_grad: str = "surrogate",
    seed: int = 0,
    density: str = "kde",
    score_fns: Sequence[LayerScore | None] | None = None,
    sparsities: Sequence[float] | None = None,
) -> Prepared:
    """Give every prunable layer of ``model`` (in place) a threshold initialised by ``init``.

    ``init`` is an allocation rule (``erk``, ``uniform``, ``global``, ``lamp``: see
    :mod:`fcpts.core.allocation`); ``kde_samples``, ``bandwidth_rule``, ``threshold_grad`` and
    ``density`` (the smoothed CDF behind the sparsity's gradient, ``kde`` or ``histogram``) are
    each layer's :class:`ThresholdMask` options, ``seed`` draws its KDE subsample. ``score_fns``
    (one per layer, None: ``|W|``) set what each threshold applies to; the allocation then sees
    those scores. ``sparsities`` (one per layer) replaces the allocation.

    >>> p = prepare(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), 0.5, init="uniform")
    >>> [layer.name for layer in p.layers], round(p.global_sparsity().item(), 2)
    (['0', '2'], 0.5)
    """
    validate_target(target_sparsity)
    chosen = require_prunable_layers(model, layer_filter)
    for name, module in chosen:
        if parametrize.is_parametrized(module, "weight"):
            raise FcptsError(f"layer {name!r} already has a weight parametrization; finalize it first")
    # A NaN/Inf weight would make every threshold, the KDE and the loss NaN: stop here, by name.
    check_finite_weights(chosen)
    weights = [module.weight.detach() for _, module in chosen]
    fns = list(score_fns) if score_fns is not None else [None] * len(chosen)
    scores = [w if fn is None else fn(w) for w, fn in zip(weights, fns, strict=True)]
    if sparsities is None:
        sparsities = allocate(init, scores, target_sparsity)
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for (name, module), w, score, fn, s in zip(chosen, weights, scores, fns, sparsities, strict=True):
        mask = ThresholdMask(
            w,
            threshold_for_sparsity(score, s),
            kde_samples=kde_samples,
            bandwidth_rule=bandwidth_rule,
            threshold_grad=threshold_grad,
            generator=generator,
            density=density,
            score_fn=fn,
        )
        requires_grad, order = module.weight.requires_grad, list(module._parameters)
        parametrize.register_parametrization(module, "weight", mask)
        layers.append(PreparedLayer(name, module, mask, s, requires_grad, order))
    return Prepared(model, layers, target_sparsity)


@torch.no_grad()
def exact_keep_masks(prepared: Prepared) -> list[torch.Tensor]:
    """Each layer's keep-mask (weight-shaped bool) with exactly ``round(S* · N)`` zeros in all.

    The learned thresholds corrected by the smallest common factor: one global cut
    (:func:`fcpts.core.masks.global_cut`, as :func:`~fcpts.core.masks.exact_global_masks`) of the
    scores ``|w| / t_l``, where a frozen mask ranks its kept weights first
    (:meth:`ThresholdMask.ranking_score`). :func:`finalize` applies them.
    """
    scores = [layer.mask.ranking_score(layer.weight) for layer in prepared.layers]
    weights = [layer.weight for layer in prepared.layers]
    return global_cut(scores, weights, target_zeros(prepared.target_sparsity, prepared.total))


def finalize(prepared: Prepared) -> nn.Module:
    """Remove every threshold and return the plain model with exactly ``round(S* · N)`` zeros.

    The masks are :func:`exact_keep_masks`: the learned thresholds corrected by the smallest
    common factor that makes the global zero count exact; the kept weights keep their learned
    values. Afterwards the model holds no parametrization, hook, buffer or attribute of fcpts.

    >>> net = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 3))
    >>> plain = finalize(prepare(net, 0.7))
    >>> int(sum((m.weight == 0).sum() for m in plain)), type(plain[0]).__name__
    (91, 'Linear')
    """
    k = target_zeros(prepared.target_sparsity, prepared.total)
    with torch.no_grad():
        for layer, keep in zip(prepared.layers, exact_keep_masks(prepared), strict=True):
            module = layer.module
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            # Removal re-registers ``weight`` last; put it back in place so parameters(),
            # named_parameters() and state_dict() keep the dense model's order.
            module._parameters = {k: module._parameters[k] for k in layer.parameter_order}
            # masked_fill, not mul: a negative weight times 0 is -0.0, which the compressed export
            # (fcpts.deploy) would have to store as a kept value to stay bit-exact.
            module.weight.masked_fill_(~keep, 0.0)
            module.weight.requires_grad_(layer.weight_requires_grad)
    warn_unless_exact([layer.module.weight for layer in prepared.layers], k)
    return prepared.model
