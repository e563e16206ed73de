"""The mask lifecycle: ``prepare`` puts a learnable threshold on every prunable layer, ``finalize``
takes it off and leaves a plain ``nn.Module`` with exactly the target number of zeros.

While prepared, each chosen layer's ``weight`` is a :mod:`torch.nn.utils.parametrize`
parametrization: the stored tensor (``parametrizations.weight.original``) holds the dense, still
learnable weights, and reading ``module.weight`` gives ``W * (|W| > t)``. Nothing else of the
model changes. :func:`finalize` removes the parametrization (the module gets its own class back)
and writes the masked weights into the plain ``weight`` parameter.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .allocation import allocate
from .bridge import CDF_TERMS, SMOOTH_CDFS, bandwidth, bridged_global_sparsity, bridged_sparsity
from .checks import check_finite
from .errors import FcptsError
from .layers import LayerFilter, default_layer_filter, prunable_layers
from .masks import lowest_scores, surrogate_masked, target_zeros, threshold_for_sparsity

#: How the reconstruction loss reaches the thresholds: not at all, or through a sigmoid surrogate.
THRESHOLD_GRADS = ("none", "surrogate")

#: ``score_fn(weight) -> scores`` (weight-shaped, ≥ 0, no gradient): what a threshold applies to.
LayerScore = Callable[[torch.Tensor], torch.Tensor]


class ThresholdMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ 1[|W| > t]`` with a learnable threshold ``t = exp(log_threshold)``.

    The threshold is stored as its logarithm, so it is always positive and one learning rate
    moves layers of very different weight scales by the same relative amount.

    ``threshold_grad="surrogate"`` lets the reconstruction loss reach ``t``: the forward value is
    the hard mask, the backward pass uses ``σ((|W| - t) / h)`` (``h``: the layer's KDE bandwidth).
    With ``"none"`` the mask is a constant to autograd, as in the paper's published code, and only
    the control loss moves ``t``. The weights' gradient is masked either way: a pruned weight
    keeps its value and comes back only if the threshold drops below it.

    :meth:`freeze` holds the current mask fixed (a fixed allocation with reconstruction): the
    threshold no longer decides, and kept weights stay kept even where learning shrinks them.

    ``score_fn`` replaces ``|W|`` by another importance score of the current weights (e.g. Wanda's
    ``|W|·‖X‖``): the mask is then ``score > t`` and the KDE bridge runs on the scores.

    >>> m = ThresholdMask(torch.tensor([[0.1, -0.5, 0.3, -0.05]]), threshold=0.2)
    >>> m(torch.tensor([[0.1, -0.5, 0.3, -0.05]])).tolist()
    [[0.0, -0.5, 0.30000001192092896, -0.0]]
    """

    def __init__(
        self,
        weight: torch.Tensor,
        threshold: float,
        kde_samples: int = 4096,
        bandwidth_rule: str | float = "silverman",
        threshold_grad: str = "surrogate",
        generator: torch.Generator | None = None,
        density: str = "kde",
        score_fn: LayerScore | None = None,
    ) -> None:
        super().__init__()
        self.score_fn = score_fn
        if threshold_grad not in THRESHOLD_GRADS:
            raise ValueError(f"threshold_grad must be one of {THRESHOLD_GRADS}, got {threshold_grad!r}")
        if density not in SMOOTH_CDFS:
            raise ValueError(f"density must be one of {sorted(SMOOTH_CDFS)}, got {density!r}")
        self.density = density
        self.log_threshold = nn.Parameter(torch.tensor(math.log(threshold), device=weight.device))
        n = weight.numel()
        index = torch.randperm(n, generator=generator)[: min(n, kde_samples)]  # (m,) fixed KDE subsample
        self.register_buffer("kde_index", index.to(weight.device), persistent=False)
        self.bandwidth_rule = bandwidth_rule
        self.threshold_grad = threshold_grad
        self._bandwidth_key: tuple[int, int] | None = None
        self._bandwidth = torch.ones(())
        self.frozen_keep: torch.Tensor | None = None  # weight-shaped bool, set by freeze()

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def score(self, weight: torch.Tensor) -> torch.Tensor:
        """What the threshold applies to: ``|W|``, or ``score_fn(W)`` (weight-shaped, detached)."""
        return weight.detach().abs() if self.score_fn is None else self.score_fn(weight.detach())

    def kde_values(self, score: torch.Tensor) -> torch.Tensor:
        """The KDE subsample (m,) of a weight-shaped ``score``, as float32 magnitudes."""
        return score.flatten()[self.kde_index].abs().float()

    def _samples(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kde_values(self.score(weight)), self.bandwidth_of(weight)  # (m,), scalar

    def bandwidth_of(self, weight: torch.Tensor) -> torch.Tensor:
        """The KDE bandwidth of ``weight``'s scores (scalar), cached until the weights change.

        It (a quantile: a sort of m values) is needed twice per step, by the surrogate and by the
        bridge; in-place optimizer steps bump the tensor's version counter, which invalidates it.
        :meth:`Prepared.refresh_bandwidths` fills it for all layers at once.
        """
        if not self.bandwidth_current(weight):
            self.set_bandwidth(weight, bandwidth(self.kde_values(self.score(weight)), self.bandwidth_rule))
        return self._bandwidth

    def bandwidth_current(self, weight: torch.Tensor) -> bool:
        """Whether the cached bandwidth belongs to ``weight`` as it is now."""
        return self._bandwidth_key == (weight.data_ptr(), weight._version)

    def set_bandwidth(self, weight: torch.Tensor, h: torch.Tensor) -> None:
        """Cache ``h`` (scalar) as the bandwidth of ``weight`` at its current version."""
        self._bandwidth, self._bandwidth_key = h, (weight.data_ptr(), weight._version)

    @torch.no_grad()
    def freeze(self, weight: torch.Tensor) -> None:
        """From now on the mask is ``score > t`` for the current ``weight``, whatever the weights become."""
        self.frozen_keep = self.score(weight) > self.threshold

    def ranking_score(self, weight: torch.Tensor) -> torch.Tensor:
        """``score / t`` (weight-shaped, float32): above 1 exactly where the mask keeps a weight.

        :func:`finalize` cuts all layers' scores at one global rank. A frozen mask's kept weights
        score above 1 and its pruned ones at most 1 even where learning moved them across ``t``.
        """
        score = self.score(weight).float() / self.threshold.detach().float()
        if self.frozen_keep is None:
            return score
        above_one = torch.nextafter(torch.ones(()), torch.full((), 2.0))
        return torch.where(self.frozen_keep, score.clamp(min=above_one), score.clamp(max=1.0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        t = self.threshold
        if self.frozen_keep is not None:
            return weight * self.frozen_keep.to(weight.dtype)
        score = self.score(weight)
        if self.threshold_grad == "surrogate" and torch.is_grad_enabled() and t.requires_grad:
            _, h = self._samples(weight)
            return surrogate_masked(weight, score, t, h)  # value: hard mask; t's gradient: σ((score − t)/h)
        return weight * (score > t.detach()).to(weight.dtype)

    def sparsity(self, weight: torch.Tensor) -> torch.Tensor:
        """This layer's exact sparsity at ``t``, differentiable in ``log_threshold`` via the density."""
        if self.frozen_keep is not None:  # a constant: the threshold no longer decides
            return 1.0 - self.frozen_keep.float().mean()
        samples, h = self._samples(weight)
        return bridged_sparsity(self.score(weight), self.threshold, samples, h, SMOOTH_CDFS[self.density])


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

    def thresholds(self) -> list[float]:
        return [layer.mask.threshold.item() for layer in self.layers]

    def threshold_parameters(self) -> list[nn.Parameter]:
        return [layer.mask.log_threshold for layer in self.layers]

    def layer_sparsities(self) -> list[torch.Tensor]:
        """Each layer's bridged sparsity (exact value, KDE gradient)."""
        return [layer.mask.sparsity(layer.weight) for layer in self.layers]

    def global_sparsity(self) -> torch.Tensor:
        """``S(t) = Σ n_l s_l / Σ n_l``: exact value, differentiable in the thresholds.

        The same value and gradients as summing :meth:`layer_sparsities`, in one vectorised bridge
        for all layers that still learn (:func:`fcpts.bridge.bridged_global_sparsity`); a frozen
        layer adds a constant.
        """
        total = self.total
        value = torch.zeros((), device=self.layers[0].weight.device)
        learning: dict[str, list[PreparedLayer]] = {}  # density → the layers whose threshold decides
        for layer in self.layers:
            if layer.mask.frozen_keep is None:
                learning.setdefault(layer.mask.density, []).append(layer)
            else:
                value = value + layer.mask.sparsity(layer.weight).to(value.device) * (layer.numel / total)
        for density, layers in learning.items():
            self.refresh_bandwidths(layers)  # one batched quantile instead of one per layer
            scores = [layer.mask.score(layer.weight) for layer in layers]
            t = torch.stack([layer.mask.log_threshold for layer in layers]).exp()  # (L,)
            exact = torch.stack([(s <= tl).float().mean() for s, tl in zip(scores, t.detach(), strict=True)])
            samples = [layer.mask.kde_values(s) for layer, s in zip(layers, scores, strict=True)]
            lengths = torch.tensor([len(x) for x in samples], device=t.device)
            index = torch.repeat_interleave(torch.arange(len(layers), device=t.device), lengths)  # (M,) sample → layer
            h = torch.stack([layer.mask.bandwidth_of(layer.weight) for layer in layers]).float()  # (L,)
            shares = torch.tensor([layer.numel / total for layer in layers], device=t.device)
            value = value + bridged_global_sparsity(exact, t, torch.cat(samples), index, h, shares, CDF_TERMS[density])
        return value

    @torch.no_grad()
    def refresh_bandwidths(self, layers: Sequence[PreparedLayer] | None = None) -> None:
        """Recompute the stale KDE bandwidths of ``layers``, batched by sample size and rule.

        Default: every layer whose threshold still decides its mask; a frozen mask reads no
        bandwidth, so after the freeze (or with fixed masks) a step recomputes none. The same
        bandwidths each layer would compute for itself (up to float rounding), with one quantile
        over a (layers, m) stack instead of one per layer.
        """
        if layers is None:
            layers = [layer for layer in self.layers if layer.mask.frozen_keep is None]
        groups: dict[tuple[int, str | float], list[PreparedLayer]] = {}
        for layer in layers:
            if not layer.mask.bandwidth_current(layer.weight):
                key = (layer.mask.kde_index.numel(), layer.mask.bandwidth_rule)
                groups.setdefault(key, []).append(layer)
        for (_, rule), group in groups.items():
            stacked = torch.stack([layer.mask.kde_values(layer.mask.score(layer.weight)) for layer in group])  # (G, m)
            for layer, h in zip(group, bandwidth(stacked, rule), strict=True):
                layer.mask.set_bandwidth(layer.weight, h)


def prepare(
    model: nn.Module,
    target_sparsity: float,
    init: str = "erk",
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

    ``init`` is an allocation rule (``erk``, ``uniform``, ``global``: see :mod:`fcpts.allocation`);
    ``density`` the smoothed CDF behind the sparsity's gradient (``kde`` or ``histogram``).
    ``score_fns`` (one per layer, None: ``|W|``) set what each threshold applies to; the allocation
    then sees those scores. ``sparsities`` (one per layer) replaces the allocation.

    >>> p = prepare(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), 0.5, init="uniform")
    >>> [layer.name for layer in p.layers], round(p.global_sparsity().item(), 2)
    (['0', '2'], 0.5)
    """
    validate_target(target_sparsity)
    chosen = prunable_layers(model, layer_filter)
    if not chosen:
        raise FcptsError("the model has no prunable layer (Conv1d/2d/3d or Linear accepted by the layer filter)")
    for name, module in chosen:
        if parametrize.is_parametrized(module, "weight"):
            raise FcptsError(f"layer {name!r} already has a weight parametrization; finalize it first")
        # A NaN/Inf weight would make every threshold, the KDE and the loss NaN: stop here, by name.
        check_finite(module.weight.detach(), f"the weight of layer {name!r}")
    weights = [module.weight.detach() for _, module in chosen]
    fns = list(score_fns) if score_fns is not None else [None] * len(chosen)
    scores = [w if fn is None else fn(w) for w, fn in zip(weights, fns, strict=True)]
    if sparsities is None:
        sparsities = allocate(init, scores, target_sparsity)
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for (name, module), w, score, fn, s in zip(chosen, weights, scores, fns, sparsities, strict=True):
        t = threshold_for_sparsity(score, s)
        mask = ThresholdMask(w, t, kde_samples, bandwidth_rule, threshold_grad, generator, density=density, score_fn=fn)
        requires_grad, order = module.weight.requires_grad, list(module._parameters)
        parametrize.register_parametrization(module, "weight", mask)
        layers.append(PreparedLayer(name, module, mask, s, requires_grad, order))
    return Prepared(model, layers, target_sparsity)


@torch.no_grad()
def exact_keep_masks(prepared: Prepared) -> list[torch.Tensor]:
    """Each layer's keep-mask (weight-shaped bool) with exactly ``round(S* · N)`` zeros in all.

    The learned thresholds corrected by the smallest common factor: one global cut of the scores
    ``|w| / t_l`` (:func:`fcpts.masks.exact_global_masks`; frozen masks rank their kept weights
    first, :meth:`ThresholdMask.ranking_score`). :func:`finalize` applies them.
    """
    k = target_zeros(prepared.target_sparsity, prepared.total)
    scores = [layer.mask.ranking_score(layer.weight).flatten().cpu() for layer in prepared.layers]
    pruned = lowest_scores(scores, k)
    return [
        ~flags.view(layer.weight.shape).to(layer.weight.device)
        for layer, flags in zip(prepared.layers, pruned, strict=True)
    ]


def finalize(prepared: Prepared) -> nn.Module:
    """Remove every threshold and return the plain model with exactly ``round(S* · N)`` zeros.

    The learned thresholds are corrected by the smallest common factor that makes the global zero
    count exact: one global cut of the scores ``|w| / t_l`` (as :func:`fcpts.masks.exact_global_masks`;
    a frozen mask ranks its kept weights above its pruned ones, see
    :meth:`ThresholdMask.ranking_score`); the kept weights keep their learned values. Afterwards
    the model holds no parametrization, hook, buffer or attribute of fcpts.

    >>> net = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 3))
    >>> plain = finalize(prepare(net, 0.7))
    >>> int(sum((m.weight == 0).sum() for m in plain)), type(plain[0]).__name__
    (91, 'Linear')
    """
    layers = prepared.layers
    with torch.no_grad():
        k = target_zeros(prepared.target_sparsity, prepared.total)
        for layer, keep in zip(layers, exact_keep_masks(prepared), strict=True):
            flags = ~keep
            module = layer.module
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            # Removal re-registers ``weight`` last; put it back in place so parameters(),
            # named_parameters() and state_dict() keep the dense model's order.
            module._parameters = {k: module._parameters[k] for k in layer.parameter_order}
            weight = module.weight
            # masked_fill, not mul: a negative weight times 0 is -0.0, which the compressed export
            # (fcpts.export) would have to store as a kept value to stay bit-exact.
            weight.masked_fill_(flags, 0.0)
            weight.requires_grad_(layer.weight_requires_grad)
    zeros = sum(int((layer.module.weight == 0).sum()) for layer in layers)
    if zeros != k:
        warnings.warn(
            f"{zeros} zeros instead of the target {k}: the model already had more exact zeros than the target",
            stacklevel=2,
        )
    return prepared.model


def validate_target(target_sparsity: float) -> None:
    if not (isinstance(target_sparsity, (int, float)) and 0.0 < target_sparsity < 1.0):
        raise FcptsError(f"target sparsity must be in the open interval (0, 1), got {target_sparsity!r}")
