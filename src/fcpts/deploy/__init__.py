"""After pruning: export (dense, compressed, onnx), :func:`load` back, and sparse CPU inference."""

from .export import FORMATS, export, load

__all__ = ["FORMATS", "export", "load"]
