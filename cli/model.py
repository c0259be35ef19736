"""``shapesgen train`` and ``shapesgen predict``: the layered-embedding model."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from amodal_model.config import (
    TRAIN_PRESETS,
    Backbone,
    ClusterScope,
    DistanceScope,
    HeadKind,
    HiddenClusters,
    Hinge,
    LossNormalisation,
    Precision,
    PullBalance,
    Schedule,
    Score,
    SmallClusters,
    TrainPresetName,
)
from shapesgen.errors import ResourceError, one_line

from .common import Force, Quiet, err, finished, native_chatter_hidden, progress_bar, run


def preset_default(field: str) -> str:
    """The default of a training setting as the help shows it: one value if every preset
    has it, else each preset's (read from the presets, so the help cannot drift)."""
    values: dict[str, list[str]] = {}
    for name, config in TRAIN_PRESETS.items():
        value = next(v for k, v in config.settings().items() if k.split(".")[1] == field)
        values.setdefault(f"{value:g}" if isinstance(value, float) else str(value), []).append(name)
    if len(values) == 1:
        return f"default: {next(iter(values))}"
    return "default: the preset's, " + "; ".join(f"{value} ({', '.join(names)})" for value, names in values.items())


BackboneOption = Annotated[
    Backbone | None, typer.Option("--backbone", help="The image encoder (overrides the preset's).")
]


OWN_PACKAGES = frozenset({"shapesgen", "shapesgen_cli", "amodal_model"})
"""Top-level modules of this distribution: an ImportError naming one is a broken install, not a missing extra."""


def _model_module(name: str) -> ModuleType:
    """``amodal_model.<name>``, or one line saying how to install TensorFlow, which the
    model needs and a plain ``pip install shapesgen`` leaves out."""
    try:
        with native_chatter_hidden():
            return importlib.import_module(f"amodal_model.{name}")
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in OWN_PACKAGES:
            raise  # the package itself is broken (a half-upgraded install): an unexpected error
        missing = f"{exc.name} is not installed" if exc.name else one_line(str(exc), 120)
        raise ResourceError(
            f"the model needs TensorFlow and Keras ({missing}): "
            "pip install 'shapesgen[train-cpu]' (or 'shapesgen[train]' for a GPU)"
        ) from None


