"""What every command shares: option aliases, the progress bar, and turning library
errors into one line that names the flag the user typed.

Library messages name parameters in Python keyword form (``num_scenes=0 is
invalid``, ``pass force=True``); :func:`run` rewrites them with the command's own
flags (``--num 0 is invalid``, ``pass --force``), taken from the command's
declared options, so the two can never drift apart.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from shapesgen.errors import FailedWrite, ShapesgenError, ShapesgenNote, one_line

from .entry import STOPPED_BY, ignore_interrupts


class _Console(Console):
    """A rich console whose closed pipe (``shapesgen info x | head``) ends the command
    quietly with 141, as a shell reports SIGPIPE, instead of rich's exit 1."""

    def on_broken_pipe(self) -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), (sys.stderr if self.stderr else sys.stdout).fileno())
        raise SystemExit(EXIT_BROKEN_PIPE)


EXIT_BROKEN_PIPE = 141
err = _Console(stderr=True)
console = _Console()
T = TypeVar("T")

EXIT_INTERRUPTED = 130
EXIT_ENVIRONMENT = 1  # the system refused (disk full, out of memory): not the user's input
EXIT_INTERNAL = 70  # a bug in shapesgen (EX_SOFTWARE)
DEBUG_ENV = "SHAPESGEN_TRACEBACK"

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output (never an input).")]
DatasetPath = Annotated[
    Path, typer.Argument(help="A shapesgen HDF5 file or a sharded dataset folder.", show_default=False)
]


def flag_names(ctx: typer.Context, aliases: Mapping[str, str] | None = None) -> dict[str, tuple[str, bool]]:
    """Library parameter name -> (the flag the user types, whether it is a switch).

    Command parameters carry the library's names; ``aliases`` maps a library
    parameter to a command parameter where the two differ (``out`` -> ``coco``).
    """
    params = {p.name: p for p in ctx.command.params if p.name}
    names: dict[str, tuple[str, bool]] = {}
    for name, param in params.items():
        flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        names[name] = (flag if flag.startswith("-") else flag.upper(), bool(getattr(param, "is_flag", False)))
    declared = dict(names)
    for library_name, command_name in (aliases or {}).items():
        if command_name in declared:
            names[library_name] = declared[command_name]
    return names


def with_flags(
    message: str, names: Mapping[str, tuple[str, bool]], param: str | None = None, related: tuple[str, ...] = ()
) -> str:
    """Rewrite a library message with the command's flags.

    ``param=`` (the bad parameter; by default the name a message starts with, as in
    ``num_scenes=0 is invalid``) becomes its flag (``--num 0 is invalid``), and switch
    hints (``pass force=True``) become the switch (``pass --force``); so do the
    ``related`` parameters the message also names, and their allowed values drop ``None``
    (what leaving the flag out gives). Other ``name=``
    text is left alone: it describes the contents of a file or the library's state,
    not something the user typed.
    """
    leading = re.match(r"(\w+)=", message)
    param = param if param is not None else (leading.group(1) if leading else None)
    for name, (flag, switch) in names.items():
        if switch:
            message = re.sub(rf"(?<![^\s(]){re.escape(name)}=True\b", flag, message)
            message = re.sub(rf"(?<![^\s(]){re.escape(name)}=False\b", f"no {flag}", message)
    for named in (param, *related):
        if named is not None and named in names and not names[named][1]:
            message = re.sub(rf"(?<![^\s(]){re.escape(named)}=", f"{names[named][0]} ", message)
            message = re.sub(r"\bmust be None( \([^)]*\))? or ", "must be ", message)  # None: leaving the flag out
    return message


