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
ablation's alternative: :data:`SMOOTH_CDFS` names both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

_SQRT2 = math.sqrt(2.0)


def _std(samples: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation; 0 for a single sample (a 1-weight layer), not NaN and a warning."""
    return samples.std() if samples.numel() > 1 else torch.zeros((), dtype=samples.dtype, device=samples.device)


def silverman_bandwidth(samples: torch.Tensor) -> torch.Tensor:
    """Silverman's rule of thumb: ``0.9 · min(σ, IQR / 1.34) · m^(-1/5)``.

    >>> round(silverman_bandwidth(torch.linspace(0, 1, 101)).item(), 4)
    0.1048
    """
    q = torch.quantile(samples, torch.tensor([0.25, 0.75], dtype=samples.dtype, device=samples.device))
    std = _std(samples)
    spread = torch.minimum(std, (q[1] - q[0]) / 1.34)
    spread = torch.where(spread > 0, spread, std)  # IQR of 0 with a spread-out tail
    return 0.9 * spread * samples.numel() ** -0.2


def scott_bandwidth(samples: torch.Tensor) -> torch.Tensor:
    """Scott's rule: ``1.06 · σ · m^(-1/5)``.

    >>> round(scott_bandwidth(torch.linspace(0, 1, 101)).item(), 4)
    0.1234
    """
    return 1.06 * _std(samples) * samples.numel() ** -0.2


BANDWIDTH_RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silverman": silverman_bandwidth,
    "scott": scott_bandwidth,
}


def bandwidth(samples: torch.Tensor, rule: str | float) -> torch.Tensor:
    """The KDE bandwidth for ``samples`` (m,): a rule name from :data:`BANDWIDTH_RULES` or a number.

    Never zero: a degenerate sample (all equal) falls back to a small fraction of its magnitude.
    """
    if isinstance(rule, str):
        if rule not in BANDWIDTH_RULES:
            raise ValueError(f"unknown bandwidth rule {rule!r}; choose from {sorted(BANDWIDTH_RULES)} or a number")
        h = BANDWIDTH_RULES[rule](samples)
    else:
        h = torch.as_tensor(float(rule), dtype=samples.dtype, device=samples.device)
    floor = 1e-3 * samples.abs().mean() + torch.finfo(samples.dtype).tiny
    return torch.maximum(h, floor)


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / _SQRT2))


def kde_cdf(t: torch.Tensor, samples: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Kernel-smoothed CDF of the magnitudes ``samples`` (m,) at ``t`` (scalar), reflected at 0.

    >>> x = torch.tensor([1.0, 2.0, 3.0])
    >>> h = torch.tensor(1e-3)
    >>> kde_cdf(torch.tensor(0.0), x, h).item(), round(kde_cdf(torch.tensor(2.0), x, h).item(), 3)
    (0.0, 0.5)
    """
    return (_normal_cdf((t - samples) / h) - _normal_cdf((-t - samples) / h)).mean()


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
    width = h * math.sqrt(12.0)
    lo = torch.floor(t.detach() / width) * width  # left edge of t's bin (no gradient: a step)
    below = (samples < lo).float().mean()
    inside = ((samples >= lo) & (samples < lo + width)).float().mean()
    return below + inside * (t - lo) / width


#: Smoothed CDFs of the magnitudes, ``cdf(t, samples, h)``: their slope is the bridge's ds/dt.
SMOOTH_CDFS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "kde": kde_cdf,
    "histogram": histogram_cdf,
}


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
