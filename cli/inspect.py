"""``shapesgen info``, ``validate`` and ``preview``: read a dataset, never change it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .common import DatasetPath, Force, Quiet, console, err, fail, finished, progress_bar, run, warn


def info(
    ctx: typer.Context,
    path: DatasetPath,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Shards of a sharded folder read in parallel (processes).")
    ] = 1,
) -> None:
    """Show a dataset's config, counts, occlusion-rate and stack-depth histograms."""
    from shapesgen.shards import summarize_sharded
    from shapesgen.stats import summarize_file
    from shapesgen.storage.manifest import is_sharded

    if is_sharded(path):
        summary = run(ctx, lambda: summarize_sharded(path, workers=workers))
    else:
        summary = run(ctx, lambda: summarize_file(path))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_summary(summary)


def _print_summary(s: dict[str, Any]) -> None:
    config = s["config"]
    head = Table(title=s["path"], show_header=False, box=None)
    for key in ("scenes", "instances", "visible_instances", "seed", "format_version", "package_version"):
        head.add_row(key, str(s[key]))
    for key in ("created", "complete"):
        head.add_row(key, str(s[key]))
    shapes = ", ".join(f"{sh['name']} {'x'.join(str(v) for v in sh['size'])}" for sh in config["shapes"])
    head.add_row("shapes", shapes)
    for key in ("instances_per_class", "layers", "image_size", "mask_size", "anchor", "channels"):
        head.add_row(key, str(config[key]))
    console.print(head)
    classes = Table("class", "instances", "visible", title="class balance")
    for name, counts in s["per_class"].items():
        classes.add_row(name, str(counts["instances"]), str(counts["visible"]))
    console.print(classes)
    total = max(s["visible_instances"], 1)
    bands = Table("occlusion (visible instances)", "count", "share", title=f"mean rate {s['mean_occlusion_rate']:.3f}")
    for name, count in s["occlusion_bands"].items():
        bands.add_row(name, str(count), f"{count / total:.1%}")
    for name, count in s["occlusion_histogram"].items():
        bands.add_row(f"  {name}", str(count), f"{count / total:.1%}  " + "#" * round(40 * count / total))
    console.print(bands)
    pixels = sum(s["stack_depth_pixels"].values()) or 1
    stack = Table("instances covering a pixel", "pixels", "share", title="stack depth (mask pixels)")
    for depth, count in s["stack_depth_pixels"].items():
        stack.add_row(depth, str(count), f"{count / pixels:.2%}  " + "#" * round(40 * count / pixels))
    console.print(stack)
    console.print(f"pixels deeper than the {config['layers']} stored layers: {s['pixels_deeper_than_layers']:.2%}")


def preview(
    ctx: typer.Context,
    path: DatasetPath,
    out: Annotated[Path, typer.Option("--out", help="PNG to write.")] = Path("preview.png"),
    count: Annotated[int, typer.Option("--count", help="Scenes to show (one row each, at most 64).")] = 4,
    start: Annotated[int, typer.Option("--start", help="First scene index.")] = 0,
    results: Annotated[
        Path | None,
        typer.Option(
            "--results",
            help="COCO results file (as `shapesgen predict` writes): draw its instances next to the ground truth.",
        ),
    ] = None,
    score_threshold: Annotated[
        float, typer.Option("--score-threshold", help="With --results: predictions scoring below are not drawn.")
    ] = 0.0,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Write a PNG grid: image | layer 1..N instance maps | amodal outlines (or, with
    --results, image | ground truth | predicted instances)."""
    from shapesgen.preview import write_comparison, write_preview

    if results is None and score_threshold != 0.0:
        raise fail("--score-threshold needs --results (the predictions it filters)", 2)
    if results is None:
        written = run(ctx, lambda: write_preview(path, out, count=count, start=start, force=force))
    else:
        written, warnings = run(
            ctx,
            lambda: write_comparison(
                path, results, out, count=count, start=start, score_threshold=score_threshold, force=force
            ),
        )
        for warning in warnings:
            warn(warning)
    finished()
    if not quiet:
        err.print(f"wrote {written}")


def validate(
    ctx: typer.Context,
    path: DatasetPath,
    regenerate: Annotated[
        int,
        typer.Option(
            "--regenerate",
            min=0,
            help="Scenes re-rendered from the stored config and compared byte for byte (in each shard of a folder).",
        ),
    ] = 2,
    deep: Annotated[bool, typer.Option("--deep", help="Re-render and compare every scene.")] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Shards of a sharded folder validated in parallel (processes).")
    ] = 1,
    quiet: Quiet = False,
) -> None:
    """Check every invariant of the format; exit 1 at the first violation."""
    from shapesgen.validate import validate_file

    with progress_bar("validate", quiet) as update:
        checked = run(
            ctx, lambda: validate_file(path, regenerate=-1 if deep else regenerate, progress=update, workers=workers)
        )
    console.print(f"OK: {path} ({checked} scenes, all invariants hold)")
