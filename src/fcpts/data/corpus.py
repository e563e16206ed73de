"""Real English text, offline: the fortune-cookie files of Debian's ``fortunes-min`` package.

``apt-get install fortunes-min`` puts ``fortunes``, ``literature`` and ``riddles`` (quotations,
proverbs, literary lines; entries separated by ``%`` lines) in ``/usr/share/games/fortunes``.
Each entry becomes one sample (whitespace collapsed); duplicates are dropped. The calibration and
evaluation samples are disjoint: every ``holdout_every``-th entry is held out for evaluation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import FcptsError

#: Where ``fortunes-min`` installs its files; ``$FCPTS_FORTUNES_DIR`` overrides it.
DEFAULT_FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")


def parse_fortunes(text: str, max_chars: int = 400) -> list[str]:
    """Entries of a fortune file (separated by ``%`` lines), whitespace collapsed, at most ``max_chars`` long.

    >>> parse_fortunes("A day for firm decisions!\\n%\\nBuy the\\n  negatives.\\n%\\n")
    ['A day for firm decisions!', 'Buy the negatives.']
    """
    entries = (re.sub(r"\s+", " ", chunk).strip() for chunk in re.split(r"^%\s*$", text, flags=re.MULTILINE))
    return [e for e in entries if e and len(e) <= max_chars]


def fortune_texts(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Every distinct entry of the fortune files, in file order."""
    directory = Path(directory or os.environ.get("FCPTS_FORTUNES_DIR") or DEFAULT_FORTUNES_DIR)
    files = [directory / name for name in FORTUNE_FILES if (directory / name).is_file()]
    if not files:
        raise FcptsError(f"no fortune files in {directory}: install them with apt-get install fortunes-min")
    texts = [e for f in files for e in parse_fortunes(f.read_text(encoding="utf-8", errors="replace"))]
    return list(dict.fromkeys(texts))


def split_texts(texts: list[str], holdout_every: int = 4) -> tuple[list[str], list[str]]:
    """``(calibration, evaluation)``: every ``holdout_every``-th text is held out; disjoint by construction.

    >>> split_texts(["a", "b", "c", "d", "e"], 2)
    (['b', 'd'], ['a', 'c', 'e'])
    """
    evaluation = texts[::holdout_every]
    calibration = [t for i, t in enumerate(texts) if i % holdout_every]
    return calibration, evaluation
