"""BatchNorm folding (fcpts.deploy.fold): exact within 1e-5 relative, zeros kept, timm's BatchNormAct2d
keeps its activation, and the cases that must not fold."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fcpts.deploy.fold import fold_batchnorm
from fcpts.deploy.sparse_inference import ConvertConfig, convert
from tests.helpers import sparsify_


def randomise_(bn: nn.modules.batchnorm._BatchNorm, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity, so folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) * 2 - 1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 1.5 + 0.5)
        if bn.affine:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
    return bn


def assert_rel(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    assert actual.shape == expected.shape
    assert float((actual - expected).abs().max()) <= tol * float(expected.abs().max())


def check_fold(net: nn.Module, x: torch.Tensor, expected_pairs: list[tuple[str, str]]) -> nn.Module:
    """Fold a copy of ``net``: the pairs, the output within 1e-5 relative, and every zero kept."""
    net.eval()
    folded = copy.deepcopy(net)
    assert fold_batchnorm(folded, x) == expected_pairs
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    for layer, _ in expected_pairs:
        before, after = net.get_submodule(layer).weight, folded.get_submodule(layer).weight
        assert torch.equal(before == 0, after == 0)  # per-output-channel scaling: the zero pattern stays
    with torch.no_grad():
        assert_rel(folded(x), net(x))
    return folded


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folds_exactly(bias: bool) -> None:
    torch.manual_seed(0)
    conv = sparsify_(nn.Conv2d(3, 8, 3, padding=1, bias=bias), 0.7)
    net = nn.Sequential(conv, randomise_(nn.BatchNorm2d(8)), nn.ReLU())
    folded = check_fold(net, torch.randn(4, 3, 9, 9), [("0", "1")])
    assert type(folded[1]) is nn.Identity and folded[0].bias is not None


def test_depthwise_conv_bn_folds_exactly() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
        randomise_(nn.BatchNorm2d(8)),
        sparsify_(nn.Conv2d(8, 16, 1, bias=False), 0.8),
        randomise_(nn.BatchNorm2d(16), seed=1),
    )
    x = torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last)
    folded = check_fold(net, x, [("0", "1"), ("2", "3")])
    with torch.no_grad():
        assert folded(x).is_contiguous(memory_format=torch.channels_last)


def test_timm_batchnormact2d_keeps_its_activation() -> None:
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    bn = randomise_(timm_layers.BatchNormAct2d(8, act_layer=nn.ReLU6))
    net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), bn)
    x = torch.randn(2, 3, 5, 5) * 4  # wide enough that ReLU6 clips at both ends
    folded = check_fold(net, x, [("0", "1")])
    assert [type(m) for m in folded[1]] == [nn.Identity, nn.ReLU6]  # drop, act


def test_linear_batchnorm1d_folds() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), randomise_(nn.BatchNorm1d(5)), nn.Linear(5, 3))
    check_fold(net, torch.randn(4, 6), [("0", "1")])


class Shortcut(nn.Module):
    """The conv's output also feeds the sum: folding the BatchNorm into it would change the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 1), randomise_(nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_shared_output_is_not_folded() -> None:
    torch.manual_seed(0)
    net = Shortcut().eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        expected = net(x)
    with pytest.warns(UserWarning, match="left unfolded"):
        assert fold_batchnorm(net, x) == []
    assert type(net.bn) is nn.BatchNorm2d and net.conv.weight.grad is None
    with torch.no_grad():
        assert torch.equal(net(x), expected)  # restored as it was


def test_what_does_not_fold() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5)
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_batchnorm(no_stats, x) == []  # normalised by each batch's statistics
    conv = nn.Conv2d(3, 3, 1)
    shared = nn.Sequential(conv, randomise_(nn.BatchNorm2d(3)), conv).eval()
    assert fold_batchnorm(shared, x) == []  # a layer called twice
    first = nn.Sequential(randomise_(nn.BatchNorm2d(3)), nn.Conv2d(3, 4, 1)).eval()
    assert fold_batchnorm(first, x) == []  # no layer before it
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), x)


def test_convert_folds_unless_told_not_to() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), randomise_(nn.BatchNorm2d(8)), nn.ReLU()).eval()
    x = torch.randn(2, 3, 4, 4)
    never = ConvertConfig(min_speedup=float("inf"), repeats=1, warmup=0)
    assert type(convert(net, x, never)[1]) is nn.Identity
    assert type(convert(net, x, ConvertConfig(fold_batchnorm=False, min_speedup=float("inf")))[1]) is nn.BatchNorm2d
    assert type(net[1]) is nn.BatchNorm2d  # the input model is not modified


def test_detector_folds_checked_on_its_head_outputs() -> None:
    """refdet's every conv → BatchNorm pair folds; its raw head outputs and feature maps (not its
    NMS-ed boxes, whose number can change with a score's last bit) stay within 1e-5 relative."""
    from fcpts.models.detection import DetectionOutputs
    from fcpts.models.refdet import reference_detector

    torch.manual_seed(0)
    det = reference_detector(image_size=64).eval()
    norms = [randomise_(m, seed=i) for i, m in enumerate(det.modules()) if isinstance(m, nn.BatchNorm2d)]
    x = torch.rand(2, 3, 64, 64)
    folded = copy.deepcopy(det)
    assert len(fold_batchnorm(folded, x)) == len(norms) > 0
    with torch.no_grad():
        expected, got = DetectionOutputs(det)(x), DetectionOutputs(folded)(x)
    assert list(got) == list(expected)
    for name in expected:
        assert_rel(got[name], expected[name])
