"""``shapesgen export coco``: share a dataset with COCO-based tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shapesgen.coco import Resolution, Segmentation, Style
from shapesgen.config import Engine
from shapesgen.metadata import DEFAULT_LICENSE, LICENSES

from .common import DatasetPath, Force, Quiet, err, finished, progress_bar, run

export_app = typer.Typer(help="Export a dataset for other tools.", no_args_is_help=True)


@export_app.command("coco")
def export_coco(
    ctx: typer.Context,
    path: DatasetPath,
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder to create (annotations.json, images/, layers/, card).", show_default=False),
    ],
    style: Annotated[
        Style,
        typer.Option(
            "--style",
            help="coco (flat, amodal extras), cocoa (Zhu et al. regions), kins (KINS 2020 keys) or aistron "
            "(amodal_segm, visible_segm, exact occluder_segm).",
        ),
    ] = "coco",
    segmentation: Annotated[
        Segmentation, typer.Option("--segmentation", help="rle, or polygon (exact polygons from the geometry).")
    ] = "rle",
    resolution: Annotated[
        Resolution, typer.Option("--resolution", help="Annotations (and images) at image or mask resolution.")
    ] = "image",
    include_hidden: Annotated[
        bool, typer.Option("--include-hidden", help="Also export instances with no visible pixel at that resolution.")
    ] = False,
    layers_png: Annotated[
        bool,
        typer.Option(
            "--layers-png",
            help="Also write the N-layer maps: layers/NNNNNN_Lk.png, 16-bit, pixel = instance_id of the "
            "k-th instance from the front (0 = none), at the export's resolution.",
        ),
    ] = False,
    license: Annotated[
        str,
        typer.Option(
            "--license",
            help="Licence the export states (Hugging Face id): " + ", ".join(LICENSES) + ". The data is generated, "
            "so the default waives all rights; pick cc-by-4.0 to require attribution.",
        ),
    ] = DEFAULT_LICENSE,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Processes exporting in parallel (with --engine dask: the LocalCluster's); the files are "
            "byte-identical for any count.",
        ),
    ] = 1,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="local (--workers processes on this machine) or dask (one task per shard of a sharded "
            "folder; a LocalCluster of --workers processes, or --scheduler). Same bytes either way.",
        ),
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="With --engine dask: address of a running Dask scheduler (e.g. tcp://host:8786); every worker "
            "must see PATH and --out (shared storage).",
        ),
    ] = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Export to COCO JSON that pycocotools and detectron2-style loaders read unchanged."""
    from shapesgen.coco import ExportConfig
    from shapesgen.coco import export_coco as run_export

    export = run(
        ctx,
        lambda: ExportConfig(
            style=style,
            segmentation=segmentation,
            resolution=resolution,
            include_hidden=include_hidden,
            layers_png=layers_png,
            license=license,
        ),
    )
    with progress_bar("export", quiet) as update:
        written = run(
            ctx,
            lambda: run_export(
                path,
                out,
                export,
                force=force,
                progress=update,
                workers=workers,
                engine=engine,
                scheduler=scheduler,
            ),
            {"source": "path"},
        )
    finished()
    if not quiet:
        err.print(f"wrote {written}")
