"""The ``text:FILE`` data spec (one sample a line) and tokenisation: ``x`` is a dict of ``(N, T)``
tensors (``input_ids``, ``attention_mask``, ...) from the model's own tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import FcptsError
from .specs import DataOptions, DataSource, Split, register_data_spec


def load_text(path: str | os.PathLike[str], tokenizer: object, max_length: int = 128) -> DataSource:
    """``FILE`` with one sample per line (blank lines skipped), tokenised by the model's tokenizer.

    Padded to the longest sample (at most ``max_length`` tokens), so the rows stack into a dict of
    ``(N, T)`` tensors; the attention mask marks the padding. The same lines serve calibration and
    evaluation (give disjoint files to ``prune`` and ``eval`` to keep them apart).
    """
    path = Path(path)
    if not path.is_file():
        raise FcptsError(f"text file not found: {path}")
    if tokenizer is None:
        raise FcptsError(f"text:{path} needs a model with a tokenizer (an hf:DIR model, or minilm)")
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise FcptsError(f"text file {path} has no non-empty lines")
    split = Split(tokenize(lines, tokenizer, max_length), None)
    return DataSource(f"text:{path}", split, split)


def tokenize(texts: list[str], tokenizer: Any, max_length: int = 128) -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` as ``text:FILE`` does: padded to the longest (at most ``max_length`` tokens).

    Returns the tokenizer's outputs as a dict of ``(N, T)`` tensors (``input_ids``, ``attention_mask``, ...).

    >>> def toy(texts, **kw):  # a stand-in tokenizer: one token per word
    ...     n = max(len(t.split()) for t in texts)
    ...     ids = [[len(w) for w in t.split()] + [0] * (n - len(t.split())) for t in texts]
    ...     return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) > 0).long()}
    >>> tokenize(["a bb", "ccc"], toy)["attention_mask"].tolist()
    [[1, 1], [1, 0]]
    """
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {k: v for k, v in encoded.items()}


@register_data_spec("text", "text:FILE")
def _text_spec(arg: str, options: DataOptions) -> DataSource:
    return load_text(arg, options.get_tokenizer(), options.max_length)
