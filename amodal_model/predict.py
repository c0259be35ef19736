"""Prediction: a trained run directory + images -> COCO results with amodal masks."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
import weakref
import zipfile
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from amodal_model import pretrained
from amodal_model.config import CONCERNS, MAX_BATCH, MAX_COUNT, InferenceConfig, TrainConfig
from amodal_model.data import DataFile, check_compatible, open_file, source_text, to_model_input
from amodal_model.inference import MAX_WORKERS, clusterer
from amodal_model.pretrained import resolve_model
from shapesgen.config import SceneConfig, parse_json
from shapesgen.errors import ConfigError, DatasetError, ResourceError, ShapesgenError, ShapesgenNote, one_line, shown
from shapesgen.files import (
    BEST_MODEL_FILE,
    MODEL_FILE,
    RUN_OWNED,
    SCENE_CONFIG_FILE,
    TRAIN_CONFIG_FILE,
    check_output_path,
    check_replaceable,
    contains,
    file_kind,
    locked_elsewhere,
    refuse_run_files,
    regular_input,
    write_atomically,
)
from shapesgen.storage.digests import digest
from shapesgen.storage.reader import ShapesDataset

MAX_CONFIG_BYTES = 1 << 20
"""A run's JSON configs are a few hundred bytes; a bigger file is not one of ours."""


def _config_text(path: Path, param: str) -> bytes:
    path = regular_input(path, param)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise DatasetError(f"{path}: over {MAX_CONFIG_BYTES} bytes, not a config saved by train", param=param)
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})", param=param) from None


LEGACY_LOSS = {"loss_normalisation": "mean", "visible_targets": False}
"""What a run's flat config means where it predates these fields: the loss it was trained with."""


def load_train_config(path: Path, param: str = "run_dir") -> TrainConfig:
    """A run's ``train_config.json``, nested by concern or flat (saved before the split); a
    missing, hand-broken or foreign file is one DatasetError."""
    text = _config_text(path, param)
    try:
        saved = parse_json(text, "train config")
        if isinstance(saved, dict) and not CONCERNS.keys() & saved.keys():
            saved = {**LEGACY_LOSS, **saved}  # a flat run older than these settings trained with the older loss
        return TrainConfig.from_dict(saved)
    except ConfigError as exc:
        raise DatasetError(f"{path}: {exc}", param=param) from None


def load_scene_config(path: Path, param: str = "run_dir") -> SceneConfig:
    """A run's ``scene_config.json``, with the same guarantees as :func:`load_train_config`."""
    text = _config_text(path, param)
    try:
        return SceneConfig.from_json(text.decode())
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text", param=param) from None
    except ShapesgenError as exc:
        raise DatasetError(f"{path}: {exc}", param=param) from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        raise DatasetError(
            f"{path}: not a scene config ({one_line(str(exc)) or type(exc).__name__})", param=param
        ) from None


def _check_model(model: Any, config: TrainConfig, scene: SceneConfig, path: Path) -> None:
    """The loaded model must be the one its configs describe (they may have been edited)."""
    s, m, layers = scene.image_size, scene.mask_size, scene.layers
    want = {
        "image": (None, s, s, scene.channels),
        "semantic": (None, layers, m, m, scene.num_classes + 1),
        "embedding": (None, layers, m, m, config.model.embedding_dim),
    }
    try:
        outputs = model.output
        have = {
            "image": tuple(model.input.shape),
            "semantic": tuple(outputs["semantic"].shape),
            "embedding": tuple(outputs["embedding"].shape),
        }
    except (AttributeError, KeyError, TypeError, ValueError):
        raise DatasetError(
            f"{path}: not a model saved by train (no image input and semantic/embedding outputs)", param="run_dir"
        ) from None
    if have != want:
        wrong = {k: have[k] for k in want if have[k] != want[k]}
        raise DatasetError(
            f"{path}: the model's shapes {wrong} do not match the run's {TRAIN_CONFIG_FILE} and {SCENE_CONFIG_FILE}",
            param="run_dir",
        )


