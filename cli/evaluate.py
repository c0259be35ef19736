"""``shapesgen evaluate``: COCO-amodal metrics of predictions (or of the layer oracle)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shapesgen.evaluate import BandRate

from .common import Force, console, finished, run, warn


def evaluate(
    ctx: typer.Context,
    gt: Annotated[
        Path,
        typer.Option(
            "--gt",
            help="Ground truth: a shapesgen HDF5 file, a sharded dataset folder, or a COCO-amodal export "
            "(folder or annotations.json, any --style).",
            show_default=False,
        ),
    ],
    dt: Annotated[Path | None, typer.Option("--dt", help="Predictions in COCO results format (RLE masks).")] = None,
    oracle_layers: Annotated[
        int | None,
        typer.Option("--oracle-layers", help="Score the oracle: each instance = its pixels in the first K GT layers."),
    ] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Add class-aware AP/AR per class.")] = False,
    band_rate: Annotated[
        BandRate,
        typer.Option(
            "--band-rate",
            help="Occlusion rate that bands the ground truth: pixel (mask pixels hidden) or geometric "
            "(area hidden, exact: the COCO-Amodal API's occlude_rate).",
        ),
    ] = "pixel",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics to this JSON file.")] = None,
    force: Force = False,
) -> None:
    """COCO-amodal AP/AR, class-agnostic, with AR by occlusion band (none/partial/heavy), and the
    occlusion-order and invisible-mask metrics when the predictions carry what they need."""
    from shapesgen.evaluate import evaluate_files

    metrics, warnings = run(
        ctx,
        lambda: evaluate_files(
            _ground_truth(gt),
            dt=dt,
            oracle_layers=oracle_layers,
            per_class=per_class,
            band_rate=band_rate,
            json_out=json_out,
            force=force,
        ),
        aliases={"num_layers": "oracle_layers"},
    )
    finished()
    for warning in warnings:
        warn(warning)
    _print_metrics(metrics)


def _ground_truth(gt: Path) -> Path:
    """An export folder, as ``train`` and ``predict`` take it, is read through its annotations.json."""
    annotations = gt / "annotations.json"
    if gt.is_dir() and not (gt / "manifest.json").exists() and annotations.is_file():
        return annotations
    return gt


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
    console.print(table)
    console.print(
        f"GT per band ({metrics.get('band_rate', 'pixel')} rate): none {counts['none']}, "
        f"partial {counts['partial']}, heavy {counts['heavy']}; "
        f"{metrics['detections']} detections"
    )
    if "per_class" in metrics:
        classes = Table("class", "AP", "AR100", title="class-aware")
        for name, values in metrics["per_class"].items():
            classes.add_row(name, _fmt(values["AP"]), _fmt(values["AR100"]))
        console.print(classes)
    _print_extras(metrics)


def _print_extras(metrics: dict[str, Any]) -> None:
    """The occlusion-order and invisible-mask tables when computed; their note when the
    predictions carry the fields but the ground truth lacks what they need."""
    order, hidden = metrics.get("occlusion_order"), metrics.get("invisible")
    if order and order["note"] is None:
        table = Table(
            "GT pairs",
            "order recall",
            "order recall50",
            "order accuracy",
            "order accuracy50",
            title=f"occlusion order (predicted by '{order['source']}')",
        )
        table.add_row(str(order["pairs"]), *[_fmt(order[k]) for k in ("recall", "recall50", "accuracy", "accuracy50")])
        console.print(table)
    elif order and order["source"] is not None:
        console.print(f"occlusion order: {order['note']}", soft_wrap=True)
    if hidden and hidden["note"] is None:
        table = Table("occluded GT", "detections", "AP", "AP50", "AP75", "AR100", title="invisible masks")
        table.add_row(
            str(hidden["instances"]),
            str(hidden["detections"]),
            *[_fmt(hidden[k]) for k in ("AP", "AP50", "AP75", "AR100")],
        )
        console.print(table)
    elif hidden and hidden["source"] is not None:
        console.print(f"invisible masks: {hidden['note']}", soft_wrap=True)
