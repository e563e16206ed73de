"""A cheaper step: the memory format and the teacher's precision (``memory_format``, ``teacher_precision``)."""

from __future__ import annotations

import pytest
import torch

import fcpts
from fcpts.core.calibration import Calibration
from fcpts.errors import FcptsError
from fcpts.method.objective import TEACHER_CACHE_BYTES, cache_teacher_outputs
from tests.helpers import TINY_TOTAL, cli_error


@pytest.mark.parametrize("field, value", [("memory_format", "nhwc"), ("teacher_precision", "float16")])
def test_bad_values_are_refused(field, value):
    with pytest.raises(FcptsError, match=field):
        fcpts.FCPTSConfig(target_sparsity=0.5, **{field: value})


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_memory_format_keeps_the_exact_count_and_returns_a_contiguous_model(tiny_net, calib_x, memory_format):
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=6, batch_size=16, memory_format=memory_format)
    result = fcpts.prune(tiny_net, calib_x, config)
    assert result.zeros == round(0.7 * TINY_TOTAL)
    assert all(p.is_contiguous() for p in result.model.parameters())


def test_channels_last_learns_what_contiguous_learns(tiny_net, calib_x):
    """The same run in the other memory format: the same masks, weights equal up to float rounding."""
    runs = [
        fcpts.prune(tiny_net, calib_x, fcpts.FCPTSConfig(target_sparsity=0.7, iters=6, batch_size=16, memory_format=f))
        for f in ("contiguous", "channels_last")
    ]
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=True):
        assert torch.equal(a == 0, b == 0)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_teacher_caches_bf16_and_learns(tiny_net, calib_x):
    calibration = Calibration(calib_x, batch_size=16)
    cached = cache_teacher_outputs(tiny_net.eval(), calibration, 16, TEACHER_CACHE_BYTES, precision="bfloat16")
    dense = cache_teacher_outputs(tiny_net, calibration, 16, TEACHER_CACHE_BYTES)
    assert cached.dtype == torch.bfloat16 and dense.dtype == torch.float32
    torch.testing.assert_close(cached.float(), dense, rtol=2e-2, atol=2e-2)
    config = fcpts.FCPTSConfig(target_sparsity=0.7, iters=5, batch_size=16, teacher_precision="bfloat16")
    result = fcpts.prune(tiny_net, calib_x, config)
    assert result.zeros == round(0.7 * TINY_TOTAL)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


@pytest.mark.parametrize(
    "args, message",
    [
        (("--memory-format", "nhwc"), "argument --memory-format: invalid choice"),
        (("--teacher-precision", "fp16"), "argument --teacher-precision: invalid choice"),
    ],
)
def test_cli_bad_step_options(capsys, args, message):
    assert message in cli_error(capsys, *args)


def test_cli_step_options_do_not_apply_to_one_shot_methods(run_cli):
    code, _, err = run_cli(
        "prune", "--model", "refcnn", "--data", "fashion-mnist", "--sparsity", "0.9", "--out", "o",
        "--method", "wanda", "--teacher-precision", "bfloat16",
    )  # fmt: skip
    assert code == 2 and err == "fcpts: error: --teacher-precision does not apply to method 'wanda'\n"