def _load_keras(model_path: Path, param: str) -> keras.Model:
    import amodal_model.model  # noqa: F401  (registers LayeredEmbeddingModel with Keras)

    regular_input(model_path, param)
    if not zipfile.is_zipfile(model_path):
        raise DatasetError(f"{model_path}: not a Keras model file (not a zip archive)", param=param)
    try:
        return keras.saving.load_model(model_path)
    except Exception as exc:  # a foreign or damaged zip fails in many ways inside Keras
        raise DatasetError(
            f"{model_path}: not a loadable Keras model ({one_line(str(exc)) or type(exc).__name__})", param=param
        ) from None


def load_run(run_dir: str | Path) -> tuple[keras.Model, TrainConfig, SceneConfig]:
    """The model and its train and scene configs, checked against each other.

    ``run_dir`` is a run folder written by ``train`` (configs from its JSON files), a
    folder holding only a ``model.keras``, a ``.keras`` file, or a shipped model's
    name; the last three take the configs the model file carries.
    """
    run_dir = resolve_model(run_dir)
    if run_dir.is_file() or (run_dir.suffix == ".keras" and not run_dir.is_dir()):
        return _self_contained(run_dir)
    if not run_dir.is_dir():
        what = (
            f"is {file_kind(run_dir.stat().st_mode)}, not a run folder or a .keras file"
            if run_dir.exists()
            else "no such folder"
        )
        raise DatasetError(f"run_dir={str(run_dir)!r}: {what}", param="run_dir")
    model_path = run_dir / MODEL_FILE
    if not model_path.exists():
        raise DatasetError(f"run_dir={str(run_dir)!r}: {_unfinished(run_dir)}", param="run_dir")
    if not (run_dir / TRAIN_CONFIG_FILE).exists() and not (run_dir / SCENE_CONFIG_FILE).exists():
        return _self_contained(model_path)
    config = load_train_config(run_dir / TRAIN_CONFIG_FILE)
    scene = load_scene_config(run_dir / SCENE_CONFIG_FILE)
    model = _load_keras(model_path, "run_dir")
    _check_model(model, config, scene, model_path)
    saved_with = getattr(model, "train_config", None)
    if saved_with is not None and saved_with != config:
        raise DatasetError(
            f"run_dir={str(run_dir)!r}: its training was resumed and has not finished ({MODEL_FILE} is the model "
            f"from before the resume, {TRAIN_CONFIG_FILE} holds the resumed settings): "
            + _instead(run_dir, f"predict with {model_path} (the model from before)"),
            param="run_dir",
        )
    return model, config, scene


def _instead(run_dir: Path, *first: str) -> str:
    """What to do instead of predicting with an unfinished run: ``first``, its best model so
    far, then finishing it (or waiting, while another process trains it)."""
    options = list(first)
    if (run_dir / BEST_MODEL_FILE).is_file():
        options.append(f"predict with its best model so far ({run_dir / BEST_MODEL_FILE})")
    if locked_elsewhere(run_dir):
        options.append("wait until it ends (it is training now)")
    else:
        options.append(f"finish it with `shapesgen train ... --out {run_dir} --resume`")
    return ", or ".join(options)


def _unfinished(run_dir: Path) -> str:
    """Why a folder without a model cannot predict, and what to use instead."""
    if not (run_dir / TRAIN_CONFIG_FILE).is_file():
        return f"no {MODEL_FILE} inside (is it a finished training run?)"
    return f"no {MODEL_FILE} inside (its training has not finished): " + _instead(run_dir)


