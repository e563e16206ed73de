"""Depthwise and grouped convolutions, any padding, Conv1d: every activation-based method.

Each piece is checked against a reference built independently of :mod:`fcpts.activations`: the
columns of group ``g`` come from the conv's own forward pass with one-hot weights (column ``j`` of
``X_g`` is the output of an output channel of group ``g`` whose only weight is a 1 at ``j``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fcpts
from fcpts.baselines.sparsegpt import sparsegpt_prune, sparsegpt_prune_grouped
from fcpts.core import grouped_input, lag_gram
from fcpts.core.activations import gram, input_columns, input_norms
from fcpts.core.calibration import Calibration
from fcpts.core.refit import refit_layers, refit_rows
from fcpts.core.scoring import layer_scores
from fcpts.errors import FcptsError

#: (constructor, input shape): strides, dilations, every padding kind and mode, depthwise multipliers.
CONVS = {
    "grouped-reflect": (lambda: nn.Conv2d(4, 8, 3, groups=2, padding=1, padding_mode="reflect"), (3, 4, 7, 6)),
    "depthwise-stride2": (lambda: nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), (2, 8, 9, 8)),
    "depthwise-x2-same-dilated": (
        lambda: nn.Conv2d(4, 8, (3, 2), padding="same", dilation=2, groups=4, padding_mode="circular"),
        (2, 4, 6, 7),
    ),
    "grouped-replicate-stride": (
        lambda: nn.Conv2d(6, 9, 3, stride=(2, 1), padding=(2, 1), dilation=(1, 2), groups=3, padding_mode="replicate"),
        (2, 6, 8, 8),
    ),
    "grouped-valid": (lambda: nn.Conv2d(4, 4, 2, padding="valid", groups=2), (2, 4, 5, 5)),
    "groups1-same-zeros": (lambda: nn.Conv2d(3, 4, 4, padding="same"), (2, 3, 6, 6)),
    "groups1-reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 5, 5)),
    "conv1d-depthwise-same": (lambda: nn.Conv1d(4, 4, 4, padding="same", groups=4, padding_mode="reflect"), (3, 4, 9)),
    "conv1d-grouped-stride": (lambda: nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2), (2, 4, 11)),
    "conv1d-groups1": (lambda: nn.Conv1d(3, 2, 3, padding=1), (2, 3, 7)),
}


def make_conv(key: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    ctor, shape = CONVS[key]
    return ctor(), torch.randn(shape)


def reference_columns(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(groups, rows, cols) from the conv's own forward pass with one-hot weights (no unfold)."""
    per = conv.out_channels // conv.groups
    cols = conv.weight[0].numel()
    probe = copy.deepcopy(conv)
    probe.bias = None
    columns = []
    with torch.no_grad():
        for j in range(cols):
            probe.weight.zero_()
            probe.weight.view(conv.groups, per, cols)[:, 0, j] = 1.0  # the first channel of every group
            y = probe(x)[:, ::per]  # (B, groups, ...)
            columns.append(y.flatten(2).permute(1, 0, 2).reshape(conv.groups, -1))  # (groups, B·positions)
    return torch.stack(columns, dim=2)


