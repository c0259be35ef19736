"""The console-script entry point, kept free of heavy imports so that Ctrl-C or a
SIGTERM at any moment, even while the CLI is still importing, ends in one line.

SIGTERM (``kill``, ``timeout``, a scheduler stopping a job) is treated like Ctrl-C:
the command stops the same way, keeping what can be resumed and removing the rest.
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


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _forget_interrupted_string_eval() -> None:
    """Let exit 130 stand under ``python -m shapesgen``. A Ctrl-C that lands inside a string
    ``exec`` (dataclasses and namedtuples build their methods so, while a module imports) sets
    CPython's "unhandled KeyboardInterrupt" flag even though the CLI catches it, and under ``-m``
    the interpreter then ends by killing itself with SIGINT (status -2, not 130). Every string
    eval clears that flag as it starts."""
    eval("None")


def usage_line(exc: Exception) -> str:
    """A command-line error of click (as vendored by typer) as one line: what was wrong, and
    where the command's options are listed (click prints a usage block and a boxed message)."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
    text = " ".join(message.replace("Value error, ", "").split()).rstrip(".")
    return f"error: {text}{where}"


def main() -> None:
    """Run the ``shapesgen`` command."""
    signal.signal(signal.SIGTERM, _terminate)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not ours to show
    code: object = 0
    try:
        import typer
        from typer.exceptions import TyperException

        from .app import app

        try:
            code = typer.main.get_command(app).main(prog_name="shapesgen", standalone_mode=False)
        finally:
            sys.stdout.flush()
    except TyperException as exc:  # click's errors: an unknown flag, a value of the wrong kind (exit 2)
        sys.stderr.write(usage_line(exc) + "\n")
        code = getattr(exc, "exit_code", 2)
    except SystemExit as exc:
        code = exc.code
    except (KeyboardInterrupt, typer.Abort):
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
    if code == EXIT_INTERRUPTED:
        _forget_interrupted_string_eval()
    sys.exit(code if isinstance(code, int) else 1 if code else 0)
