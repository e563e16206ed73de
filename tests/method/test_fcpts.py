"""The fcpts method: the refit initialisation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fcpts
from fcpts.core.calibration import Calibration
from fcpts.method.fcpts import prepare_from_config


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in fcpts.prunable_layers(model)}


def test_fcpts_refit_init_is_pots_refit_under_a_fixed_mask(tiny_net, calib_x):
    # Under a pattern the mask is fixed; with no learning step fcpts's result is the refit alone,
    # which must be POT's (same magnitude N:M mask, same least squares, same damping), up to float
    # rounding: in channels_last fcpts's masked conv weight is computed in another layout than POT's.
    pot = fcpts.prune(tiny_net, calib_x, fcpts.make_config("pot", target_sparsity=1 / 3, pattern="1:3"))
    config = fcpts.FCPTSConfig(target_sparsity=1 / 3, pattern="1:3", iters=0, refit_init=True)
    ours = fcpts.prune(tiny_net, calib_x, config)
    for (name, a), b in zip(prunable_weights(pot.model).items(), prunable_weights(ours.model).values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
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
