"""``docs/cli.md``, generated from the commands themselves so it cannot drift
(``make docs`` writes it; a test compares)."""

from __future__ import annotations

import typing
from typing import Any

import typer

INTRO = """# CLI reference

Generated from the commands by `make docs`; a test fails if it drifts. Every command
also prints this with `--help`; `shapesgen --version` prints the package and HDF5
format versions; `python -m shapesgen` is the same command.

Exit codes: 0 success; 1 a failed check (`validate`) or a refusal by the system (a full
disk, out of memory, a worker killed, an output another command is writing); 2 bad
input (one line naming the flag and what is allowed, checked before any work, nothing
written; an output folder you may not write, or on a read-only file system, counts as
bad input); 130 Ctrl-C, 143 SIGTERM (`render` and `train` keep what can be resumed, the
rest is removed; the first one stops the command, later ones are ignored while it
cleans up); 70 an unexpected error (one line; check edited inputs with
`shapesgen validate`, otherwise set `SHAPESGEN_TRACEBACK=1` and report the traceback).

Outputs are written to a temporary path and renamed on success. While a command writes
`X`, it holds `X.lock`: a second command writing `X` is refused. An existing output is
replaced only with `--force`, only by a complete new one, never when it is (or holds) an
input, never when it is a link, FIFO or device, and an export folder only if it is a
shapesgen export exactly as written (every file matches its `SHA256SUMS`). A single-file
output is replaced only if it is an earlier output of the same kind or empty: a shapesgen
dataset for `render --out`, a COCO results list (a JSON list of records naming their `image_id`) for `predict --out`,
evaluate's metrics (a JSON object whose first key is `all`) for `evaluate --json`, a PNG for
`preview` (a model, notes or any other file there is kept, with one line). The files and
folders `render` (sharded too), `predict`, `evaluate --json` and `preview` write never go
into what shapesgen wrote as a whole, even with `--force`, nor does an export (except into
a sharded dataset's folder): a training run's own entries (model, configs,
checkpoints, logs; results may sit beside them), a sharded dataset's folder (its
`manifest.json` names shapesgen's format, or, before a stopped render has one, its shard files
do; an export may go in a subfolder of it) or a COCO
export's folder or its `images/` (its `SHA256SUMS` lists its `annotations.json`). An
output's name may not end in `.partial` or `.lock`: those are the names of the files made
beside an output, which a later command may delete. A sharded render replaces only files
it can have written: shards, and a `dataset.h5` that is a view of shards; a user's file
under those names, or a link, is refused and kept.
"""


def _choices(annotation: Any) -> list[str] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return [str(v) for v in typing.get_args(arg)]
    return None


def _metavar(annotation: Any) -> str:
    names = {int: "INT", float: "FLOAT", str: "TEXT"}
    for arg in (annotation, *typing.get_args(annotation)):
        if arg in names:
            return names[arg]
        if isinstance(arg, type) and arg.__name__.endswith("Path"):
            return "PATH"
        if typing.get_origin(arg) is list:
            return _metavar(typing.get_args(arg)[0]) + "..."
    return "VALUE"


def _row(param: Any) -> str:
    opts = ", ".join(f"`{o}`" for o in param.opts) if param.opts[0].startswith("-") else f"`{param.name.upper()}`"
    annotation = param.type_descriptor.annotation if getattr(param, "type_descriptor", None) else None
    choices = _choices(annotation)
    if choices:
        opts += " " + "\\|".join(choices)
    elif param.opts[0].startswith("-") and not getattr(param, "is_flag", False):
        opts += f" {_metavar(annotation)}"
    if param.required:
        default = "required"
    elif getattr(param, "is_flag", False):
        default = ""
    elif param.default is None:
        default = ""
    else:
        default = f"`{param.default}`"
    meaning = (param.help or "").replace("|", "\\|")
    return f"| {opts} | {default} | {meaning} |"


def _command(path: str, command: Any) -> list[str]:
    lines = [f"## `{path}`", "", (command.help or "").strip(), ""]
    params = [p for p in command.params if p.name and p.expose_value and p.name != "ctx"]
    if params:
        lines += ["| option | default | meaning |", "|---|---|---|", *[_row(p) for p in params], ""]
    return lines


def cli_markdown(app: typer.Typer) -> str:
    """The CLI reference as Markdown: every command, option, default and help text."""
    root = typer.main.get_command(app)
    lines = [INTRO]
    groups: list[tuple[str, Any]] = [("shapesgen", root)]
    while groups:
        prefix, group = groups.pop(0)
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                groups.append((f"{prefix} {name}", command))
            else:
                lines += _command(f"{prefix} {name}", command)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    from .app import app

    print(cli_markdown(app), end="")
