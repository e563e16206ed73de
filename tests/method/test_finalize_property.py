"""Property: ``finalize(prepare(...))`` always leaves exactly ``round(target · N)`` zeros.

Over random stacks of 1-4 Linear/Conv2d layers, targets in (0, 1), seeds, initial allocations
(uniform, ERK, global) and weights that are continuous, integer-valued (many ties at the cut) or
all of one magnitude (every weight tied), with any number of exact zeros up to the target count.
"""

from __future__ import annotations

import warnings

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import fcpts
from fcpts.core.masks import target_zeros

LINEAR = st.tuples(st.just("linear"), st.integers(1, 12), st.integers(1, 12))
CONV = st.tuples(st.just("conv"), st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
LAYERS = st.lists(st.one_of(LINEAR, CONV), min_size=1, max_size=4)


def build(specs: list[tuple], kind: str, seed: int) -> nn.Sequential:
    """Layers of the given shapes (they need not chain: prepare/finalize never run forward)."""
    layers: list[nn.Module] = []
    for spec in specs:
        if spec[0] == "linear":
            layers.append(nn.Linear(spec[2], spec[1]))
        else:
            layers.append(nn.Conv2d(spec[2], spec[1], spec[3]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            w = layer.weight
            if kind == "integer":  # values in ±{1, 2, 3}: heavy ties, zeros are added separately
                values = torch.randint(1, 4, w.shape, generator=gen).float()
                w.copy_(values * (torch.randint(0, 2, w.shape, generator=gen) * 2 - 1))
            elif kind == "constant":  # one magnitude everywhere: only the tie-break decides
                w.copy_(torch.full(w.shape, 0.5) * (torch.randint(0, 2, w.shape, generator=gen) * 2 - 1))
            else:  # continuous, with per-layer scales ten orders of magnitude apart
                scale = 10.0 ** torch.randint(-5, 5, (1,), generator=gen).item()
                w.copy_(torch.randn(w.shape, generator=gen) * scale)
    return nn.Sequential(*layers)


@settings(max_examples=150, deadline=None)
@given(
    specs=LAYERS,
    target=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**16),
    init=st.sampled_from(["uniform", "erk", "global"]),
    kind=st.sampled_from(["normal", "integer", "constant"]),
    data=st.data(),
)
def test_finalize_hits_the_exact_zero_count(specs, target, seed, init, kind, data):
    model = build(specs, kind, seed)
    weights = [m.weight for m in model]
    total = sum(w.numel() for w in weights)
    k = target_zeros(target, total)
    # Exact zeros already in the model, anywhere, up to the target count (more cannot be undone).
    flat_zeros = data.draw(st.integers(0, k), label="exact zeros before")
    if flat_zeros:
        positions = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:flat_zeros]
        with torch.no_grad():
            flat = torch.cat([w.detach().flatten() for w in weights])
            flat[positions] = 0.0
            offset = 0
            for w in weights:
                w.copy_(flat[offset : offset + w.numel()].view(w.shape))
                offset += w.numel()
    before = [w.detach().clone() for w in weights]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finalize warns when it misses the count: that is a failure
        plain = fcpts.finalize(fcpts.prepare(model, target, init=init, seed=seed))

    after = [m.weight.detach() for m in plain]
    assert sum(int((w == 0).sum()) for w in after) == k
    for old, new in zip(before, after, strict=True):
        kept = new != 0
        assert torch.equal(new[kept], old[kept])  # kept weights keep their values: only zeros are made
    assert not any(parametrize.is_parametrized(m) for m in plain)
