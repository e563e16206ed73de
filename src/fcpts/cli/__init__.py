"""The ``fcpts`` command: argument parsing (:mod:`.parser`) and printing (:mod:`.commands`) over
:mod:`fcpts.pipeline` and the library."""

from .commands import main

__all__ = ["main"]
