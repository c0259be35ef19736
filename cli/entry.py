"""The console-script entry point, kept free of heavy imports so that Ctrl-C or a
SIGTERM at any moment, even while the CLI is still importing, ends in one line.

SIGTERM (``kill``, ``timeout``, a scheduler stopping a job) is treated like Ctrl-C:
the command stops the same way, keeping what can be resumed and removing the rest.
The first one stops it; later ones are ignored while it cleans up.
A malformed command line (an unknown flag, a value of the wrong kind) is one line too,
exit 2.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # what a shell reports for a command killed by SIGPIPE (as cli.common)


EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: a stop asked by SIGTERM (a scheduler's pre-emption), as shells report it
STOPPED_BY: list[int] = []
"""The signal that stopped the command (the first Ctrl-C or SIGTERM)."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C or SIGTERM: stop once. Later ones are ignored, so the clean-up they would cut
    short (a worker pool's shutdown, a kept file's last write, the one-line message) runs whole;
    a second Ctrl-C that cut a pool's shutdown short left the command waiting at exit for ever."""
    ignore_interrupts()
    STOPPED_BY.append(signum)
    raise KeyboardInterrupt


def _forget_interrupted_string_eval() -> None:
    """Let exit 130 stand under ``python -m shapesgen``. A Ctrl-C that lands inside a string
    ``exec`` (dataclasses and namedtuples build their methods so, while a module imports) sets
    CPython's "unhandled KeyboardInterrupt" flag even though the CLI catches it, and under ``-m``
    the interpreter then ends by killing itself with SIGINT (status -2, not 130). Every string
    eval clears that flag as it starts."""
    eval("None")


def ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def usage_line(exc: Exception) -> str:
    """A command-line error of click (as vendored by typer) as one line: what was wrong, and
    where the command's options are listed (click prints a usage block and a boxed message)."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
    text = " ".join(message.replace("Value error, ", "").split()).rstrip(".")
    return f"error: {text}{where}"


def _run() -> object:
    """The command's exit code; click's own errors as one line (exit 2), its Abort as Ctrl-C.
    Typer is imported here, inside :func:`main`'s handling of an interrupt during imports."""
    import typer
    from typer.exceptions import TyperException

    from .app import app
    from .common import REPORTED

    try:
        try:
            code = typer.main.get_command(app).main(prog_name="shapesgen", standalone_mode=False)
            ignore_interrupts()  # done (or failed, and said so): nothing left to stop
        finally:
            sys.stdout.flush()
        if code == EXIT_INTERRUPTED and not REPORTED:  # typer's silent exit for a Ctrl-C of its own
            raise KeyboardInterrupt
        return code
    except TyperException as exc:  # an unknown flag, a value of the wrong kind; no arguments: help shown
        if type(exc).__name__ != "NoArgsIsHelpError":
            sys.stderr.write(usage_line(exc) + "\n")
        return getattr(exc, "exit_code", 2)
    except typer.Abort:
        raise KeyboardInterrupt from None


def main() -> None:
    """Run the ``shapesgen`` command."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not ours to show
    if sys.stdout is None:  # started with standard output closed (`>&-`): what it would show is dropped
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout, open until exit
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is shown as its own bytes, not '\udcff'
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    code: object = 0
    try:
        code = _run()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # `shapesgen info x | head`: the reader left; say nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    except OSError as exc:  # the output could not be written (a full disk, a closed stream)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        try:
            sys.stderr.write(f"error: cannot write the output ({exc.strerror or exc})\n")
        except OSError:
            pass
        code = 1
    ignore_interrupts()  # the interpreter's exit (TensorFlow's teardown): not a SIGTERM death
    if code == EXIT_INTERRUPTED:
        _forget_interrupted_string_eval()
    status = code if isinstance(code, int) else 1 if code else 0
    if status == EXIT_INTERRUPTED and STOPPED_BY[:1] == [signal.SIGTERM]:
        status = EXIT_TERMINATED
    if _failed_write() or _killed_pool():  # exit handlers that would crash or wait for ever: skip them
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _killed_pool() -> bool:
    """Whether a local pool's workers were killed (tasks that did not stop in time): Python's
    exit would join the pool's manager thread, which may wait for ever on a result a killed
    worker was sending (see ``shapesgen.engines.KILLED_POOLS``)."""
    engines = sys.modules.get("shapesgen.engines")
    return bool(engines is not None and engines.KILLED_POOLS)


def _failed_write() -> bool:
    """Whether the command reported a :class:`~shapesgen.errors.FailedWrite` (typer loaded only then)."""
    common = sys.modules.get(f"{__package__}.common")
    return bool(common is not None and common.FAILED_WRITES)
