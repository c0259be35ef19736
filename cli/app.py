"""The ``shapesgen`` command: one module per command group, each command one library call.

Installed as the package ``shapesgen_cli`` (the folder is ``cli/``); the console
script is ``shapesgen`` and ``python -m shapesgen`` runs the same app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from . import evaluate, export, inspect, model, render
from .common import console

app = typer.Typer(
    name="shapesgen",
    help="Occlusion scenes with exact amodal ground truth and N-layer masks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from shapesgen import __version__
        from shapesgen.storage.layout import FORMAT_VERSION

        console.print(f"shapesgen {__version__} (HDF5 format {FORMAT_VERSION})")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Occlusion scenes with exact amodal ground truth and N-layer masks."""


app.command()(render.render)
app.command()(inspect.info)
app.command()(inspect.preview)
app.command()(inspect.validate)
app.add_typer(export.export_app, name="export")
app.command()(evaluate.evaluate)
app.command()(model.train)
app.command()(model.predict)
app.command()(model.models)
app.command()(render.presets)
app.command()(render.datasets)
