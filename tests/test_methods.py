"""The score-based methods (Wanda, OWL, SparseGPT, POT, fcpts with an importance) and N:M patterns."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import FACTORY_TOTAL, TINY_TOTAL, load_factory
from safetensors.torch import load_file
from torch import nn

import fcpts
from fcpts.baselines.sparsegpt import sparsegpt_prune
from fcpts.core.activations import input_columns, input_norms
from fcpts.core.allocation import achieved, owl
from fcpts.core.calibration import Calibration
from fcpts.core.masks import layer_counts
from fcpts.core.refit import refit_rows
from fcpts.method.fcpts import prepare_from_config

#: Every registered method with the extra options that keep it fast on the tiny net.
FAST = {"fcpts": {"iters": 3, "batch_size": 16}}
ALL_METHODS = sorted(fcpts.METHODS)
#: (method, extra options) for every method, plus fcpts thresholding the Wanda score.
CASES = [(m, FAST.get(m, {})) for m in ALL_METHODS] + [
    ("fcpts", {**FAST["fcpts"], "importance": "wanda"}),
    ("fcpts", {**FAST["fcpts"], "importance": "wanda", "refit_init": True}),
]
IDS = [f"{m}-{e.get('importance', '')}{'-refit' if e.get('refit_init') else ''}" for m, e in CASES]


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in fcpts.prunable_layers(model)}


# --- Wanda ----------------------------------------------------------------------------------------


def wanda_case() -> tuple[nn.Linear, torch.Tensor]:
    """A 1×8 Linear with weights 8..1 and one calibration row: column norms [0.1, 1, 1, 1, 10, 10, 10, 10]."""
    fc = nn.Linear(8, 1)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]))
    x = torch.tensor([[0.1, 1.0, -1.0, 1.0, 10.0, -10.0, 10.0, 10.0]])
    return fc, x


def test_wanda_mask_on_a_1x8_linear():
    # Scores |W|·‖X_j‖ = [0.8, 7, 6, 5, 40, 30, 20, 10]: the four lowest are the first four columns,
    # exactly the weights magnitude pruning would keep.
    fc, x = wanda_case()
    result = fcpts.prune(fc, x, fcpts.make_config("wanda", target_sparsity=0.5))
    assert (result.model.weight != 0).int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    assert result.model.weight[0, 4:].tolist() == [4.0, 3.0, 2.0, 1.0]
    magnitude = fcpts.prune(fc, x, fcpts.make_config("uniform-magnitude", target_sparsity=0.5))
    assert (magnitude.model.weight != 0).int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_fcpts_threshold_on_the_wanda_score():
    # No learning (iters=0): the uniform threshold on the Wanda score gives Wanda's mask.
    fc, x = wanda_case()
    config = fcpts.FCPTSConfig(target_sparsity=0.5, iters=0, init="uniform", importance="wanda")
    result = fcpts.prune(fc, x, config)
    assert (result.model.weight != 0).int().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    plain = fcpts.prune(fc, x, fcpts.FCPTSConfig(target_sparsity=0.5, iters=0, init="uniform"))
    assert (plain.model.weight != 0).int().tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]


def test_conv_columns_reproduce_the_conv_and_their_norms():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    x = torch.randn(4, 2, 7, 7)
    cols = input_columns(conv, x)  # (4·4·4, 18)
    y = conv(x)  # (4, 3, 4, 4)
    assert cols.shape == (64, 18)
    expected = y.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(cols @ conv.weight.flatten(1).T, expected, rtol=1e-5, atol=1e-5)
    norms = input_norms(conv, {"c": conv}, [x[:2], x[2:]])["c"]
    torch.testing.assert_close(norms, cols.norm(dim=0))


# --- OWL ------------------------------------------------------------------------------------------


def test_owl_sparsities_add_up_to_the_target_exactly():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(n, generator=g) for n in (50, 333, 1000, 77)]
    scores[1][:20] = 100.0  # the layer with the most outliers
    target = 0.7
    sparsities = owl(scores, target)
    assert achieved(sparsities, scores) == pytest.approx(target, abs=1e-12)
    assert min(range(4), key=lambda i: sparsities[i]) == 1
    assert max(sparsities) - min(sparsities) == pytest.approx(2 * 0.08)
    counts = layer_counts(sparsities, [s.numel() for s in scores], round(target * 1460))
    assert sum(counts) == round(target * 1460)


# --- SparseGPT ------------------------------------------------------------------------------------


def test_sparsegpt_update_equals_the_closed_form_obs_solution():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    h = 2 * x.T @ x / 64
    w = torch.randn(3, 6, generator=g, dtype=torch.float64) + 2.0
    w[:, :2] = 1e-3  # the two lowest-saliency columns: pruned in every row
    damp = 0.01
    pruned = sparsegpt_prune(w, h, zeros=6, blocksize=128, damp=damp)

    # Closed-form OBS for the fixed mask P = {0, 1}: δ = −H⁻¹[:, P] (H⁻¹[P, P])⁻¹ w_P for every row.
    hd = h + damp * torch.diagonal(h).mean() * torch.eye(6, dtype=torch.float64)
    hinv = torch.linalg.inv(hd)
    p = [0, 1]
    expected = w - (hinv[:, p] @ torch.linalg.solve(hinv[p][:, p], w[:, p].T)).T
    assert (pruned[:, :2] == 0).all()
    torch.testing.assert_close(pruned, expected, rtol=1e-9, atol=1e-12)


def test_sparsegpt_nm_and_blocksize():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 16, generator=g)
    w = torch.randn(5, 16, generator=g)
    for blocksize in (8, 6, 128):  # 6: rounded down to 4, so no group straddles two blocks
        out = sparsegpt_prune(w, 2 * x.T @ x / 40, blocksize=blocksize, pattern=(2, 4))
        assert ((out.view(5, 4, 4) == 0).sum(-1) == 2).all()
        kept = out != 0
        assert not torch.equal(out[kept], w[kept])  # the kept weights were updated
    exact = sparsegpt_prune(w, 2 * x.T @ x / 40, zeros=33, blocksize=5)
    assert int((exact == 0).sum()) == 33


# --- POT ------------------------------------------------------------------------------------------


def test_pot_refit_is_the_ridge_least_squares_solution():
    torch.manual_seed(0)
    fc = nn.Linear(6, 2, bias=False)
    x = torch.randn(32, 6)
    damp = 0.01
    result = fcpts.prune(fc, x, fcpts.make_config("pot", target_sparsity=0.5, damp=damp, batch_size=8))
    w, new = fc.weight.detach().double(), result.model.weight.detach().double()
    assert int((new == 0).sum()) == 6
    xd = x.double()
    g = xd.T @ xd
    lam = damp * torch.diagonal(g).mean()
    for r in range(2):
        k = (new[r] != 0).nonzero().squeeze(1)
        a = g[k][:, k] + lam * torch.eye(len(k), dtype=torch.float64)
        expected = torch.linalg.solve(a, xd[:, k].T @ (xd @ w[r]))
        torch.testing.assert_close(new[r, k], expected, rtol=1e-5, atol=1e-6)
    # Its mask is magnitude's (per layer), so only the refit changed the kept weights.
    assert ((new != 0) == (fc.weight.abs() > fc.weight.abs().flatten().sort().values[5])).all()


def test_refit_keeps_pruned_weights_at_zero():
    g = torch.eye(3)
    out = refit_rows(torch.ones(2, 3), torch.tensor([[True, False, True], [False, False, True]]), g, g, 0.0 + 1e-9)
    assert (out == torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])).all()


def test_fcpts_refit_init_is_pots_refit_under_a_fixed_mask(tiny_net, calib_x):
    # Under a pattern the mask is fixed; with no learning step fcpts's result is the refit alone,
    # which must be POT's (same magnitude N:M mask, same least squares, same damping).
    pot = fcpts.prune(tiny_net, calib_x, fcpts.make_config("pot", target_sparsity=1 / 3, pattern="1:3"))
    config = fcpts.FCPTSConfig(target_sparsity=1 / 3, pattern="1:3", iters=0, refit_init=True)
    ours = fcpts.prune(tiny_net, calib_x, config)
    for (name, a), b in zip(prunable_weights(pot.model).items(), prunable_weights(ours.model).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    dense = prunable_weights(tiny_net)
    assert not torch.equal(dense["fc1"], prunable_weights(ours.model)["fc1"])  # dense under 1:3, but refitted


def test_fcpts_refit_init_ranking_the_dense_scores_keeps_the_mask_it_refitted(tiny_net, calib_x):
    # refit_rank="dense", learned thresholds, no learning step: the mask is the allocation's mask on
    # the dense magnitudes (the refit changes values, not importance), its kept values are the
    # refit's, and the sparsity before finalize is the target's: no refitted weight fell under t.
    config = fcpts.FCPTSConfig(target_sparsity=0.6, init="uniform", iters=0, refit_init=True, refit_rank="dense")
    teacher = copy.deepcopy(tiny_net)
    student = copy.deepcopy(tiny_net)
    prepared, _ = prepare_from_config(student, teacher, Calibration(calib_x, 16), config)
    assert prepared.global_sparsity().item() == pytest.approx(0.6, abs=1 / prepared.total)
    masks = {}
    for layer in prepared.layers:
        dense = dict(tiny_net.named_modules())[layer.name].weight.detach().abs()
        masks[layer.name] = dense > dense.flatten().sort().values[round(0.6 * dense.numel()) - 1]
        assert torch.equal(layer.module.weight != 0, masks[layer.name]), layer.name
    pot = fcpts.prune(tiny_net, calib_x, fcpts.make_config("pot", target_sparsity=0.6, batch_size=16))
    for layer in prepared.layers:
        expected = prunable_weights(pot.model)[layer.name]
        torch.testing.assert_close(layer.module.weight.detach(), expected, rtol=1e-5, atol=1e-6, msg=layer.name)


def test_fcpts_refit_init_ranking_the_refitted_weights_drops_the_ones_the_refit_made_small(tiny_net, calib_x):
    # The default, refit_rank="refitted": the thresholds stay where the allocation put them and apply
    # to the refitted weights, so the mask is exactly |refitted W| > t (at or above the target).
    config = fcpts.FCPTSConfig(target_sparsity=0.6, init="uniform", iters=0, refit_init=True)
    student, teacher = copy.deepcopy(tiny_net), copy.deepcopy(tiny_net)
    prepared, _ = prepare_from_config(student, teacher, Calibration(calib_x, 16), config)
    for layer in prepared.layers:
        assert torch.equal(layer.module.weight != 0, layer.weight.abs() > layer.mask.threshold), layer.name
    assert prepared.global_sparsity().item() > 0.6 + 1 / prepared.total  # some refitted weights fell under t


# --- every method: exact global count, exact N:M groups -------------------------------------------


@pytest.mark.parametrize(("method", "extra"), CASES, ids=IDS)
def test_every_method_reaches_the_exact_global_count(method, extra, tiny_net, calib_x):
    config = fcpts.make_config(method, target_sparsity=0.77, **extra)
    result = fcpts.prune(tiny_net, calib_x, config)
    zeros = sum(int((w == 0).sum()) for w in prunable_weights(result.model).values())
    assert zeros == result.zeros == round(0.77 * TINY_TOTAL)


@pytest.mark.parametrize("pattern", ["2:4", "1:3"])
@pytest.mark.parametrize(("method", "extra"), CASES, ids=IDS)
def test_every_method_makes_exact_nm_groups(method, extra, pattern, tiny_net, calib_x):
    n, m = (int(v) for v in pattern.split(":"))
    config = fcpts.make_config(method, target_sparsity=n / m, pattern=pattern, **extra)
    result = fcpts.prune(tiny_net, calib_x, config)
    divisible = 0
    for name, w in prunable_weights(result.model).items():
        rows = w.flatten(1)
        if rows.shape[1] % m:
            assert int((w == 0).sum()) == 0, f"{name} should stay dense"
            continue
        divisible += w.numel()
        assert ((rows.view(rows.shape[0], -1, m) == 0).sum(-1) == n).all(), name
    # TinyNet: 2:4 divides only fc1 (80 inputs); 1:3 divides conv1 (9) and conv2 (27).
    assert divisible == {"2:4": 560, "1:3": 27 + 135}[pattern]
    assert result.zeros == divisible * n // m


def test_pattern_must_match_the_target():
    with pytest.raises(fcpts.FcptsError, match=r"means sparsity 0\.5"):
        fcpts.make_config("wanda", target_sparsity=0.6, pattern="2:4")
    with pytest.raises(fcpts.FcptsError, match="N:M"):
        fcpts.make_config("wanda", target_sparsity=0.5, pattern="4:2")


# --- CLI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "fcpts"])
def test_cli_prune_with_a_2_4_pattern(method, run_cli, model_file, npz_file, tmp_path):
    out = tmp_path / "out"
    args = ["prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--pattern", "2:4"]
    args += ["--method", method, "--out", out, "--calib-samples", "32", "--batch-size", "16", "--no-progress"]
    if method == "sparsegpt":
        args += ["--damp", "0.05", "--blocksize", "16"]
    if method == "fcpts":
        args += ["--iters", "3", "--importance", "wanda", "--refit-init"]
    code, stdout, stderr = run_cli(*args)
    assert code == 0, stderr
    # The conv (9 inputs) stays dense; the Linear (144 inputs) is exactly 2:4.
    assert f"global sparsity  {720 / FACTORY_TOTAL:.6f} (720 of {FACTORY_TOTAL} weights zero)" in stdout
    model = load_factory(model_file)
    model.load_state_dict(load_file(out / "model.safetensors"))
    assert int((model[0].weight == 0).sum()) == 0
    assert ((model[4].weight.view(10, 36, 4) == 0).sum(-1) == 2).all()


def test_cli_method_options_are_checked(run_cli, model_file, npz_file, tmp_path):
    base = ["prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--out", tmp_path / "o"]
    code, _, stderr = run_cli(*base, "--method", "wanda", "--sparsity", "0.5", "--blocksize", "8")
    assert code == 2 and "--blocksize does not apply to method 'wanda'" in stderr
    code, _, stderr = run_cli(*base, "--method", "wanda")
    assert code == 2 and "--sparsity is required" in stderr
    code, _, stderr = run_cli(*base, "--method", "sparsegpt", "--sparsity", "0.5", "--refit-init")
    assert code == 2 and "--refit-init does not apply to method 'sparsegpt'" in stderr
    code, _, stderr = run_cli(*base, "--method", "pot", "--sparsity", "0.6", "--pattern", "2:4")
    assert code == 2 and "pattern 2:4 means sparsity 0.5, not 0.6" in stderr
