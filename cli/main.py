"""``shapesgen`` commands. Each parses options, builds a config, makes one library call.

Library errors (:class:`shapesgen.ShapesgenError`) become one line on stderr and
their exit code (2 for bad input, 1 for a failed validation, 130 for Ctrl-C).
"""

from __future__ import annotations

import io
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
from shapesgen.config import PRESET_HELP, PRESETS, StorageConfig, build_config, load_config, parse_pair, parse_sizes
from shapesgen.files import write_atomically

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


def _version(value: bool) -> None:
    if value:
        from shapesgen import __version__
        from shapesgen.schema import FORMAT_VERSION

        out.print(f"shapesgen {__version__} (HDF5 format {FORMAT_VERSION})")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Occlusion scenes with exact amodal ground truth and N-layer masks."""


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
    config_file: Annotated[
        Path | None, typer.Option("--config", help="Start from a SceneConfig JSON (e.g. an export's config.json).")
    ] = None,
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
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted render of the same config (after a hard kill, its scenes are re-checked).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing file (or discard an interrupted one).")
    ] = False,
    coco: Annotated[
        Path | None, typer.Option(help="Also export COCO JSON + PNGs into this folder (default export options).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Render a dataset of occlusion scenes into a self-describing HDF5 file."""
    from shapesgen.coco import export_coco
    from shapesgen.render import render_dataset

    def call() -> Path:
        config = build_config(
            preset,
            base=load_config(config_file) if config_file else None,
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
        if coco is not None:
            with progress_bar("export", quiet) as update:
                export_coco(path, coco, force=force, progress=update)
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
    from shapesgen.errors import ConfigError
    from shapesgen.hdf5 import open_dataset
    from shapesgen.preview import preview_grid

    def call() -> Path:
        if count < 1:
            raise ConfigError(f"--count={count} is invalid: must be >= 1")
        if out_path.suffix.lower() != ".png":
            raise ConfigError(f"--out {out_path}: the preview is a PNG, give a path ending in .png")
        with open_dataset(path) as ds:
            if not 0 <= start < len(ds):
                raise ConfigError(f"--start={start} is invalid: the dataset has scenes 0..{len(ds) - 1}")
            grid = preview_grid(ds, count, start)
        png = io.BytesIO()
        grid.save(png, format="PNG")
        return write_atomically(out_path, png.getvalue())

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


export_app = typer.Typer(help="Export a dataset for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("coco")
def export_coco_command(
    path: Annotated[Path, typer.Argument(help="A shapesgen HDF5 file.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to create (annotations.json, images/, card).")],
    style: Annotated[str, typer.Option(help="'coco' (flat, amodal extras) or 'cocoa' (Zhu et al. regions).")] = "coco",
    segmentation: Annotated[str, typer.Option(help="'rle' or 'polygon' (exact polygons from the geometry).")] = "rle",
    resolution: Annotated[
        str, typer.Option(help="'image' or 'mask' resolution for annotations (and images).")
    ] = "image",
    include_hidden: Annotated[
        bool, typer.Option("--include-hidden", help="Also export instances with no visible mask pixel.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Export to COCO JSON that pycocotools and detectron2-style loaders read unchanged."""
    from shapesgen.coco import ExportConfig, export_coco

    def call() -> Path:
        export = ExportConfig(
            style=style,  # type: ignore[arg-type]
            segmentation=segmentation,  # type: ignore[arg-type]
            resolution=resolution,  # type: ignore[arg-type]
            include_hidden=include_hidden,
        )
        with progress_bar("export", quiet) as update:
            return export_coco(path, out_dir, export, force=force, progress=update)

    written = run(call)
    if not quiet:
        err.print(f"wrote {written}")


@app.command()
def evaluate(
    gt: Annotated[Path, typer.Option("--gt", help="Ground truth: a shapesgen HDF5 file or a COCO/COCOA export JSON.")],
    dt: Annotated[Path | None, typer.Option("--dt", help="Predictions in COCO results format (RLE masks).")] = None,
    oracle_layers: Annotated[
        int | None, typer.Option(help="Score the oracle: each instance = its pixels in the first K GT layers.")
    ] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Add class-aware AP/AR per class.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics to this JSON file.")] = None,
) -> None:
    """COCO-amodal AP/AR, class-agnostic, with AR by occlusion band (none/partial/heavy)."""
    from shapesgen.errors import ConfigError
    from shapesgen.evaluate import evaluate as run_evaluation
    from shapesgen.evaluate import load_ground_truth, load_predictions, oracle_predictions

    warnings: list[str] = []

    def call() -> dict[str, Any]:
        if (dt is None) == (oracle_layers is None):
            raise ConfigError("give exactly one of --dt (predictions) or --oracle-layers K")
        truth = load_ground_truth(gt, keep_layers=oracle_layers is not None)
        if oracle_layers is not None:
            detections = oracle_predictions(truth, oracle_layers)
        else:
            assert dt is not None
            detections = load_predictions(dt, truth, warnings)
        metrics = run_evaluation(truth, detections, per_class=per_class)
        metrics["ground_truth_path"] = str(gt)
        metrics["predictions"] = f"oracle K={oracle_layers}" if oracle_layers is not None else str(dt)
        if json_out is not None:
            write_atomically(json_out, (json.dumps(metrics, indent=2) + "\n").encode())
        return metrics

    metrics = run(call)
    for warning in warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    _print_metrics(metrics)


def _fmt(value: float) -> str:
    return "n/a" if value < 0 else f"{value:.4f}"


def _print_metrics(metrics: dict[str, Any]) -> None:
    counts = metrics["ground_truth"]
    title = f"{metrics['predictions']} vs {metrics['ground_truth_path']}: {counts['instances']} GT instances"
    table = Table("AP", "AP50", "AP75", "AR100", "AR none", "AR partial", "AR heavy", title=title)
    overall, bands = metrics["all"], metrics["bands"]
    table.add_row(
        *[_fmt(overall[k]) for k in ("AP", "AP50", "AP75", "AR100")],
        *[_fmt(bands[b]["AR100"]) for b in ("none", "partial", "heavy")],
    )
    out.print(table)
    out.print(
        f"GT per band: none {counts['none']}, partial {counts['partial']}, heavy {counts['heavy']}; "
        f"{metrics['detections']} detections"
    )
    if "per_class" in metrics:
        classes = Table("class", "AP", "AR100", title="class-aware")
        for name, values in metrics["per_class"].items():
            classes.add_row(name, _fmt(values["AP"]), _fmt(values["AR100"]))
        out.print(classes)


@app.command()
def train(
    train_data: Annotated[
        str,
        typer.Option("--train", help="HDF5 file, or render:PRESET[,instances=N][,layers=L][,seed=S] for live scenes."),
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory (model, configs, checkpoints, logs).")],
    val: Annotated[Path | None, typer.Option(help="Validation HDF5, evaluated every --eval-every epochs.")] = None,
    preset: Annotated[
        str, typer.Option(help="Model preset: paper (Xception), light (MobileNetV2), cpu, tiny.")
    ] = "paper",
    epochs: Annotated[int | None, typer.Option(help="Epochs (paper: 100).")] = None,
    steps_per_epoch: Annotated[
        int | None, typer.Option(help="Steps per epoch (default: one pass, or 1000 images live).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (paper: 2).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (paper: 1e-4).")] = None,
    backbone: Annotated[
        str | None, typer.Option(help="xception, mobilenetv2 or tiny (overrides the preset's).")
    ] = None,
    backbone_weights: Annotated[
        Path | None, typer.Option(help="Local weights file to start from (never downloaded).")
    ] = None,
    embedding_dim: Annotated[int | None, typer.Option(help="Embedding dimension C (paper: 6).")] = None,
    hinge: Annotated[str | None, typer.Option(help="squared (reference code) or linear (paper text).")] = None,
    distance_scope: Annotated[str | None, typer.Option(help="class (reference code) or all (paper text).")] = None,
    reg_weight: Annotated[float | None, typer.Option(help="Regulariser weight (reference 0.01, paper 1).")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate on --val every N epochs (0 = never).")] = None,
    eval_scenes: Annotated[int | None, typer.Option(help="Validation scenes used per evaluation.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for weights, shuffling and clustering.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's last checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing run directory.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train the layered-embedding model (N layers = the dataset's layers)."""
    from amodal_model.config import TRAIN_PRESETS
    from amodal_model.train import Callbacks
    from amodal_model.train import train as run_training
    from shapesgen.errors import ConfigError

    def call() -> Path:
        if preset not in TRAIN_PRESETS:
            raise ConfigError(f"--preset={preset!r} is invalid: must be one of {', '.join(TRAIN_PRESETS)}")
        overrides = {
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size,
            "learning_rate": lr,
            "backbone": backbone,
            "backbone_weights": str(backbone_weights) if backbone_weights else None,
            "embedding_dim": embedding_dim,
            "hinge": hinge,
            "distance_scope": distance_scope,
            "reg_weight": reg_weight,
            "eval_every": eval_every,
            "eval_scenes": eval_scenes,
            "seed": seed,
        }
        if backbone_weights is not None and not backbone_weights.is_file():
            raise ConfigError(f"--backbone-weights {backbone_weights}: no such file")
        config = TRAIN_PRESETS[preset].replace(**{k: v for k, v in overrides.items() if v is not None})
        bar = None if quiet else Progress(*_train_columns(), console=err)
        task = bar.add_task("epoch", total=None, loss="") if bar else None

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            if bar is not None and task is not None:
                if not bar.live.is_started:
                    bar.start()
                bar.update(
                    task,
                    description=f"epoch {epoch}/{config.epochs}",
                    completed=step,
                    total=steps,
                    loss=f"loss {loss:.4f}",
                )

        def on_epoch(row: dict[str, Any]) -> None:
            shown = ", ".join(f"{k} {row[k]}" for k in ("loss", "images_per_s", "AP", "AR100") if k in row)
            (bar.console if bar else err).print(f"epoch {row['epoch']}: {shown}", highlight=False)

        try:
            return run_training(
                train_data,
                out_dir,
                config,
                val=val,
                resume=resume,
                force=force,
                callbacks=Callbacks(on_step=on_step, on_epoch=on_epoch),
            )
        finally:
            if bar is not None:
                bar.stop()

    run_dir = run(call)
    err.print(f"model saved in {run_dir}")


def _train_columns() -> tuple[Any, ...]:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Option("--model", help="A run directory written by `shapesgen train`.")],
    data: Annotated[Path, typer.Option("--data", help="HDF5 file to predict.")],
    out_path: Annotated[Path, typer.Option("--out", help="COCO results JSON to write.")],
    limit: Annotated[int | None, typer.Option(help="Only the first N scenes.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Predict amodal instances (COCO results, masks at mask resolution) for an HDF5 file."""
    from amodal_model.predict import predict_run
    from shapesgen.errors import ConfigError

    def call() -> Path:
        if limit is not None and limit < 1:
            raise ConfigError(f"--limit={limit} is invalid: must be >= 1")
        if batch_size < 1:
            raise ConfigError(f"--batch-size={batch_size} is invalid: must be >= 1")
        with progress_bar("predict", quiet) as update:
            return predict_run(model_dir, data, out_path, limit=limit, batch_size=batch_size, progress=update)

    written = run(call)
    if not quiet:
        err.print(f"wrote {written}")


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