def group_outputs(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The conv's output without bias as (groups, rows, out/groups)."""
    probe = copy.deepcopy(conv)
    probe.bias = None
    with torch.no_grad():
        out = probe(x)  # (B, out, ...)
    per = conv.out_channels // conv.groups
    b = out.shape[0]
    return out.flatten(2).view(b, conv.groups, per, -1).permute(1, 0, 3, 2).reshape(conv.groups, -1, per)


def as_groups(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(groups, rows, cols), a plain layer's (rows, cols) as one group."""
    return t.unsqueeze(0) if groups == 1 else t


# --- (a) columns, norms and Gram matrices per group ---------------------------------------------


@pytest.mark.parametrize("key", list(CONVS))
def test_group_columns_match_the_conv_and_the_one_hot_reference(key):
    conv, x = make_conv(key)
    cols = as_groups(input_columns(conv, x), conv.groups)
    ref = reference_columns(conv, x)
    assert cols.shape == ref.shape
    torch.testing.assert_close(cols, ref, rtol=0, atol=1e-6)
    # W_g @ cols_g is group g's output channels.
    w = conv.weight.detach().reshape(conv.groups, conv.out_channels // conv.groups, -1)
    torch.testing.assert_close(cols @ w.transpose(1, 2), group_outputs(conv, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", [k for k in CONVS if "groups1" not in k])
@pytest.mark.parametrize("chunk", [None, 7, 100])
@pytest.mark.parametrize("lag_sums", [True, False], ids=["lag-sums", "unfolded"])
def test_norms_and_grams_are_per_group_and_blockwise_exact(key, chunk, lag_sums, monkeypatch):
    if chunk is not None:  # tiny blocks: one group, a few samples at a time
        monkeypatch.setattr(grouped_input, "CHUNK_ELEMENTS", chunk)
    if not lag_sums:  # a depthwise conv's Gram matrices unfolded, as without the C++ kernel
        monkeypatch.setattr(grouped_input, "library", lambda: None)
    elif lag_gram.library() is None:
        pytest.skip("no C++ compiler: the lag-sum kernel is not built (the unfolded case covers this machine)")
    conv, x = make_conv(key)
    student = nn.Sequential(nn.Identity(), conv)
    dense = copy.deepcopy(student)
    with torch.no_grad():
        dense[1].weight.mul_(2.0)  # the same input: the cross term equals the Gram
    batches = [x[:1], x[1:]]
    ref = reference_columns(conv, x).double()
    norms = input_norms(student, {"1": conv}, batches)["1"]
    assert norms.shape == (conv.groups, conv.weight[0].numel())
    torch.testing.assert_close(norms.double(), ref.norm(dim=1), rtol=1e-5, atol=1e-5)
    g, c, rows = gram(student, "1", batches, reference=dense)
    assert rows == ref.shape[1]
    expected = ref.transpose(1, 2) @ ref
    torch.testing.assert_close(g.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(c.double(), expected, rtol=1e-5, atol=1e-4)


def test_cross_gram_pairs_the_pruned_and_dense_inputs_of_each_group():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1))
    dense = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight[:, :, 0] = 0.0  # the pruned model's first layer
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        x_s, x_d = model[1](model[0](x)), dense[1](dense[0](x))
    ref_s, ref_d = reference_columns(model[2], x_s).double(), reference_columns(dense[2], x_d).double()
    g, c, _ = gram(model, "2", [x[:2], x[2:]], reference=dense)
    torch.testing.assert_close(g.double(), ref_s.transpose(1, 2) @ ref_s, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(c.double(), ref_s.transpose(1, 2) @ ref_d, rtol=1e-5, atol=1e-4)


def test_conv3d_is_refused_clearly():
    with pytest.raises(FcptsError, match="Conv3d"):
        input_columns(nn.Conv3d(2, 2, 3), torch.zeros(1, 2, 4, 4, 4))


# --- (b) Wanda ------------------------------------------------------------------------------------


def test_wanda_scores_are_weight_times_the_groups_column_norms():
    conv, x = make_conv("depthwise-x2-same-dilated")
    ref = reference_columns(conv, x)
    scores = layer_scores(conv, {"": conv}, Calibration(x, 1), "wanda")[0]
    per = conv.out_channels // conv.groups
    norms = ref.norm(dim=1).repeat_interleave(per, 0)  # (out, cols): row r takes its group's norms
    expected = conv.weight.detach().flatten(1).abs() * norms
    torch.testing.assert_close(scores.flatten(1), expected, rtol=1e-5, atol=1e-6)


# --- (c) SparseGPT --------------------------------------------------------------------------------


def hessians(conv: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ref = reference_columns(conv, x).double()
    return ref, 2 * ref.transpose(1, 2) @ ref / ref.shape[1]


def group_errors(ref: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor, groups: int) -> torch.Tensor:
    """``‖X_g (W_g − Ŵ_g)ᵀ‖²`` per group."""
    d = (w - w_hat).double().reshape(groups, w.shape[0] // groups, -1)
    return ((ref @ d.transpose(1, 2)) ** 2).sum((1, 2))


def test_sparsegpt_without_zeros_reproduces_the_layer():
    conv, x = make_conv("grouped-reflect")
    _, h = hessians(conv, x)
    w = conv.weight.detach()
    assert torch.equal(sparsegpt_prune(w, h.float(), zeros=0), w)


@pytest.mark.parametrize("key", ["grouped-reflect", "depthwise-x2-same-dilated", "grouped-replicate-stride"])
@pytest.mark.parametrize("blocksize", [128, 4])
def test_sparsegpt_beats_the_magnitude_mask_in_every_group(key, blocksize):
    conv, x = make_conv(key)
    ref, h = hessians(conv, x)
    w = conv.weight.detach()
    zeros = round(0.5 * w.numel())
    pruned = sparsegpt_prune(w, h.float(), zeros=zeros, blocksize=blocksize, damp=1e-4)
    assert int((pruned == 0).sum()) == zeros
    per_group = (pruned == 0).reshape(conv.groups, -1).sum(1)
    errors = group_errors(ref, w, pruned, conv.groups)
    same_mask = group_errors(ref, w, w * (pruned != 0), conv.groups)  # SparseGPT's mask, no update
    magnitude = torch.zeros(conv.groups, dtype=torch.float64)
    for g, (wg, k) in enumerate(zip(w.reshape(conv.groups, -1), per_group.tolist(), strict=True)):
        masked = wg.clone()
        masked[torch.sort(wg.abs(), stable=True).indices[:k]] = 0.0  # the same count in the group
        d = (wg - masked).double().reshape(conv.out_channels // conv.groups, -1)
        magnitude[g] = ((ref[g] @ d.T) ** 2).sum()
    assert errors.sum() < magnitude.sum()
    assert errors.sum() < same_mask.sum()
    # Column by column, SparseGPT is greedy (a weight it moves may be pruned later): a group can lose
    # by a hair, e.g. 11.5969 against 11.5953 (magnitude mask, and its own mask without the update) in
    # one group of depthwise-x2-same-dilated at blocksize 128.
    assert (errors <= 1.001 * magnitude).all(), (errors, magnitude)
    assert (errors <= 1.001 * same_mask).all(), (errors, same_mask)


def test_sparsegpt_grouped_equals_the_plain_solver_per_group():
    conv, x = make_conv("grouped-reflect")
    _, h = hessians(conv, x)
    w = conv.weight.detach().double()
    # One group: exactly the plain solver's problem.
    one = sparsegpt_prune_grouped(w[:4], h[:1], zeros=17, blocksize=8)
    torch.testing.assert_close(one, sparsegpt_prune(w[:4], h[0], zeros=17, blocksize=8), rtol=1e-10, atol=1e-12)
    # N:M: every row chooses on its own, so each group is the plain solver on H_g.
    nm = sparsegpt_prune(w, h, blocksize=8, pattern=(2, 3))
    for g in range(2):
        plain = sparsegpt_prune(w[4 * g : 4 * g + 4], h[g], blocksize=8, pattern=(2, 3))
        torch.testing.assert_close(nm[4 * g : 4 * g + 4], plain, rtol=1e-10, atol=1e-12)
    assert ((nm.flatten(1).view(8, -1, 3) == 0).sum(-1) == 2).all()


# --- (d) POT's refit ------------------------------------------------------------------------------


def test_refit_minimises_each_groups_ridge_least_squares():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=8, padding=1))
    dense = copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight[:, :, 1] = 0.0
    x = torch.randn(4, 4, 5, 5)
    with torch.no_grad():
        x_s, x_d = model[1](model[0](x)), dense[1](dense[0](x))
    ref_s, ref_d = reference_columns(model[2], x_s).double(), reference_columns(dense[2], x_d).double()
    keep = torch.rand(16, 1, 3, 3) > 0.4
    damp = 0.05
    g, c, _ = gram(model, "2", [x], reference=dense)
    refit = refit_rows(dense[2].weight, keep, g, c, damp)
    w = dense[2].weight.detach().double().flatten(1)
    for r in range(16):
        grp = r // 2
        idx = keep[r].flatten().nonzero().squeeze(1)
        lam = damp * (ref_s[grp] ** 2).sum(0).mean()  # λ_g = damp · mean(diag X̃_gᵀX̃_g)
        a = torch.cat([ref_s[grp][:, idx], lam.sqrt() * torch.eye(idx.numel(), dtype=torch.float64)])
        b = torch.cat([ref_d[grp] @ w[r], torch.zeros(idx.numel(), dtype=torch.float64)])
        expected = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(refit.flatten(1)[r, idx].double(), expected, rtol=1e-4, atol=1e-5)
        assert (refit.flatten(1)[r][~keep[r].flatten()] == 0).all()
    # refit_layers writes exactly those values into the kept weights, and leaves the pruned ones alone.
    weight = model[2].weight
    with torch.no_grad():
        weight.masked_fill_(~keep, 0.0)
    refit_layers(model, dense, {"2": (weight, keep)}, Calibration(x, 4), damp)
    torch.testing.assert_close(weight, refit, rtol=1e-5, atol=1e-6)
    assert int((weight == 0).sum()) == int((~keep).sum())


# --- (e) every activation-based method on a tiny depthwise net -------------------------------------


class DepthwiseNet(nn.Module):
    """grouped 4→8 (reflect) → depthwise ×2 8→16 stride 2 (replicate) → BN → depthwise 16→16 'same'
    dilation 2 (circular) → pointwise 16→8 → Linear(128→7), on 4×8×8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 8, 3, groups=2, padding=1, padding_mode="reflect")
        self.dw = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8, padding_mode="replicate", bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw2 = nn.Conv2d(16, 16, 3, padding="same", dilation=2, groups=16, padding_mode="circular")
        self.pw = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(128, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.grouped(x))
        x = torch.relu(self.bn(self.dw(x)))
        x = torch.relu(self.pw(torch.relu(self.dw2(x))))
        return self.fc(x.flatten(1))


class Conv1dNet(nn.Module):
    """Conv1d: depthwise 4→4 'same' (reflect) → grouped 4→6 stride 2 → Linear(6·5→3), on 4×10 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv1d(4, 4, 3, padding="same", groups=4, padding_mode="reflect")
        self.grouped = nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(30, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.grouped(torch.relu(self.dw(x)))).flatten(1))


NETS = {"depthwise": (DepthwiseNet, (48, 4, 8, 8)), "conv1d": (Conv1dNet, (48, 4, 10))}
FAST = {"iters": 3, "batch_size": 16}
METHOD_CASES = {
    "sparsegpt": ("sparsegpt", {}),
    "wanda": ("wanda", {}),
    "owl-wanda": ("owl-wanda", {}),
    "pot": ("pot", {}),
    "pot-wanda": ("pot", {"importance": "wanda"}),
    "fcpts-wanda": ("fcpts", {**FAST, "importance": "wanda"}),
    "fcpts-refit": ("fcpts", {**FAST, "refit_init": True}),
    "fcpts-wanda-refit": ("fcpts", {**FAST, "importance": "wanda", "refit_init": True}),
}


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_every_activation_method_hits_the_exact_count(case, net):
    method, extra = METHOD_CASES[case]
    torch.manual_seed(0)
    cls, shape = NETS[net]
    model = cls()
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)))
    result = fcpts.prune(model, x, fcpts.make_config(method, target_sparsity=0.613, **extra))
    layers = [m for m in result.model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros == result.zeros == round(0.613 * total)
    assert all(torch.isfinite(m.weight).all() for m in layers)
    assert torch.isfinite(result.model(x)).all()
