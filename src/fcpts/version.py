"""The package version (one place: the report and the package metadata read it)."""

__version__ = "0.1.0"
