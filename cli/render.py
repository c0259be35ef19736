"""``shapesgen render``, ``shapesgen presets`` and ``shapesgen datasets``."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shapesgen.config import (
    PRESET_HELP,
    PRESETS,
    AnchorMode,
    Engine,
    PresetName,
    SceneConfig,
    StorageConfig,
    build_config,
    load_config,
    parse_classes,
    parse_pair,
    parse_sizes,
)
from shapesgen.errors import ConfigError

from .common import Quiet, Updater, console, dask_chatter_hidden, err, finished, flag_names, progress_bar, run

PresetOption = Annotated[
    PresetName,
    typer.Option(
        "--preset", help="Base configuration: " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()) + "."
    ),
]


def render(
    ctx: typer.Context,
    out: Annotated[
        str, typer.Option("--out", help="HDF5 file to write (parent folders are created).", show_default=False)
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
            help="gzip level 0-9 (0 = none; 2, the default, is zlib-ng's fastest here); a resumed render "
            "keeps the file's own.",
        ),
    ] = 2,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted render of the same config (after a hard kill, its scenes are re-checked).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Overwrite an existing file (or discard an interrupted one); with --resume and --coco, "
            "replace the export only.",
        ),
    ] = False,
    coco: Annotated[
        Path | None,
        typer.Option("--coco", help="Also export COCO JSON + PNGs into this new folder (default export options)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="Render split NAME (train, val, test, ...) of the config: its seed is derived from --seed and "
            "NAME, so the splits of one seed share no scene; recorded in the file and its exports.",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Build a registered split, NAME[:VERSION]/SPLIT (e.g. paper-6:1.0.0/test; see `shapesgen "
            "datasets`), and check it against its registered checksums (exit 1 and no file if they differ). "
            "It fixes the config, seed, split and --num.",
        ),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            "--shard-size",
            help="Write a sharded dataset: --out is a folder of HDF5 shards of this many scenes plus "
            "manifest.json (written last). Rerunning the same command resumes an unfinished folder.",
        ),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="With --shard-size: local (one task per shard on --workers processes; with fewer shards than "
            "workers, shards in turn) or dask (one task per shard; a LocalCluster of --workers processes, or "
            "--scheduler). Same bytes either way.",
        ),
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="With --engine dask: address of a running Dask scheduler (e.g. tcp://host:8786); every worker "
            "must see --out (shared storage).",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Render a dataset of occlusion scenes into a self-describing HDF5 file (or, with
    --shard-size, a folder of HDF5 shards and a manifest)."""
    from shapesgen.build import RenderInterrupted, render_dataset
    from shapesgen.coco import check_export_target, export_coco

    if dataset is not None:
        run(ctx, lambda: _refuse_config_options(ctx))
    run(ctx, lambda: _check_shard_options(ctx, shard_size, engine, scheduler))

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

    if dataset is None:
        scene_config, storage = run(ctx, build)
    else:
        storage = run(ctx, lambda: StorageConfig(compression_level=compression_level))
    if coco is not None:
        run(
            ctx,
            lambda: check_export_target(out, coco, force, inputs={"config": config}, probe=True),
            aliases={"out": "coco", "source": "out"},
        )
    render_force = force and not (resume and coco is not None)  # there, --force is the export's
    if shard_size is not None:
        from shapesgen.shards import render_sharded

        per_shard = shard_size
        with progress_bar("render", quiet) as update, dask_chatter_hidden():
            path = run(
                ctx,
                lambda: render_sharded(
                    scene_config,
                    out,
                    num_scenes=num_scenes,
                    shard_size=per_shard,
                    engine=engine,
                    scheduler=scheduler,
                    workers=workers,
                    storage=storage,
                    progress=update,
                ),
            )
        finished()
        if not quiet:
            err.print(f"wrote {path}")
        return
    with progress_bar("render", quiet) as update:
        if dataset is not None:
            from shapesgen.datasets import build_split

            path = run(
                ctx,
                lambda: build_split(
                    dataset, out, workers=workers, storage=storage, resume=resume, force=render_force, progress=update
                ),
            )
        else:
            path = run(
                ctx,
                lambda: render_dataset(
                    scene_config,
                    out,
                    num_scenes=num_scenes,
                    workers=workers,
                    storage=storage,
                    resume=resume,
                    force=render_force,
                    progress=update,
                    inputs={"config": config},
                    split=split,
                ),
            )
    if coco is None:
        finished()
    if not quiet:
        err.print(f"wrote {path}")
    if coco is not None:
        kept = coco.exists()  # an earlier export, which --force replaces only once the new one is whole

        def export(update: Updater | None) -> Path:
            try:
                return export_coco(path, coco, force=force, progress=update, inputs={"config": config})
            except KeyboardInterrupt:  # the dataset is complete: say so, and how to export it alone
                again = f"shapesgen export coco {shlex.quote(str(path))} --out {shlex.quote(str(coco))}"
                left = "the earlier export there is kept as it was" if kept else "no export was left"
                raise RenderInterrupted(
                    f"interrupted while exporting; {path} is complete and {left}: export it with "
                    f"`{again}{' --force' if kept else ''}`"
                ) from None

        with progress_bar("export", quiet) as update:
            folder = run(ctx, lambda: export(update), aliases={"out": "coco"})
        finished()
        if not quiet:
            err.print(f"wrote {folder}")


