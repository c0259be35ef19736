"""``shapesgen render`` and ``shapesgen presets``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shapesgen.config import (
    PRESET_HELP,
    PRESETS,
    AnchorMode,
    PresetName,
    SceneConfig,
    StorageConfig,
    build_config,
    load_config,
    parse_classes,
    parse_pair,
    parse_sizes,
)

from .common import Quiet, console, err, progress_bar, run

PresetOption = Annotated[
    PresetName,
    typer.Option(
        "--preset", help="Base configuration: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) + "."
    ),
]


def render(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", help="HDF5 file to write (parent folders are created).", show_default=False)
    ],
    num_scenes: Annotated[int, typer.Option("--num", help="Number of scenes.")] = 1000,
    preset: PresetOption = "paper",
    config: Annotated[
        Path | None, typer.Option("--config", help="Start from a SceneConfig JSON (e.g. an export's config.json).")
    ] = None,
    instances_per_class: Annotated[
        int | None, typer.Option("--instances", help="Instances per class (the paper's N).")
    ] = None,
    layers: Annotated[
        int | None, typer.Option("--layers", help="Mask layers stored (>= 1); layer k = k-th instance from the top.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed; omitted = draw one and record it in the file.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="Processes rendering in parallel (output is identical for any count).")
    ] = 1,
    classes: Annotated[
        str | None,
        typer.Option("--classes", help="Comma-separated shape kinds: circle,triangle,rectangle,ellipse,square."),
    ] = None,
    size: Annotated[
        list[str] | None,
        typer.Option("--size", help="Class size as fractions of the image side, e.g. rectangle=0.1x0.8 (repeatable)."),
    ] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Image side in pixels.")] = None,
    mask_size: Annotated[
        int | None, typer.Option("--mask-size", help="Mask side in pixels; must divide --image-size.")
    ] = None,
    anchor: Annotated[
        AnchorMode | None, typer.Option("--anchor", help="Placement pivot: corner (reference code) or center.")
    ] = None,
    anchor_range: Annotated[
        str | None, typer.Option("--anchor-range", help="Anchor range 'low,high' as fractions of the image side.")
    ] = None,
    rotation_range: Annotated[
        str | None, typer.Option("--rotation-range", help="Rotation range 'low,high' in degrees.")
    ] = None,
    outline_width: Annotated[
        float | None, typer.Option("--outline-width", help="Outline width as a fraction of the image side.")
    ] = None,
    channels: Annotated[int | None, typer.Option("--channels", help="Image channels: 1 (grey) or 3 (RGB).")] = None,
    compression_level: Annotated[
        int,
        typer.Option(
            "--compression",
            help="gzip level 0-9 (0 = none; 1 uses ISA-L's faster deflate); a resumed render keeps the file's own.",
        ),
    ] = 1,
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
        Path | None,
        typer.Option("--coco", help="Also export COCO JSON + PNGs into this new folder (default export options)."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Render a dataset of occlusion scenes into a self-describing HDF5 file."""
    from shapesgen.coco import check_export_target, export_coco
    from shapesgen.render import render_dataset

    def build() -> tuple[SceneConfig, StorageConfig]:
        scene_config = build_config(
            preset,
            base=load_config(config) if config is not None else None,
            classes=parse_classes(classes) if classes is not None else None,
            sizes=parse_sizes(size or []),
            instances_per_class=instances_per_class,
            layers=layers,
            seed=seed,
            image_size=image_size,
            mask_size=mask_size,
            anchor=anchor,
            anchor_range=parse_pair("anchor_range", anchor_range) if anchor_range is not None else None,
            rotation_range=parse_pair("rotation_range", rotation_range) if rotation_range is not None else None,
            outline_width=outline_width,
            channels=channels,
        )
        return scene_config, StorageConfig(compression_level=compression_level)

    scene_config, storage = run(ctx, build)
    if coco is not None:
        run(
            ctx,
            lambda: check_export_target(out, coco, force, inputs={"config": config}, probe=True),
            aliases={"out": "coco", "source": "out"},
        )
    with progress_bar("render", quiet) as update:
        path = run(
            ctx,
            lambda: render_dataset(
                scene_config,
                out,
                num_scenes=num_scenes,
                workers=workers,
                storage=storage,
                resume=resume,
                force=force,
                progress=update,
                inputs={"config": config},
            ),
        )
    if not quiet:
        err.print(f"wrote {path}")
    if coco is not None:
        with progress_bar("export", quiet) as update:
            folder = run(
                ctx,
                lambda: export_coco(path, coco, force=force, progress=update, inputs={"config": config}),
                aliases={"out": "coco"},
            )
        if not quiet:
            err.print(f"wrote {folder}")


def presets() -> None:
    """List the built-in presets and their settings."""
    table = Table("preset", "description", "classes", "N/class", "layers")
    for name, config in PRESETS.items():
        table.add_row(
            name, PRESET_HELP[name], ",".join(config.class_names), str(config.instances_per_class), str(config.layers)
        )
    console.print(table)