def train(
    ctx: typer.Context,
    train_source: Annotated[
        str,
        typer.Option(
            "--train",
            help="An HDF5 file, a sharded dataset folder, a COCO-amodal export (folder or annotations.json), "
            "or render:PRESET[,instances=N][,layers=L][,seed=S] for live scenes.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Run folder (model, configs, checkpoints, logs).", show_default=False)
    ],
    val: Annotated[
        Path | None,
        typer.Option(
            "--val",
            help="Validation data, an HDF5 file or a sharded dataset folder, evaluated every --eval-every epochs.",
        ),
    ] = None,
    preset: Annotated[
        TrainPresetName,
        typer.Option(
            "--preset",
            help="Model preset: paper (Xception DeepLabV3+, 47 M), light (MobileNetV2), cpu-lean (the CPU "
            "preset: cpu-deep with a space-to-depth stem and one GroupNorm per unit instead of two, about 1.3x "
            "its images/s), cpu-deep (separable encoder with 8 stride-8 units, shared head), cpu-fast (its 4-unit "
            "predecessor, same speed), cpu (small encoder, separate heads), tiny (tests).",
        ),
    ] = "paper",
    epochs: Annotated[int | None, typer.Option("--epochs", help=f"Epochs ({preset_default('epochs')}).")] = None,
    steps_per_epoch: Annotated[
        int | None, typer.Option("--steps-per-epoch", help="Steps per epoch (default: one pass, or 1000 images live).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help=f"Batch size ({preset_default('batch_size')}).")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option("--lr", help=f"Adam learning rate ({preset_default('learning_rate')}).")
    ] = None,
    backbone: BackboneOption = None,
    backbone_weights: Annotated[
        Path | None, typer.Option("--backbone-weights", help="Local weights file to start from (never downloaded).")
    ] = None,
    embedding_dim: Annotated[
        int | None, typer.Option("--embedding-dim", help=f"Embedding dimension C ({preset_default('embedding_dim')}).")
    ] = None,
    position_scale: Annotated[
        float | None,
        typer.Option(
            "--position-scale",
            help="Add each pixel's position, the image spanning this many units, to two embedding dimensions "
            "(semi-convolutional embeddings; 0 = the paper's).",
        ),
    ] = None,
    hinge: Annotated[
        Hinge | None, typer.Option("--hinge", help="squared (reference code) or linear (paper text).")
    ] = None,
    distance_scope: Annotated[
        DistanceScope | None, typer.Option("--distance-scope", help="class (reference code) or all (paper text).")
    ] = None,
    reg_weight: Annotated[
        float | None, typer.Option("--reg-weight", help="Regulariser weight (reference 0.01, paper 1).")
    ] = None,
    cross_class_weight: Annotated[
        float | None,
        typer.Option(
            "--cross-class-weight",
            help="With --distance-scope class: also push apart all instances, at this weight (0 = off).",
        ),
    ] = None,
    pixel_push_weight: Annotated[
        float | None,
        typer.Option(
            "--pixel-push-weight",
            help="Also push every pixel out of reach (2 d_dist - d_var) of its rivals' means (the instances the "
            "distance term pushes from its own), at this weight (0 = off; not in the paper).",
        ),
    ] = None,
    var_weight: Annotated[float | None, typer.Option("--var-weight", help="Variance term weight (1).")] = None,
    dist_weight: Annotated[float | None, typer.Option("--dist-weight", help="Distance term weight (1).")] = None,
    ce_weight: Annotated[float | None, typer.Option("--ce-weight", help="Cross-entropy weight (1).")] = None,
    d_var: Annotated[float | None, typer.Option("--d-var", help="Variance margin d_var (0.5).")] = None,
    d_dist: Annotated[float | None, typer.Option("--d-dist", help="Distance margin d_dist (1.5).")] = None,
    loss_normalisation: Annotated[
        LossNormalisation | None,
        typer.Option(
            "--loss-normalisation",
            help="reference (per class / (n(n-1)+1), cross-entropy summed over layers) or mean (over pairs, layers).",
        ),
    ] = None,
    pull_balance: Annotated[
        PullBalance | None,
        typer.Option(
            "--pull-balance",
            help="pixels (reference: an instance's pull averaged over its pixels) or layers (per layer, then over "
            "its layers, so occluded pixels weigh as much as visible ones).",
        ),
    ] = None,
    visible_targets: Annotated[
        bool | None,
        typer.Option(
            "--visible-targets/--all-targets",
            help="Train instances with no visible pixel as background (the reference) or as instances.",
            show_default=False,
        ),
    ] = None,
    head: Annotated[
        HeadKind | None, typer.Option("--head", help="shared: one head trunk for all outputs; separate: one each.")
    ] = None,
    norm_free_bias: Annotated[
        bool | None,
        typer.Option(
            "--norm-free-bias/--no-norm-free-bias",
            help="Give the separable encoder's convolutions that have no GroupNorm after them a bias "
            "(off in every preset).",
            show_default=False,
        ),
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option("--precision", help="auto: mixed_bfloat16 where the CPU or GPU computes it natively."),
    ] = None,
    schedule: Annotated[
        Schedule | None, typer.Option("--schedule", help="Learning rate: constant, or cosine decay to 0.")
    ] = None,
    score: Annotated[
        Score | None,
        typer.Option("--score", help="Detection score saved with the model (predict can override it)."),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(
            "--eval-every", help=f"Evaluate on --val every N epochs, 0 = never ({preset_default('eval_every')})."
        ),
    ] = None,
    eval_scenes: Annotated[
        int | None,
        typer.Option("--eval-scenes", help=f"Validation scenes used per evaluation ({preset_default('eval_scenes')})."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help=f"Seed for weights, shuffling and clustering ({preset_default('seed')})."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the run's last checkpoint, with the same training settings (--epochs, --eval-every, "
            "--eval-scenes and the inference settings may change).",
        ),
    ] = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Train the layered-embedding model (N layers = the dataset's layers)."""
    from amodal_model.config import build_train_config

    training = run(ctx, lambda: _model_module("train"))

    config = run(
        ctx,
        lambda: build_train_config(
            preset,
            model=dict(
                backbone=backbone,
                backbone_weights=str(backbone_weights) if backbone_weights is not None else None,
                embedding_dim=embedding_dim,
                position_scale=position_scale,
                head=head,
                norm_free_bias=norm_free_bias,
                precision=precision,
            ),
            loss=dict(
                hinge=hinge,
                distance_scope=distance_scope,
                cross_class_weight=cross_class_weight,
                pixel_push_weight=pixel_push_weight,
                reg_weight=reg_weight,
                var_weight=var_weight,
                dist_weight=dist_weight,
                ce_weight=ce_weight,
                d_var=d_var,
                d_dist=d_dist,
                loss_normalisation=loss_normalisation,
                pull_balance=pull_balance,
                visible_targets=visible_targets,
            ),
            optimiser=dict(
                learning_rate=learning_rate,
                schedule=schedule,
                batch_size=batch_size,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                seed=seed,
            ),
            evaluation=dict(eval_every=eval_every, eval_scenes=eval_scenes),
            inference=dict(score=score, seed=seed),
        ),
    )
    with progress_bar("epoch", quiet, unit="steps") as update:

        def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
            if update is not None:
                update(step, steps, description=f"epoch {epoch}/{config.optimiser.epochs}", status=f"loss {loss:.4f}")

        def on_epoch(row: dict[str, Any]) -> None:
            shown = ", ".join(f"{k} {row[k]}" for k in ("loss", "images_per_s", "AP", "AR100") if k in row)
            err.print(f"epoch {row['epoch']}: {shown}", highlight=False)

        run_dir = run(
            ctx,
            lambda: training.train(
                train_source,
                out,
                config,
                val=val,
                resume=resume,
                force=force,
                callbacks=training.Callbacks(on_step=on_step, on_epoch=on_epoch),
            ),
        )
    finished()
    err.print(f"model saved in {run_dir}")


def predict(
    ctx: typer.Context,
    run_dir: Annotated[
        str,
        typer.Option(
            "--model",
            help="A run folder written by `shapesgen train`, a .keras model file, or a shipped model's name "
            "(`shapesgen models` lists them).",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Data to predict: an HDF5 file, a sharded dataset folder or a COCO-amodal export "
            "(folder or annotations.json).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="COCO results JSON to write.", show_default=False)],
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N scenes.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 8,
    bandwidth: Annotated[
        float | None, typer.Option("--bandwidth", help="Clustering bandwidth (default: the model's).")
    ] = None,
    min_pixels: Annotated[
        int | None, typer.Option("--min-pixels", help="Drop instances under N pixels (default: the model's).")
    ] = None,
    score: Annotated[
        Score | None,
        typer.Option(
            "--score",
            help="class probability, completeness (visible fraction) or their product (default: the model's).",
        ),
    ] = None,
    small_clusters: Annotated[
        SmallClusters | None,
        typer.Option(
            "--small-clusters",
            help="Clusters under --min-pixels: drop them, or merge each into the nearest cluster within "
            "--merge-radius (default: the model's).",
        ),
    ] = None,
    hidden_clusters: Annotated[
        HiddenClusters | None,
        typer.Option(
            "--hidden-clusters",
            help="Clusters with no layer-1 pixel: keep, drop, or merge each into the nearest cluster within "
            "--merge-radius (default: the model's).",
        ),
    ] = None,
    merge_radius: Annotated[
        float | None,
        typer.Option("--merge-radius", help="L1 distance of mean embeddings for a merge (default: the model's)."),
    ] = None,
    convex_hull: Annotated[
        bool | None,
        typer.Option(
            "--convex-hull/--no-convex-hull",
            help="Domain prior, off by default: each amodal mask becomes its convex hull (the scenes' shapes "
            "are convex) (default: the model's).",
            show_default=False,
        ),
    ] = None,
    max_background: Annotated[
        float | None,
        typer.Option(
            "--max-background",
            help="A pixel is foreground where its background probability is under this, in (0, 1] "
            "(default: the model's; unset: where background is not the most probable class).",
        ),
    ] = None,
    cluster_scope: Annotated[
        ClusterScope | None,
        typer.Option(
            "--cluster-scope",
            help="class: cluster each class's pixels apart; all: cluster every foreground pixel together, "
            "each cluster taking its most probable class (default: the model's).",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Clustering processes (default: one per core).")
    ] = None,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Predict amodal instances (COCO results, masks at mask resolution) for a dataset or COCO-amodal export."""
    predict_run = run(ctx, lambda: _model_module("predict")).predict_run

    with progress_bar("predict", quiet) as update:
        written = run(
            ctx,
            lambda: predict_run(
                run_dir,
                data,
                out,
                limit=limit,
                batch_size=batch_size,
                progress=update,
                force=force,
                bandwidth=bandwidth,
                min_pixels=min_pixels,
                score=score,
                small_clusters=small_clusters,
                hidden_clusters=hidden_clusters,
                merge_radius=merge_radius,
                convex_hull=convex_hull,
                max_background=max_background,
                cluster_scope=cluster_scope,
                workers=workers,
            ),
        )
    finished()
    if not quiet:
        err.print(f"wrote {written}")


def models() -> None:
    """List the trained models shipped with shapesgen (usable as `predict --model NAME`), with their test AP."""
    predicting = _model_module("pretrained")
    names = predicting.shipped_models()
    if not names:
        err.print("no trained models are shipped with this installation")
        return
    for name in names:
        card = predicting.PRETRAINED / name / "MODEL_CARD.md"
        summary = ""
        if card.is_file():
            lines = [line.strip() for line in card.read_text().splitlines() if line.strip()]
            summary = next((line for line in lines if not line.startswith(("#", "---", "|"))), "")
        typer.echo(f"{name}\t{_test_figures(predicting.PRETRAINED / name / 'metrics.json')}\t{summary}")


def _test_figures(path: Path) -> str:
    """A shipped model's test AP and AR heavy from its ``metrics.json`` (``-`` where it has none)."""
    try:
        metrics = json.loads(path.read_text())
        figures = [f"test AP {metrics['all']['AP']:.4f}"]
        if "bands" in metrics:
            figures.append(f"AR heavy {metrics['bands']['heavy']['AR100']:.4f}")
        return ", ".join(figures)
    except (OSError, ValueError, KeyError, TypeError):
        return "-"
