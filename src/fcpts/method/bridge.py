"""The differentiable bridge: a layer's sparsity as a function of its threshold, with a KDE gradient.

The sparsity of a layer, ``s(t) = P(|W| <= t)``, is the empirical CDF of ``|W|``: a step function
whose derivative is zero almost everywhere. The bridge keeps the exact value in the forward pass
and takes the gradient of a kernel-smoothed CDF instead:

    F̂(t) = 1/m Σ_i [Φ((t - x_i)/h) - Φ((-t - x_i)/h)]        x_i: m samples of |W|
    dŝ/dt = F̂'(t) = p̂(t) = 1/(m h) Σ_i [φ((t - x_i)/h) + φ((t + x_i)/h)]

The second term reflects the kernel at 0 (magnitudes are never negative), which removes the
boundary bias of a plain Gaussian KDE near ``t = 0``. ``h`` comes from a standard rule
(Silverman's or Scott's) or is given. The cost is O(m) per layer and step: large layers are
represented by a fixed random subsample of ``m`` weights.

A histogram density (:func:`histogram_cdf`, bins of the same variance as the kernel) is the
ablation's alternative: :data:`DENSITIES` names both.

Every smoothed CDF is the mean of a per-sample term (:attr:`Density.terms`), so the bridge of all
layers at once (:func:`bridged_global_sparsity`) is one vectorised pass over every layer's samples
concatenated, with per-layer means by ``index_add``: a handful of tensor ops per training step
instead of a handful per layer (a model has tens to hundreds of layers; the ops are tiny).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..registry import Registry

_SQRT2 = math.sqrt(2.0)


def _std(samples: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation over the last dim; 0 for a single sample (a 1-weight layer), not NaN."""
    if samples.shape[-1] > 1:
        return samples.std(dim=-1)
    return torch.zeros(samples.shape[:-1], dtype=samples.dtype, device=samples.device)


def silverman_bandwidth(samples: torch.Tensor) -> torch.Tensor:
    """Silverman's rule of thumb: ``0.9 · min(σ, IQR / 1.34) · m^(-1/5)``, over the last dim of (..., m).

    >>> round(silverman_bandwidth(torch.linspace(0, 1, 101)).item(), 4)
    0.1048
    """
    q = torch.quantile(samples, torch.tensor([0.25, 0.75], dtype=samples.dtype, device=samples.device), dim=-1)
    std = _std(samples)
    spread = torch.minimum(std, (q[1] - q[0]) / 1.34)
    spread = torch.where(spread > 0, spread, std)  # IQR of 0 with a spread-out tail
    return 0.9 * spread * samples.shape[-1] ** -0.2


def scott_bandwidth(samples: torch.Tensor) -> torch.Tensor:
    """Scott's rule: ``1.06 · σ · m^(-1/5)``, over the last dim of (..., m).

    >>> round(scott_bandwidth(torch.linspace(0, 1, 101)).item(), 4)
    0.1234
    """
    return 1.06 * _std(samples) * samples.shape[-1] ** -0.2


#: Bandwidth rule name → ``rule(samples (..., m)) -> h (...)``.
BANDWIDTH_RULES: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("bandwidth rule")
BANDWIDTH_RULES.register("silverman", silverman_bandwidth)
BANDWIDTH_RULES.register("scott", scott_bandwidth)


def bandwidth(samples: torch.Tensor, rule: str | float) -> torch.Tensor:
    """The KDE bandwidth for ``samples`` (m,), or for each row of (..., m): a rule name from
    :data:`BANDWIDTH_RULES` or a number.

    Never zero: a degenerate sample (all equal) falls back to a small fraction of its magnitude.

    >>> x = torch.linspace(0, 1, 101)
    >>> rows = bandwidth(torch.stack([x, 2 * x]), "silverman")  # (2,): one per row
    >>> torch.allclose(rows, torch.stack([bandwidth(x, "silverman"), bandwidth(2 * x, "silverman")]))
    True
    """
    if isinstance(rule, str):
        h = BANDWIDTH_RULES.get(rule)(samples)
    else:
        h = torch.full(samples.shape[:-1], float(rule), dtype=samples.dtype, device=samples.device)
    floor = 1e-3 * samples.abs().mean(dim=-1) + torch.finfo(samples.dtype).tiny
    return torch.maximum(h, floor)


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / _SQRT2))