def _self_contained(model_path: Path) -> tuple[keras.Model, TrainConfig, SceneConfig]:
    """A model file that carries its own configs (saved by this version of ``train``)."""
    model = _load_keras(model_path, "run_dir")
    scene = getattr(model, "scene_config", None)
    if scene is None:
        raise DatasetError(
            f"{model_path}: the model does not carry its configs (saved by an older train?): "
            f"give its run folder, with {TRAIN_CONFIG_FILE} and {SCENE_CONFIG_FILE}",
            param="run_dir",
        )
    config = model.train_config
    _check_model(model, config, scene, model_path)
    return model, config, scene


_FORWARD: weakref.WeakKeyDictionary[keras.Model, Callable[[tf.Tensor], dict[str, tf.Tensor]]] = (
    weakref.WeakKeyDictionary()
)


def infer_fn(model: keras.Model) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The model's compiled forward pass in inference mode (uint8 images in), built once per model.

    A concrete function traced once for any batch size (the signature leaves it open),
    without AutoGraph (the pass has no Python control flow to convert) and called
    directly, so repeated predictions (an evaluation every epoch, several files or
    models) neither retrace nor make TensorFlow log retracing or AutoGraph warnings.
    """
    cached = _FORWARD.get(model)
    if cached is not None:
        return cached
    held = weakref.ref(model)  # the cache must not keep the model alive

    def forward(images: tf.Tensor) -> dict[str, tf.Tensor]:
        network = held()
        assert network is not None
        return network(to_model_input(images), training=False)

    signature = tf.TensorSpec((None, *model.input.shape[1:]), tf.uint8)  # images as stored
    concrete = tf.function(forward, autograph=False).get_concrete_function(signature)
    _FORWARD[model] = concrete
    return concrete


def predict_hdf5(
    model: keras.Model,
    config: TrainConfig,
    scene_config: SceneConfig,
    data: str | Path | DataFile,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    param: str = "data",
    settings: InferenceConfig | None = None,
    workers: int | None = 1,
    check_images: bool = True,
) -> list[dict[str, Any]]:
    """Predictions for the scenes of an HDF5 file, sharded dataset folder or COCO-amodal
    export (all, or the first ``limit``); ``data`` may be one already opened
    (:func:`amodal_model.data.open_file`), which is then read through its handle.
    With ``check_images``, the images of a whole shapesgen file are checked against its
    checksums as they are read (nothing is returned for a damaged one).

    ``settings`` defaults to the ones ``config`` was trained with. Clustering runs in
    ``workers`` processes (``None``: one per core) while the next batch's forward
    pass runs; the records are the same for any number of workers.
    """
    with ExitStack() as stack:
        source = data if isinstance(data, DataFile) else stack.enter_context(open_file(data, param))
        checked = source.dataset if check_images else None
        return _predict(
            model, config, scene_config, source, limit, batch_size, progress, param, settings, workers, checked
        )


def _predict(
    model: keras.Model,
    config: TrainConfig,
    scene_config: SceneConfig,
    source: DataFile,
    limit: int | None,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
    param: str,
    settings: InferenceConfig | None,
    workers: int | None,
    checked: ShapesDataset | None,
) -> list[dict[str, Any]]:
    path, count = source.path, source.num_scenes
    total = count if limit is None else min(limit, count)
    check_compatible(path, source.scene_config, scene_config, param)
    forward = infer_fn(model)
    records: list[dict[str, Any]] = []
    done = 0
    checked = checked if total == count else None  # every image is read, in order: hash them
    images_hash = hashlib.sha256()
    with clusterer(settings or config.inference, workers) as pool:
        pending: list[tuple[Callable[[], list[dict[str, Any]]], int]] = []

        def collect() -> None:
            nonlocal done
            wait, count = pending.pop(0)
            try:
                records.extend(wait())
            except BrokenProcessPool:
                raise ResourceError(
                    "a clustering worker died (out of memory?): rerun with fewer --workers or a smaller --batch-size"
                ) from None
            done += count
            if progress:
                progress(done, total)

        for batch in source.batches(batch_size, seed=0, epoch=0, shuffle=False, limit=total, param=param):
            if checked is not None:
                images_hash.update(b"".join(digest(image) for image in batch["image"]))
            try:
                outputs = {k: v.numpy() for k, v in forward(tf.constant(batch["image"])).items()}
            except tf.errors.ResourceExhaustedError:
                raise ConfigError(
                    f"batch_size={batch_size} is invalid: out of memory in the forward pass, use a smaller one",
                    param="batch_size",
                ) from None
            pending.append((pool.submit(outputs, batch["index"].tolist()), len(batch["index"])))
            if len(pending) > 1:
                collect()
        while pending:
            collect()
    if checked is not None:
        checked.check_read({"images": images_hash.hexdigest()}, param, "; no predictions were written")
    return records


def write_results(records: list[dict[str, Any]], path: str | Path, force: bool = False) -> Path:
    """COCO results JSON, written atomically (nothing is left at ``path`` on failure)."""
    return write_atomically(
        path, (json.dumps(records, separators=(",", ":")) + "\n").encode(), param="out", force=force, kind="results"
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # a link loop is no file of ours
        return False


def check_writable(path: Path, param: str) -> None:
    """Refuse up front an output whose nearest existing folder cannot take new files."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DatasetError(f"{param}={str(path)!r}: {folder} is not a folder", param=param)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DatasetError(f"{param}={str(path)!r}: cannot write in {folder} (permission denied)", param=param)


