"""One layer's KDE sample: a fixed random subsample of its scores, and their bandwidth, cached.

The bridge (:mod:`.bridge`) costs O(m) per layer and step, so a large layer is represented by
``m`` of its weights, drawn once without replacement (seeded: the same draw on every run and
rank). Their bandwidth (a quantile: a sort of ``m`` values) is read twice per step, by the
surrogate mask and by the bridge, so it is kept until the weights change: an in-place optimizer
step bumps the weight tensor's version counter, which makes the cached value stale. A
:meth:`KdeSample.fix`-ed bandwidth is kept whatever the weights become (``bandwidth_update="once"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import bridge


class KdeSample(nn.Module):
    """The KDE subsample (``index``: ``m`` flat positions) of one layer, and its cached bandwidth.

    ``index`` is a non-persistent buffer: it follows the module's device and never reaches a
    state dict (the seed gives it back).

    >>> kde = KdeSample(10, 4, "silverman", torch.Generator().manual_seed(0))
    >>> kde.size, kde.values(-torch.arange(10.0).view(2, 5)).shape
    (4, torch.Size([4]))
    """

    def __init__(
        self,
        numel: int,
        size: int,
        rule: str | float,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        index = torch.randperm(numel, generator=generator)[: min(numel, size)]  # (m,)
        self.register_buffer("index", index.to(device), persistent=False)
        self.rule = rule  # a rule name of bridge.BANDWIDTH_RULES or a number
        self._key: tuple[int, int] | None = None  # (data_ptr, version) of the weights it belongs to
        self._bandwidth = torch.ones(())
        self.fixed = False  # True: the cached bandwidth stays, whatever the weights become (fix)

    @property
    def size(self) -> int:
        """``m``: how many samples the KDE reads."""
        return self.index.numel()

    def values(self, score: torch.Tensor) -> torch.Tensor:
        """The subsample (m,) of a weight-shaped ``score``, as float32 magnitudes."""
        return score.flatten()[self.index].abs().float()

    def bandwidth(self, weight: torch.Tensor, score_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The bandwidth (scalar) of the subsample of ``score_of(weight)``, cached until ``weight`` changes."""
        if not self.is_current(weight):
            self.store(weight, bridge.bandwidth(self.values(score_of(weight)), self.rule))
        return self._bandwidth

    def is_current(self, weight: torch.Tensor) -> bool:
        """Whether the cached bandwidth belongs to ``weight`` as it is now (always, once fixed)."""
        return self.fixed or self._key == (weight.data_ptr(), weight._version)

    def fix(self, weight: torch.Tensor, score_of: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Compute the bandwidth of ``weight`` as it is now and keep it from now on.

        >>> kde = KdeSample(10, 10, "silverman")
        >>> w = torch.linspace(0.1, 1.0, 10)
        >>> kde.fix(w, torch.abs); h = kde.bandwidth(w, torch.abs).item()
        >>> _ = w.mul_(2); kde.bandwidth(w, torch.abs).item() == h
        True
        """
        self.fixed = False
        self.bandwidth(weight, score_of)
        self.fixed = True

    def store(self, weight: torch.Tensor, h: torch.Tensor) -> None:
        """Cache ``h`` (scalar) as the bandwidth of ``weight`` at its current version.

        :meth:`fcpts.method.prepare.Prepared.refresh_bandwidths` fills it for many layers at once.
        """
        self._bandwidth, self._key = h, (weight.data_ptr(), weight._version)
