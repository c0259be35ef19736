"""The console-script entry point, kept free of heavy imports so that Ctrl-C or a
SIGTERM at any moment, even while the CLI is still importing, ends in one line.

SIGTERM (``kill``, ``timeout``, a scheduler stopping a job) is treated like Ctrl-C:
the command stops the same way, keeping what can be resumed and removing the rest.
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


def main() -> None:
    """Run the ``shapesgen`` command."""
    signal.signal(signal.SIGTERM, _terminate)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not ours to show
    code: object = 0
    try:
        from .app import app

        try:
            app()
        finally:
            sys.stdout.flush()
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
    sys.exit(code if isinstance(code, int) else 1 if code else 0)