def _positive(name: str, value: object, high: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        allowed = f"{'None or ' if optional else ''}an integer in [1, {high}]"
        raise ConfigError(f"{name}={shown(value)} is invalid: must be {allowed}", param=name)


def predict_run(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    bandwidth: float | None = None,
    min_pixels: int | None = None,
    score: str | None = None,
    small_clusters: str | None = None,
    hidden_clusters: str | None = None,
    merge_radius: float | None = None,
    convex_hull: bool | None = None,
    max_background: float | None = None,
    cluster_scope: str | None = None,
    workers: int | None = None,
) -> Path:
    """Load a run, predict an HDF5 file, sharded dataset folder or COCO-amodal export,
    write COCO results.

    ``bandwidth``, ``min_pixels``, ``score``, ``small_clusters``, ``hidden_clusters``,
    ``merge_radius``, ``convex_hull``, ``max_background`` and ``cluster_scope`` override the run's inference
    settings (``None`` keeps them); clustering uses ``workers`` processes (``None``: one per core).

    Every argument is checked before the model is loaded (``merge_radius`` with neither
    cluster kind merged, in the model's settings or the overrides, too): ``out`` may be neither the
    input file nor inside the input's folder or the run folder, must be writable, and
    replaces an existing file only with ``force=True``. The data is opened once, and
    the results appear at ``out`` only when complete.
    """
    _positive("limit", limit, MAX_COUNT, optional=True)
    _positive("batch_size", batch_size, MAX_BATCH)
    _positive("workers", workers, MAX_WORKERS, optional=True)
    overrides = {
        "bandwidth": bandwidth,
        "min_pixels": min_pixels,
        "score": score,
        "small_clusters": small_clusters,
        "hidden_clusters": hidden_clusters,
        "merge_radius": merge_radius,
        "convex_hull": convex_hull,
        "max_background": max_background,
        "cluster_scope": cluster_scope,
    }
    InferenceConfig().with_overrides(**overrides)  # checked now, not after the model has loaded
    with open_file(data, "data") as source:
        run_path = resolve_model(run_dir)
        out_path = _check_output(out, source, run_path, force)
        stored = _stored_inference(run_path) if merge_radius is not None else None
        if stored is not None:  # the model's own settings, read without loading it
            _check_merge_radius(stored.with_overrides(**overrides), overrides)
        model, config, scene_config = load_run(run_path)
        settings = config.inference.with_overrides(**overrides)
        _check_merge_radius(settings, overrides)
        records = predict_hdf5(
            model,
            config,
            scene_config,
            source,
            limit=limit,
            batch_size=batch_size,
            progress=progress,
            settings=settings,
            workers=workers,
        )
        if not records:
            changed = ", ".join(f"{k}={shown(v)}" for k, v in overrides.items() if v is not None) or "the model's"
            warnings.warn(
                f"no instance was predicted in any image (inference settings: {changed}): "
                "the results file is an empty list",
                ShapesgenNote,
                stacklevel=2,
            )
    return write_results(records, out_path, force=force)


def _stored_inference(run_path: Path) -> InferenceConfig | None:
    """The inference settings a run folder or model file holds, read from its config
    alone (no weights); ``None`` where they cannot be read so (loading then says why)."""
    try:
        if (run_path / TRAIN_CONFIG_FILE).is_file():
            return load_train_config(run_path / TRAIN_CONFIG_FILE).inference
        model_path = run_path / MODEL_FILE if run_path.is_dir() else run_path
        if not stat.S_ISREG(model_path.stat().st_mode):  # a pipe would block the read: load_run refuses it
            return None
        with zipfile.ZipFile(model_path) as archive:
            stored = json.loads(archive.read("config.json"))["config"]["train_config"]
        return TrainConfig.from_dict(dict(stored)).inference
    except Exception:  # a foreign, damaged or older file: load_run reports it
        return None


def _check_merge_radius(settings: InferenceConfig, overrides: dict[str, Any]) -> None:
    """A ``merge_radius`` override needs a cluster kind that merges, in ``settings``."""
    if overrides["merge_radius"] is None or "merge" in (settings.small_clusters, settings.hidden_clusters):
        return
    kinds = ("small_clusters", "hidden_clusters")
    origin = {k: "" if overrides[k] is not None else " (the model's)" for k in kinds}
    raise ConfigError(
        f"merge_radius={shown(overrides['merge_radius'])} has no effect: "
        f"small_clusters={settings.small_clusters!r}{origin['small_clusters']} and "
        f"hidden_clusters={settings.hidden_clusters!r}{origin['hidden_clusters']}; "
        "pass small_clusters='merge' or hidden_clusters='merge'",
        param="merge_radius",
        related=kinds,
    )


def _check_output(out: str | Path, source: DataFile, run_path: Path, force: bool) -> Path:
    """``out`` checked: a writable file path that is neither an input nor inside one."""
    data_path = source.path
    out_path = check_output_path(source_text(out, "out"), "out")
    if out_path.is_dir():
        raise DatasetError(f"out={str(out_path)!r} is a folder: give a file path", param="out")
    if _same_file(out_path, data_path):
        raise ConfigError(f"out={str(out_path)!r} is the input data file: give another path", param="out")
    if source.folder is not None and contains(source.folder, out_path):
        what = "export" if source.is_export else "sharded dataset"
        raise ConfigError(
            f"out={str(out_path)!r} is inside the {what} {source.folder} it reads: give a path outside it", param="out"
        )
    if _same_file(out_path, run_path):
        raise ConfigError(f"out={str(out_path)!r} is the model file: give another path", param="out")
    if contains(pretrained.PRETRAINED, out_path):
        raise ConfigError(f"out={str(out_path)!r} is inside the shipped models' folder: give another path", param="out")
    # a model file of a run folder: protect the run's other files too (a run without its marker)
    run_folder = run_path.parent if run_path.suffix == ".keras" and not run_path.is_dir() else run_path
    if any(_same_file(out_path, run_folder / name) or contains(run_folder / name, out_path) for name in RUN_OWNED):
        raise ConfigError(
            f"out={str(out_path)!r} would overwrite a file of the run {run_path} (results may sit beside them)",
            param="out",
        )
    refuse_run_files(out_path, "out")  # and those of any other run
    check_replaceable(out_path, "out", force, "results")
    check_writable(out_path, "out")
    return out_path
