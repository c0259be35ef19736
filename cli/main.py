"""``shapesgen`` commands. Each parses options, builds a config, makes one library call.

Library errors (:class:`shapesgen.ShapesgenError`) become one line on stderr and
their exit code (2 for bad input, 1 for a failed validation, 130 for Ctrl-C).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from shapesgen import ShapesgenError
from shapesgen.config import PRESET_HELP, PRESETS, StorageConfig, build_config, parse_pair, parse_sizes

app = typer.Typer(
    name="shapesgen",
    help="Occlusion scenes with exact amodal ground truth and N-layer masks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()
T = TypeVar("T")


def run(call: Callable[[], T]) -> T:
    """Run a library call; its errors become one clean line and an exit code."""
    try:
        return call()
    except ShapesgenError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


@contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich bar with rate and ETA, shown from the first update (so errors come alone)."""
    if quiet:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=err)
    task = bar.add_task(label, total=None, rate="")

    def update(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)
        speed = bar.tasks[task].speed
        bar.update(task, rate=f"{speed:,.0f} scenes/s" if speed else "")

    try:
        yield update
    finally:
        bar.stop()


PresetOpt = Annotated[
    str, typer.Option(help="Base configuration: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
]


@app.command()
def render(
    out_path: Annotated[Path, typer.Option("--out", help="HDF5 file to write (parent folders are created).")],
    num: Annotated[int, typer.Option("--num", help="Number of scenes.")] = 1000,
    preset: PresetOpt = "paper",
    instances: Annotated[int | None, typer.Option(help="Instances per class (the paper's N).")] = None,
    layers: Annotated[
        int | None, typer.Option(help="Mask layers stored (>= 1); layer k = k-th instance from the top.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; omitted = draw one and record it in the file.")] = None,
    workers: Annotated[
        int, typer.Option(help="Processes rendering in parallel (output is identical for any count).")
    ] = 1,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated shape kinds: circle,triangle,rectangle,ellipse,square.")
    ] = None,
    size: Annotated[
        list[str] | None,
        typer.Option(help="Class size as fractions of the image side, e.g. rectangle=0.1x0.8 (repeatable)."),
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    mask_size: Annotated[int | None, typer.Option(help="Mask side in pixels; must divide --image-size.")] = None,
    anchor: Annotated[str | None, typer.Option(help="'corner' (reference code) or 'center' placement.")] = None,
    anchor_range: Annotated[
        str | None, typer.Option(help="Anchor range 'low,high' as fractions of the image side.")
    ] = None,
    rotation_range: Annotated[str | None, typer.Option(help="Rotation range 'low,high' in degrees.")] = None,
    outline_width: Annotated[float | None, typer.Option(help="Outline width as a fraction of the image side.")] = None,
    channels: Annotated[int | None, typer.Option(help="Image channels: 1 (grey) or 3 (RGB).")] = None,
    compression: Annotated[int, typer.Option(help="gzip level 0-9 (0 = none).")] = 1,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted render of the same config.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing file (or discard an interrupted one).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Render a dataset of occlusion scenes into a self-describing HDF5 file."""
    from shapesgen.render import render_dataset

    def call() -> Path:
        config = build_config(
            preset,
            classes=[c.strip() for c in classes.split(",")] if classes is not None else None,
            sizes=parse_sizes(size or []),
            instances_per_class=instances,
            layers=layers,
            seed=seed,
            image_size=image_size,
            mask_size=mask_size,
            anchor=anchor,
            anchor_range=parse_pair("anchor_range", anchor_range) if anchor_range else None,
            rotation_range=parse_pair("rotation_range", rotation_range) if rotation_range else None,
            outline_width=outline_width,
            channels=channels,
        )
        storage = StorageConfig(compression_level=compression)
        with progress_bar("render", quiet) as update:
            path = render_dataset(
                config,
                out_path,
                num_scenes=num,
                workers=workers,
                storage=storage,
                resume=resume,
                force=force,
                progress=update,
            )
        return path

    path = run(call)
    if not quiet:
        err.print(f"wrote {path}")


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A shapesgen HDF5 file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a dataset's config, counts, occlusion-rate and stack-depth histograms."""
    from shapesgen.hdf5 import open_dataset
    from shapesgen.stats import summarize

    def call() -> dict[str, Any]:
        with open_dataset(path, allow_incomplete=True) as ds:
            return summarize(ds)

    summary = run(call)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_summary(summary)


def _print_summary(s: dict[str, Any]) -> None:
    config = s["config"]
    head = Table(title=s["path"], show_header=False, box=None)
    for key in (
        "scenes",
        "instances",
        "visible_instances",
        "seed",
        "format_version",
        "package_version",
        "created",
        "complete",
    ):
        head.add_row(key, str(s[key]))
    shapes = ", ".join(f"{sh['name']} {'x'.join(str(v) for v in sh['size'])}" for sh in config["shapes"])
    head.add_row("shapes", shapes)
    for key in ("instances_per_class", "layers", "image_size", "mask_size", "anchor", "channels"):
        head.add_row(key, str(config[key]))
    out.print(head)
    classes = Table("class", "instances", "visible", title="class balance")
    for name, counts in s["per_class"].items():
        classes.add_row(name, str(counts["instances"]), str(counts["visible"]))
    out.print(classes)
    total = max(s["visible_instances"], 1)
    bands = Table("occlusion (visible instances)", "count", "share", title=f"mean rate {s['mean_occlusion_rate']:.3f}")
    for name, count in s["occlusion_bands"].items():
        bands.add_row(name, str(count), f"{count / total:.1%}")
    for name, count in s["occlusion_histogram"].items():
        bands.add_row(f"  {name}", str(count), f"{count / total:.1%}  " + "#" * round(40 * count / total))
    out.print(bands)
    pixels = sum(s["stack_depth_pixels"].values()) or 1
    stack = Table("instances covering a pixel", "pixels", "share", title="stack depth (mask pixels)")
    for depth, count in s["stack_depth_pixels"].items():
        stack.add_row(depth, str(count), f"{count / pixels:.2%}  " + "#" * round(40 * count / pixels))
    out.print(stack)
    out.print(f"pixels deeper than the {config['layers']} stored layers: {s['pixels_deeper_than_layers']:.2%}")


@app.command()
def preview(
    path: Annotated[Path, typer.Argument(help="A shapesgen HDF5 file.")],
    out_path: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("preview.png"),
    count: Annotated[int, typer.Option(help="Scenes to show (one row each).")] = 4,
    start: Annotated[int, typer.Option(help="First scene index.")] = 0,
) -> None:
    """Write a PNG grid: image | layer 1..N instance maps | amodal outlines."""
    from shapesgen.errors import ConfigError, DatasetError
    from shapesgen.hdf5 import open_dataset
    from shapesgen.preview import preview_grid

    def call() -> Path:
        if count < 1:
            raise ConfigError(f"--count={count} is invalid: must be >= 1")
        with open_dataset(path) as ds:
            if not 0 <= start < len(ds):
                raise ConfigError(f"--start={start} is invalid: the dataset has scenes 0..{len(ds) - 1}")
            grid = preview_grid(ds, count, start)
        if out_path.suffix.lower() != ".png":
            raise ConfigError(f"--out {out_path}: the preview is a PNG, give a path ending in .png")
        tmp = out_path.with_name(out_path.name + ".partial")
        try:
            out_path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(tmp, format="PNG")
            tmp.replace(out_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DatasetError(f"--out {out_path}: cannot write ({exc.strerror})") from None
        return out_path

    written = run(call)
    err.print(f"wrote {written}")


@app.command()
def validate(
    path: Annotated[Path, typer.Argument(help="A shapesgen HDF5 file.")],
    regenerate: Annotated[
        int, typer.Option(help="Scenes re-rendered from the stored config and compared byte for byte.")
    ] = 2,
    deep: Annotated[bool, typer.Option("--deep", help="Re-render and compare every scene.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Check every invariant of the format; exit 1 at the first violation."""
    from shapesgen.hdf5 import open_dataset
    from shapesgen.validate import validate_dataset

    def call() -> int:
        with open_dataset(path, allow_incomplete=True) as ds, progress_bar("validate", quiet) as update:
            return validate_dataset(ds, regenerate=-1 if deep else regenerate, progress=update)

    checked = run(call)
    out.print(f"OK: {path} ({checked} scenes, all invariants hold)")


@app.command()
def presets() -> None:
    """List the built-in presets and their settings."""
    table = Table("preset", "description", "classes", "N/class", "layers")
    for name, config in PRESETS.items():
        table.add_row(
            name, PRESET_HELP[name], ",".join(config.class_names), str(config.instances_per_class), str(config.layers)
        )
    out.print(table)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
