"""The one exception type fcpts raises for bad input."""

from __future__ import annotations


class FcptsError(ValueError):
    """A user-facing error: bad sparsity, an unknown spec, data that does not fit the model...

    The CLI prints its message as ``fcpts: error: <message>`` and exits with status 2; nothing
    is written to the output directory when it is raised.
    """
