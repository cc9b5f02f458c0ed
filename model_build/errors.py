"""Exceptions of model_build."""

from __future__ import annotations


class BuildError(Exception):
    """Base of everything model_build raises."""


class BuildInputError(BuildError, ValueError):
    """A source, option or file that cannot be used; the message says how to fix it."""


class ExportError(BuildError):
    """Exporting to OpenVINO IR failed."""


class QuantizeError(BuildError):
    """Calibration or NNCF quantization failed."""
