"""The one exception family the library raises for bad input or bad files.

The CLI turns these into a one-line message and an exit code; library users can
catch :class:`ShapesgenError` to handle all of them.

Messages name the library's own parameters in Python's keyword form
(``num_scenes=0 is invalid: ...``, ``pass force=True``), never a command-line flag:
a Python caller never typed one. ``param`` records which parameter was bad, so the
CLI can translate both into the flag the user typed (``--num``, ``--force``).
"""

from __future__ import annotations


class ShapesgenError(Exception):
    """Base class: a problem the user can fix (bad value, bad file, bad path)."""

    exit_code = 2

    def __init__(self, message: str, *, param: str | None = None, related: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.param = param
        self.related = related  # other parameters the message names (e.g. the input an output would overwrite)


class ConfigError(ShapesgenError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DatasetError(ShapesgenError):
    """A file is missing, unreadable, foreign, corrupt or in the wrong state."""


class ValidationError(ShapesgenError):
    """A dataset was read but violates one of the format's invariants."""

    exit_code = 1


class ShapesgenNote(UserWarning):
    """Something the library adjusted that the user should know; it never changes the data.

    Issued with :func:`warnings.warn`; the CLI prints each as one ``note:`` line.
    """


class ResourceError(ShapesgenError):
    """The system refused: a full disk, a worker killed (out of memory), an output
    another process is writing. Not the user's input: exit code 1."""

    exit_code = 1