def kde_terms(t: torch.Tensor, samples: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Each sample's share of the reflected KDE's CDF: ``Φ((t − x)/h) − Φ((−t − x)/h)`` (broadcast)."""
    return _normal_cdf((t - samples) / h) - _normal_cdf((-t - samples) / h)


def kde_cdf(t: torch.Tensor, samples: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Kernel-smoothed CDF of the magnitudes ``samples`` (m,) at ``t`` (scalar), reflected at 0.

    >>> x = torch.tensor([1.0, 2.0, 3.0])
    >>> h = torch.tensor(1e-3)
    >>> kde_cdf(torch.tensor(0.0), x, h).item(), round(kde_cdf(torch.tensor(2.0), x, h).item(), 3)
    (0.0, 0.5)
    """
    return kde_terms(t, samples, h).mean()


def kde_density(t: torch.Tensor, samples: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Reflected Gaussian KDE of ``samples`` (m,) at ``t``: the derivative of :func:`kde_cdf`."""
    z1, z2 = (t - samples) / h, (t + samples) / h
    return (torch.exp(-0.5 * z1**2) + torch.exp(-0.5 * z2**2)).mean() / (h * math.sqrt(2 * math.pi))


def histogram_cdf(t: torch.Tensor, samples: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The CDF of a histogram of ``samples`` (m,) at ``t`` (scalar): linear inside each bin.

    Bins start at 0 and have width ``w = √12 · h``, a box of the Gaussian kernel's variance, so the
    two densities smooth on the same scale. The slope in ``t``'s bin, the histogram density
    ``count / (m w)``, is the bridge's gradient; at the bin edges the value is the empirical CDF.

    >>> x = torch.tensor([0.1, 0.2, 0.3, 0.7])
    >>> h = torch.tensor(0.5 / 12**0.5)  # bins [0, 0.5), [0.5, 1)
    >>> [round(histogram_cdf(torch.tensor(t), x, h).item(), 3) for t in (0.25, 0.5, 0.75)]
    [0.375, 0.75, 0.875]
    """
    return histogram_terms(t, samples, h).mean()


def histogram_terms(t: torch.Tensor, samples: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Each sample's share of :func:`histogram_cdf`: 1 below ``t``'s bin, ``(t − lo)/w`` inside it (broadcast)."""
    width = h * math.sqrt(12.0)
    lo = torch.floor(t.detach() / width) * width  # left edge of t's bin (no gradient: a step)
    inside = (samples >= lo) & (samples < lo + width)
    return (samples < lo).to(samples.dtype) + inside.to(samples.dtype) * (t - lo) / width


CdfFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Density:
    """A smoothed CDF of the magnitudes, ``cdf(t, samples, h)`` (its slope is the bridge's ds/dt), and
    the per-sample ``terms(t, samples, h)`` whose mean it is (for the batched bridge)."""

    cdf: CdfFn
    terms: CdfFn


#: Density name → :class:`Density`: ``kde`` (the paper) and ``histogram`` (the ablation's).
DENSITIES: Registry[Density] = Registry("density")
DENSITIES.register("kde", Density(kde_cdf, kde_terms))
DENSITIES.register("histogram", Density(histogram_cdf, histogram_terms))


def bridged_sparsity(
    weight: torch.Tensor,
    threshold: torch.Tensor,
    samples: torch.Tensor,
    h: torch.Tensor,
    cdf: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = kde_cdf,
) -> torch.Tensor:
    """Exact sparsity ``mean(|W| <= t)`` in the forward pass, gradient ``p̂(t)`` in the backward.

    ``weight`` is detached (the bridge moves thresholds, not weights); ``samples`` (m,) are
    magnitudes of that layer's weights, ``h`` their bandwidth; ``cdf`` the smoothed CDF whose
    slope is the gradient (default: the reflected KDE).

    >>> w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    >>> t = torch.tensor(0.25, requires_grad=True)
    >>> s = bridged_sparsity(w, t, w.abs(), torch.tensor(0.1))
    >>> s.item(), s.backward(), round(t.grad.item(), 3)
    (0.5, None, 2.41)
    """
    exact = (weight.detach().abs() <= threshold.detach()).float().mean()
    smooth = cdf(threshold, samples.detach(), h.detach())
    return exact + (smooth - smooth.detach())


def bridged_global_sparsity(
    exact: torch.Tensor,
    thresholds: torch.Tensor,
    samples: torch.Tensor,
    index: torch.Tensor,
    h: torch.Tensor,
    shares: torch.Tensor,
    terms: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = kde_terms,
) -> torch.Tensor:
    """``Σ_l shares_l · s_l``: the exact value, and for each layer the gradient of :func:`bridged_sparsity`.

    All layers in one pass. ``exact`` (L,) are the layers' exact sparsities, ``thresholds`` and
    ``h`` (L,) their thresholds and bandwidths, ``samples`` (M,) every layer's KDE samples
    concatenated, ``index`` (M,) the layer of each sample, ``shares`` (L,) the weights of the sum
    (``n_l / N``: the global sparsity); ``terms`` the smoothed CDF's per-sample terms (:attr:`Density.terms`).

    >>> x = torch.tensor([0.1, 0.2, 0.3, 0.4])
    >>> t = torch.tensor([0.25, 0.25], requires_grad=True)
    >>> index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # two layers of the same 4 magnitudes
    >>> exact, h, shares = torch.tensor([0.5, 0.5]), torch.tensor([0.1, 0.1]), torch.tensor([0.25, 0.75])
    >>> s = bridged_global_sparsity(exact, t, torch.cat([x, x]), index, h, shares)
    >>> s.item(), s.backward(), [round(g, 3) for g in t.grad.tolist()]
    (0.5, None, [0.603, 1.808])
    """
    per_sample = terms(thresholds[index], samples.detach(), h.detach()[index])  # (M,)
    counts = torch.bincount(index, minlength=exact.numel()).to(per_sample.dtype)  # (L,) samples per layer
    smooth = torch.zeros_like(exact).index_add(0, index, per_sample) / counts  # (L,) each layer's smoothed CDF
    return (shares * (exact + (smooth - smooth.detach()))).sum()
