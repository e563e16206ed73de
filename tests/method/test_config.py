"""FCPTSConfig validation: every bad option is rejected up front, with its exact message."""

from __future__ import annotations

import re

import pytest

import fcpts

BAD_OPTIONS = [
    ("temperature", 0.0, "temperature must be > 0, got 0.0"),
    ("lr_weight", -1.0, "lr_weight must be ≥ 0, got -1.0"),
    ("lr_threshold", -1.0, "lr_threshold must be ≥ 0, got -1.0"),
    ("control_weight", -1.0, "control_weight must be ≥ 0, got -1.0"),
    ("control_loss", "x", "control_loss must be 'abs' or 'squared', got 'x'"),
    # Unknown plug-in names: the Registry's wording, naming the kind and the choices.
    (
        "init",
        "bogus",
        "init must be auto, an allocation (erk, global, lamp, owl, uniform) or a one-shot method (erk-magnitude, "
        "global-magnitude, lamp-magnitude, owl-wanda, pot, sparsegpt, uniform-magnitude, wanda), got 'bogus'",
    ),
    ("density", "parzen", "unknown density 'parzen'; choose from histogram, kde"),
    ("importance", "x", "unknown importance 'x'; choose from magnitude, wanda"),
    ("loss", "x", "unknown loss 'x'; choose from auto, cosine, detection, kl, mse"),
    ("bandwidth", "bogus", "unknown bandwidth rule 'bogus'; choose from scott, silverman or a number"),
    ("bandwidth", 0.0, "bandwidth must be a rule name or a number > 0, got 0.0"),
    ("kde_samples", 1, "kde_samples must be ≥ 2, got 1"),
    ("threshold_grad", "x", "threshold_grad must be one of ('none', 'surrogate', 'ste'), got 'x'"),
    ("bandwidth_update", "x", "bandwidth_update must be one of ('step', 'once'), got 'x'"),
    ("lr_schedule", "linear", "lr_schedule must be one of ('cosine', 'constant'), got 'linear'"),
    ("sampling", "x", "sampling must be one of ('epochs', 'replacement'), got 'x'"),
    ("freeze_masks_at", 1.5, "freeze_masks_at must be in [0, 1], got 1.5"),
    ("freeze_masks_at", -0.1, "freeze_masks_at must be in [0, 1], got -0.1"),
    ("refit_rank", "x", "refit_rank must be 'dense' or 'refitted', got 'x'"),
    ("refit_samples", -1, "refit_samples must be ≥ 0 (0: all), got -1"),
    ("start_samples", -1, "start_samples must be ≥ 0 (0: all), got -1"),
]


@pytest.mark.parametrize(("option", "value", "message"), BAD_OPTIONS, ids=[f"{o}={v}" for o, v, _ in BAD_OPTIONS])
def test_invalid_fcpts_options_are_rejected_up_front(option, value, message):
    """E.g. ``temperature=0`` would divide the logits by 0 and turn every weight into NaN."""
    with pytest.raises(fcpts.FcptsError, match=f"^{re.escape(message)}$"):
        fcpts.FCPTSConfig(target_sparsity=0.5, **{option: value})


@pytest.mark.parametrize("field", ["device", "progress", "checkpoint_dir", "checkpoint_every", "resume", "retain_heap"])
def test_run_options_are_not_config_fields(field):
    """How a run executes moved to RunOptions: the config (and so report.json's config) has none of it."""
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{field}'"):
        fcpts.FCPTSConfig(target_sparsity=0.5, **{field: None})
    assert field not in fcpts.FCPTSConfig(target_sparsity=0.5).to_dict()
    assert field in {f for f in fcpts.RunOptions.__dataclass_fields__}
