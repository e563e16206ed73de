"""The ``onnx`` export: the model's graph (PyTorch's ``torch.export``-based exporter, dynamic batch
dimension), checked against PyTorch's outputs with onnxruntime when it is written, and
:class:`OnnxModule`, which runs a saved graph as an ``nn.Module``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import FcptsError

#: Largest |ONNX - PyTorch| accepted when an ONNX export is checked (float32 graphs reorder sums).
ONNX_ATOL = 1e-4


class OnnxModule(nn.Module):
    """An ``nn.Module`` whose forward runs an ONNX file with onnxruntime (CPU): tensors in, tensors out.

    It holds no parameters (the weights are in the graph); inputs are moved to CPU and float32 numpy.
    One output comes back as a tensor, several as a tuple.
    """

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch would use
        self.path = str(path)
        try:
            self.session = onnxruntime.InferenceSession(self.path, options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FcptsError(f"cannot load ONNX model {self.path} (truncated or not an ONNX file): {reason}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        feeds = {name: x.detach().cpu().numpy() for name, x in zip(self.input_names, inputs, strict=True)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike[str]) -> float:
    """Write ``model`` as ONNX (dynamic batch) to ``path``; return max |onnxruntime - PyTorch| on the example.

    Raises :class:`FcptsError` when the difference exceeds :data:`ONNX_ATOL` or the export fails.
    """
    try:
        import onnxruntime  # noqa: F401  (fail before exporting when the checker is missing)
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as exc:
        raise FcptsError(
            f"ONNX export needs onnx, onnxscript and onnxruntime: pip install 'fcpts[export]' ({exc})"
        ) from exc
    model = model.eval()
    # A batch of at least 2: torch.export specialises a dimension of size 1 and would not keep it dynamic.
    example = example_input if len(example_input) >= 2 else torch.cat([example_input, example_input])
    # The exporter logs a line per torchvision op it cannot register and torch warns about its own
    # internals: noise for the user, silenced for the call and restored afterwards.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    try:
        registration_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False
            )
        program.save(str(path))
    except Exception as exc:  # the exporter raises many types for an unsupported model
        raise FcptsError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    finally:
        registration_log.setLevel(level)
    from ..core.evaluate import output_logits

    with torch.no_grad():
        expected = output_logits(model(example_input))
    got = OnnxModule(path)(example_input)
    got = got[0] if isinstance(got, tuple) else got
    diff = float((got - expected).abs().max())
    if not diff <= ONNX_ATOL:
        raise FcptsError(f"ONNX export differs from PyTorch by {diff:.3g} (> {ONNX_ATOL:g}) on the example input")
    return diff
