"""The one exception family the library raises for bad input or bad files.

The CLI turns these into a one-line message and an exit code; library users can
catch :class:`ShapesgenError` to handle all of them.
"""

from __future__ import annotations


class ShapesgenError(Exception):
    """Base class: a problem the user can fix (bad value, bad file, bad path)."""

    exit_code = 2


class ConfigError(ShapesgenError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DatasetError(ShapesgenError):
    """A file is missing, unreadable, foreign, corrupt or in the wrong state."""


class ValidationError(ShapesgenError):
    """A dataset was read but violates one of the format's invariants."""

    exit_code = 1
