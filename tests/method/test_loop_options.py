"""The learning loop's options: the straight-through mask (``threshold_grad="ste"``), bandwidths fixed
once (``bandwidth_update``), the kept weights' rate schedule (``lr_schedule``) and batches drawn with
replacement (``sampling``); each keeps the exact count and a resume's bytes."""

from __future__ import annotations

import copy
import importlib
import json
import math

import pytest
import torch

import fcpts
from fcpts.core.calibration import Calibration
from fcpts.method.steps import param_groups
from fcpts.method.surrogate import ste_masked
from fcpts.method.threshold_mask import ThresholdMask
from tests.helpers import TINY_TOTAL, TinyNet, cli_error

OBJECTIVE = importlib.import_module("fcpts.method.objective")
W8 = torch.tensor([[0.05, -0.1, 0.15, -0.2], [0.25, -0.3, 0.35, -0.4]])


def test_ste_mask_has_the_gradients_of_its_plain_autograd_form():
    """``w·(hard + σ − stopgrad(σ))``, σ = sigmoid((|w| − t)/(0.05 t)): the same value and gradients."""
    w = torch.tensor([0.1, -0.5, 0.3, 0.19, -0.21, 0.0], requires_grad=True)
    t = torch.tensor(0.2, requires_grad=True)
    upstream = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5, 1.0])
    (ste_masked(w, w.detach().abs(), t) * upstream).sum().backward()
    w2, t2 = w.detach().clone().requires_grad_(), torch.tensor(0.2, requires_grad=True)
    soft = torch.sigmoid((w2.abs() - t2) / (0.05 * t2))
    plain = w2 * ((w2.abs() > t2).float() + soft - soft.detach())
    (plain * upstream).sum().backward()
    torch.testing.assert_close(w.grad, w2.grad)
    torch.testing.assert_close(t.grad, t2.grad)
    assert w.grad[3] != 0 and w.grad[0] == pytest.approx(0.0, abs=1e-3)  # just under t: a gradient; far: ~none


def test_ste_threshold_mask_gives_pruned_weights_a_gradient():
    weight = W8.clone().requires_grad_()
    surrogate = ThresholdMask(W8, threshold=0.22, threshold_grad="surrogate", bandwidth_rule=0.1)
    surrogate(weight).sum().backward()
    assert weight.grad[0, 3] == 0.0  # |w| = 0.2 < t: masked
    weight.grad = None
    ste = ThresholdMask(W8, threshold=0.22, threshold_grad="ste")
    out = ste(weight)
    assert torch.equal(out, W8 * (W8.abs() > 0.22))  # the hard mask's value
    out.sum().backward()
    assert weight.grad[0, 3] != 0.0 and weight.grad[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert ste.log_threshold.grad is not None


@pytest.mark.parametrize(
    "option",
    [{"threshold_grad": "ste"}, {"bandwidth_update": "once"}, {"lr_schedule": "constant"}, {"sampling": "replacement"}],
    ids=lambda o: next(iter(o.values())),
)
def test_each_option_keeps_the_exact_count(tiny_net, calib_x, option):
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=8, batch_size=16, **option)
    result = fcpts.prune(tiny_net, calib_x, config)
    assert result.zeros == round(0.7 * TINY_TOTAL)
    assert len(result.history) == 8 and all(math.isfinite(h["loss"]) for h in result.history)


def test_bandwidths_fixed_once_stay_while_the_weights_learn(tiny_net, calib_x):
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=1, batch_size=16)
    runs = {}
    for update in ("step", "once"):
        prepared = fcpts.prepare(copy.deepcopy(tiny_net), 0.7)
        if update == "once":
            prepared.fix_bandwidths()
        before = [layer.mask.bandwidth_of(layer.weight).clone() for layer in prepared.layers]
        fcpts.learn(prepared, tiny_net, Calibration(calib_x, 16), config)
        after = [layer.mask.bandwidth_of(layer.weight) for layer in prepared.layers]
        runs[update] = [torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(runs["once"]) and not any(runs["step"])


def test_constant_schedule_keeps_the_kept_weights_rate(tiny_net):
    prepared = fcpts.prepare(tiny_net, 0.7)
    for schedule, last in (("cosine", 0.0), ("constant", 1.0)):
        config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=10, lr_schedule=schedule)
        _, schedules = param_groups(prepared, config)
        assert [s(10) for s in schedules] == pytest.approx([1.0, last], abs=1e-12)  # thresholds, then weights


def test_batches_drawn_with_replacement_resume_at_any_step():
    cal = Calibration(torch.arange(10.0).unsqueeze(1), batch_size=4, seed=3)
    drawn = [index.tolist() for (_, index), _ in zip(cal.stream(replacement=True), range(6), strict=False)]
    later = [index.tolist() for (_, index), _ in zip(cal.stream(3, replacement=True), range(3), strict=False)]
    assert later == drawn[3:] and all(len(i) == 4 for i in drawn)
    assert any(len(set(i)) < 4 for i in drawn) or len({x for i in drawn for x in i}) < 10  # not a permutation
    epochs = [index for (_, index), _ in zip(cal.stream(), range(6), strict=False)]
    assert drawn != [i.tolist() for i in epochs]
    with pytest.raises(fcpts.FcptsError, match="with replacement need a tensor or Dataset"):
        next(Calibration([torch.zeros(2, 1)], batch_size=2).stream(replacement=True))


class Interrupt(Exception):
    pass


def test_resume_with_every_option_equals_an_uninterrupted_run(monkeypatch, tmp_path, calib_x):
    torch.manual_seed(0)
    net = TinyNet()
    options = {"threshold_grad": "ste", "bandwidth_update": "once", "lr_schedule": "constant"}
    options["sampling"] = "replacement"
    config = fcpts.FCPTSConfig(0.7, iters=16, batch_size=16, seed=2, **options)
    reference = fcpts.prune(net, calib_x, config)
    ckpt, calls, original = tmp_path / "ckpt", {"n": 0}, OBJECTIVE.control_loss

    def interrupted(*args, **kwargs):
        if calls["n"] == 9:
            raise Interrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(OBJECTIVE, "control_loss", interrupted)
        with pytest.raises(Interrupt):
            fcpts.prune(net, calib_x, config, fcpts.RunOptions(checkpoint_dir=ckpt, checkpoint_every=4))
    resumed = fcpts.prune(net, calib_x, config, fcpts.RunOptions(checkpoint_dir=ckpt, checkpoint_every=4, resume=True))
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.history == reference.history


def test_cli_sets_the_options(run_cli, model_file, npz_file, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(
        "prune", "--model", f"{model_file}:factory", "--data", f"npz:{npz_file}", "--sparsity", "0.7", "--iters", "3",
        "--batch-size", "16", "--out", out, "--no-progress", "--threshold-grad", "ste", "--bandwidth-update", "once",
        "--lr-schedule", "constant", "--sampling", "replacement",
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "report.json").read_text())["config"]
    chosen = [config[k] for k in ("threshold_grad", "bandwidth_update", "lr_schedule", "sampling")]
    assert chosen == ["ste", "once", "constant", "replacement"]


@pytest.mark.parametrize("flag", ["--threshold-grad", "--bandwidth-update", "--lr-schedule", "--sampling"])
def test_cli_refuses_an_unknown_value(capsys, flag):
    assert f"argument {flag}: invalid choice: 'x'" in cli_error(capsys, flag, "x")