def warn(message: str) -> None:
    """Print one warning line (a value in it is never read as markup)."""
    err.print(f"[yellow]warning:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)


def finished() -> None:
    """The command's outputs are published: a Ctrl-C or SIGTERM from here on (while it prints
    its last lines, shuts its pools down or the interpreter exits) is ignored, so a complete
    output never ends in 'error: interrupted' (exit 130) or a bare SIGTERM death (143)."""
    ignore_interrupts()


REPORTED: list[str] = []
"""The error lines :func:`fail` printed: typer ends a Ctrl-C outside :func:`run` (while the command
line is parsed) with exit 130 and no word, which the entry point then says."""


FAILED_WRITES: list[str] = []
"""The :class:`FailedWrite` errors reported: the entry point then ends the process at once (see there)."""


def fail(message: str, code: int) -> typer.Exit:
    """Print one error line; the caller raises the returned Exit."""
    line = escape(" ".join(message.split()))
    err.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    REPORTED.append(line)
    return typer.Exit(code)


def _debug() -> bool:
    """``SHAPESGEN_TRACEBACK=1`` (or any value but empty, 0, false, no) shows tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _stop_reported() -> None:
    """After a Ctrl-C or SIGTERM, an unexpected failure is its consequence (TensorFlow turns an
    interrupt inside a tensor conversion into a TypeError): it is reported as the stop, exit
    130, not as a bug. shapesgen's own errors keep their lines (an interrupted render says
    what it kept)."""
    if STOPPED_BY:
        raise fail("interrupted", EXIT_INTERRUPTED) from None


def run(ctx: typer.Context, call: Callable[[], T], aliases: Mapping[str, str] | None = None) -> T:
    """Run one library call. Its errors become one line naming this command's flags and
    their exit code; notes print as they happen; nothing ever shows a traceback unless
    ``SHAPESGEN_TRACEBACK=1`` (for bug reports)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ShapesgenNote)
            original = warnings.showwarning

            def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
                if issubclass(category, ShapesgenNote):
                    text = with_flags(str(message), flag_names(ctx, aliases))
                    err.print(f"[yellow]note:[/] {escape(text)}", highlight=False, soft_wrap=True)
                else:
                    original(message, category, *args, **kwargs)

            warnings.showwarning = show
            return call()
    except ShapesgenError as exc:
        if isinstance(exc, FailedWrite):
            FAILED_WRITES.append(str(exc))
        raise fail(with_flags(str(exc), flag_names(ctx, aliases), exc.param, exc.related), exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except MemoryError:
        _stop_reported()
        if _debug():
            raise
        raise fail("out of memory: use a smaller config, fewer workers or a smaller batch", EXIT_ENVIRONMENT) from None
    except OSError as exc:
        _stop_reported()
        if _debug():
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(f"{where}{exc.strerror or exc}", EXIT_ENVIRONMENT) from None
    except Exception as exc:
        _stop_reported()
        if _debug():
            raise
        raise fail(
            f"internal error ({type(exc).__name__}: {one_line(exc, 200)}); if an input file was edited or "
            "damaged, check it with `shapesgen validate`; otherwise this is a bug in shapesgen: please report "
            f"it with the command (rerun with {DEBUG_ENV}=1 for the traceback)",
            EXIT_INTERNAL,
        ) from None


ABSL_RECORD = re.compile(r"([IWEF])\d{4} \d\d:\d\d:")  # a native log record's first line; F is fatal
ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog()"
CHATTER_CONTINUATION = "To enable the following instructions:"  # the CPU-feature notice's second line


def without_native_chatter(lines: Iterable[str]) -> Iterator[str]:
    """``lines`` less TensorFlow's start-up chatter, which its native logging writes whatever
    TF_CPP_MIN_LOG_LEVEL says (it reads the level only once absl logging starts): absl's
    notice, info and warning records, and the CPU-feature notice's second line. Error and
    fatal records, and anything else, pass."""
    dropped = False
    for line in lines:
        record = ABSL_RECORD.match(line)
        if record:
            dropped = record.group(1) in "IW"
        elif line.startswith(ABSL_NOTICE):
            dropped = True
        else:
            dropped = dropped and line.startswith(CHATTER_CONTINUATION)
        if not dropped:
            yield line


@contextmanager
def native_chatter_hidden() -> Iterator[None]:
    """Filter what is written to the process's standard error while the block runs (importing
    TensorFlow) through :func:`without_native_chatter`, line by line as it comes, so that what
    precedes a crash is still shown. ``SHAPESGEN_TRACEBACK=1`` (or a closed stderr) shows
    everything untouched."""
    if _debug() or "tensorflow" in sys.modules or sys.stderr is None:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read, write = os.pipe()
    except (OSError, ValueError):
        yield
        return

    def forward() -> None:
        with open(read, "rb") as source, open(os.dup(saved), "wb", buffering=0) as target:
            lines = (raw.decode(errors="replace") for raw in source)
            for line in without_native_chatter(lines):
                target.write(line.encode(errors="replace"))

    thread = threading.Thread(target=forward, name="native-stderr-filter", daemon=True)
    thread.start()
    try:
        os.dup2(write, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer goes: the filter reads to its end and stops
        os.close(write)
        thread.join(timeout=10)
        os.close(saved)


@contextmanager
def dask_chatter_hidden() -> Iterator[None]:
    """Dask's log records and warnings are not shown while the block runs (a lost scheduler
    logs a traceback, a busy dashboard port a three-line warning): the command reports a
    failure in its one line. ``SHAPESGEN_TRACEBACK=1`` shows them."""
    if _debug():
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(distributed|dask)(\.|$)")
            yield
    finally:
        logging.disable(previous)


class Updater(Protocol):
    def __call__(self, done: int, total: int, *, description: str | None = None, status: str = "") -> None: ...


@contextmanager
def progress_bar(label: str, quiet: bool, unit: str = "scenes") -> Iterator[Updater | None]:
    """A rich bar with rate and ETA on a terminal, shown from the first update (so errors come alone).

    The updater takes ``(done, total)`` and optionally a new description and a status
    text (e.g. the training loss) shown in place of the rate.
    """
    if quiet or not err.is_terminal:  # no bar frames in logs and pipes
        yield None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
    )
    task = bar.add_task(label, total=None, status="")

    def update(done: int, total: int, *, description: str | None = None, status: str = "") -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total, description=description or label)
        speed = bar.tasks[task].speed
        bar.update(task, status=status or (f"{speed:,.0f} {unit}/s" if speed else ""))

    try:
        yield update
    except BaseException:
        bar.live.transient = True  # a failed command leaves only its one error line
        raise
    finally:
        bar.stop()