FIXED_BY_DATASET = (
    "num_scenes",
    "preset",
    "config",
    "instances_per_class",
    "layers",
    "seed",
    "classes",
    "size",
    "image_size",
    "mask_size",
    "anchor",
    "anchor_range",
    "rotation_range",
    "outline_width",
    "channels",
    "split",
)


NOT_WITH_SHARDS = {
    "dataset": "render a registered dataset as a single file",
    "split": "render a split as a single file",
    "coco": "export the folder afterwards with `shapesgen export coco`",
    "force": "rerunning the command resumes; delete the folder to start over",
}
"""Options a sharded render does not take yet, and what to do instead."""


def _check_shard_options(ctx: typer.Context, shard_size: int | None, engine: str, scheduler: str | None) -> None:
    """--engine and --scheduler need --shard-size; options sharded renders do not take yet are refused."""
    names = flag_names(ctx)
    if shard_size is None:
        for name, value, default in (("engine", engine, "local"), ("scheduler", scheduler, None)):
            if value != default:
                raise ConfigError(f"{names[name][0]} needs --shard-size (a sharded render)", param=name)
        return
    typed = [n for n in NOT_WITH_SHARDS if _source(ctx, n) not in (None, "DEFAULT", "DEFAULT_MAP")]
    if typed:
        raise ConfigError(
            f"--shard-size does not take {', '.join(names[n][0] for n in typed)} yet "
            f"({'; '.join(NOT_WITH_SHARDS[n] for n in typed)})",
            param="shard_size",
        )


def _source(ctx: typer.Context, name: str) -> str | None:
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else None


def _refuse_config_options(ctx: typer.Context) -> None:
    """``--dataset`` fixes the config and size: options that would change them are refused
    (those the user typed; typer reports where each value came from)."""
    names = flag_names(ctx)
    typed = [name for name in FIXED_BY_DATASET if _source(ctx, name) not in (None, "DEFAULT", "DEFAULT_MAP")]
    given = [names[name][0] for name in typed]
    if given:
        raise ConfigError(
            f"--dataset fixes the config, seed, split and number of scenes: drop {', '.join(given)}", param="dataset"
        )


def datasets() -> None:
    """List the registered datasets: versions, splits (scenes), config and base seed."""
    from shapesgen.datasets import REGISTRY

    table = Table(title="registered datasets (build one with render --dataset NAME:VERSION/SPLIT)")
    table.add_column("dataset", no_wrap=True)
    for column in ("splits (scenes)", "config", "description"):
        table.add_column(column)
    for spec in REGISTRY:
        config = spec.config
        table.add_row(
            f"{spec.name}:{spec.version}",
            ", ".join(f"{split.name} {split.num_scenes}" for split in spec.splits),
            f"{', '.join(config.class_names)}; N={config.instances_per_class}, {config.layers} layers, "
            f"{config.image_size}/{config.mask_size} px, base seed {config.seed}",
            spec.description,
        )
    console.print(table)


def presets() -> None:
    """List the built-in presets and their settings."""
    table = Table("preset", "description", "classes", "N/class", "layers")
    for name, config in PRESETS.items():
        table.add_row(
            name, PRESET_HELP[name], ",".join(config.class_names), str(config.instances_per_class), str(config.layers)
        )
    console.print(table)
