"""Model specs (factory files, packages) and weights files (never unpickled)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fcpts
from fcpts.models.specs import load_model
from fcpts.models.state_dicts import load_state_dict
from tests.helpers import FACTORY_TOTAL, load_factory


def test_factory_spec_and_torch_save_weights(model_file, tmp_path):
    model = load_factory(model_file)
    assert isinstance(model, nn.Sequential) and not model.training
    assert sum(m.weight.numel() for m in model if isinstance(m, (nn.Conv2d, nn.Linear))) == FACTORY_TOTAL
    state = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    loaded = load_model(f"{model_file}:factory", tmp_path / "w.pt")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    # {"state_dict": ...} checkpoints are unwrapped.
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    assert torch.equal(load_state_dict(tmp_path / "ckpt.pt")["4.weight"], state["4.weight"])


def test_weights_are_never_unpickled(model_file, tmp_path):
    torch.save(load_factory(model_file), tmp_path / "whole_module.pt")  # a pickled nn.Module
    with pytest.raises(fcpts.FcptsError, match="cannot read weights file"):
        load_model(f"{model_file}:factory", tmp_path / "whole_module.pt")


def test_model_spec_errors(model_file, tmp_path):
    with pytest.raises(fcpts.FcptsError, match="unknown model spec 'resnet50'"):
        load_model("resnet50")
    with pytest.raises(fcpts.FcptsError, match="model file not found"):
        load_model(f"{tmp_path / 'nope.py'}:factory")
    with pytest.raises(fcpts.FcptsError, match="no callable 'missing'"):
        load_model(f"{model_file}:missing")
    with pytest.raises(fcpts.FcptsError, match=r"not an nn\.Module"):
        load_model(f"{model_file}:not_a_module")
    with pytest.raises(fcpts.FcptsError, match="cannot import module"):
        load_model("no_such_package_xyz.models:factory")
    with pytest.raises(fcpts.FcptsError, match="weights file not found"):
        load_model(f"{model_file}:factory", tmp_path / "missing.safetensors")
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(fcpts.FcptsError, match="do not match model"):
        load_model(f"{model_file}:factory", tmp_path / "wrong.pt")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(fcpts.FcptsError, match="cannot read weights file"):
        load_model(f"{model_file}:factory", tmp_path / "corrupt.safetensors")


def test_package_module_spec():
    model = load_model("fcpts.models.reference:ReferenceCNN")
    assert isinstance(model, fcpts.ReferenceCNN)
