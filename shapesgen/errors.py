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


class FailedWrite(ResourceError):
    """HDF5 refused a write half-way (a disk that another program filled after the writer
    measured it). The HDF5 library is then in a state that crashes the process (a segmentation
    fault) in its exit handler: the CLI ends with ``os._exit`` after saying so, and a program
    using the library should do the same."""


def shown(value: object, limit: int = 60) -> str:
    """A value as an error message quotes it: a repr that never fails (a 5,000-digit
    integer, 100,000-deep nesting, a numpy scalar), on one line, at most ``limit`` characters."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()  # type: ignore[attr-defined]
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        digits = int(value.bit_length() * 0.30103) + 1
        return f"<{'-' if value < 0 else ''}integer of about {digits} digits>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
    return one_line(text, limit)


def one_line(text: object, limit: int = 300) -> str:
    """``text`` (e.g. another library's error) on one line, at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
