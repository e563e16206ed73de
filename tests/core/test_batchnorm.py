"""BatchNorm recalibration: the exact running average, and which methods recalibrate by default."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fcpts
from fcpts.core.batchnorm import recalibrate_batchnorm


def test_recalibrate_batchnorm_is_a_no_op_without_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Dropout(0.5), nn.Linear(6, 2)).train()
    net[1].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    assert recalibrate_batchnorm(net, [torch.randn(8, 6) for _ in range(3)]) == 0
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert [m.training for m in net.modules()] == modes


def test_recalibrate_batchnorm_computes_the_exact_average(bn_net, calib_x):
    bn = bn_net[1]
    bn.momentum = 0.3
    dropout_net = nn.Sequential(bn_net, nn.Dropout(0.5)).eval()
    batches = list(calib_x.split(16))  # 4 equal batches
    assert recalibrate_batchnorm(dropout_net, batches) == 1
    with torch.no_grad():
        feats = bn_net[0](calib_x)  # (64, 4, 6, 6)
    expected_mean = feats.mean(dim=(0, 2, 3))
    per_batch_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats.split(16)])
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-6, rtol=1e-5)
    assert torch.allclose(bn.running_var, per_batch_var.mean(0), atol=1e-6, rtol=1e-5)
    assert int(bn.num_batches_tracked) == 4
    # Modes and momentum are restored.
    assert bn.momentum == 0.3
    assert not any(m.training for m in dropout_net.modules())
    # Independent of batch order.
    reversed_net = copy.deepcopy(dropout_net)
    recalibrate_batchnorm(reversed_net, batches[::-1])
    assert torch.allclose(reversed_net[0][1].running_mean, bn.running_mean, atol=1e-6)


def test_fcpts_keeps_dense_batchnorm_statistics_by_default(bn_net, calib_x):
    dense = copy.deepcopy(bn_net)
    result = fcpts.prune(bn_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.7, iters=4, batch_size=16))
    bn, dense_bn = result.model[1], dense[1]
    assert torch.equal(bn.running_mean, dense_bn.running_mean)
    assert torch.equal(bn.running_var, dense_bn.running_var)
    assert int(bn.num_batches_tracked) == 7
    # ...and recalibrates them when asked to.
    result = fcpts.prune(
        bn_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.7, iters=2, batch_size=16, recalibrate_bn=True)
    )
    assert not torch.equal(result.model[1].running_mean, dense_bn.running_mean)
    assert int(result.model[1].num_batches_tracked) == 4  # 64 samples in batches of 16


@pytest.mark.parametrize("method", ["uniform-magnitude", "erk-magnitude", "global-magnitude", "lamp-magnitude"])
def test_magnitude_baselines_recalibrate_batchnorm_by_default(bn_net, calib_x, method):
    dense_bn = copy.deepcopy(bn_net[1])
    result = fcpts.prune(bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.6, batch_size=32))
    model = result.model
    with torch.no_grad():
        feats = model[0](calib_x)  # the pruned conv's outputs
    assert torch.allclose(model[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-6, rtol=1e-5)
    assert int(model[1].num_batches_tracked) == 2
    assert not torch.equal(model[1].running_mean, dense_bn.running_mean)
    # Off on request: the dense statistics stay.
    result = fcpts.prune(
        bn_net, calib_x, fcpts.make_config(method, target_sparsity=0.6, batch_size=32, recalibrate_bn=False)
    )
    assert torch.equal(result.model[1].running_mean, dense_bn.running_mean)
    assert torch.equal(result.model[1].running_var, dense_bn.running_var)
