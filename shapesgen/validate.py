"""Check a dataset against every invariant of the format; stop at the first violation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shapesgen.errors import ValidationError
from shapesgen.raster import layer_maps
from shapesgen.renderer import render_scene
from shapesgen.storage.digests import DigestChain, checksums, scene_digests
from shapesgen.storage.layout import DATASETS, INSTANCE_COLUMNS, OFFSETS, Scene
from shapesgen.storage.reader import CorruptDatasetError, ShapesDataset, open_dataset

GEOMETRY_RTOL = 1e-9


def _check(condition: bool | np.bool_, message: str) -> None:
    if not condition:
        raise ValidationError(message)


def check_structure(ds: ShapesDataset) -> None:
    """What opening a file leaves out: exact lengths, the scene count, every vertex offset.

    Opening already checked the attributes, each dataset's dtype and record shape,
    and the instance offsets (``ShapesDataset`` refuses a file that breaks them).
    """
    n = len(ds)
    _check(n == ds.num_scenes, f"scenes_written={n} but num_scenes={ds.num_scenes}")
    rows, vertex_rows = int(ds.instance_offsets[-1]), len(ds.vertices)
    lengths = {"scene": n, "instance": rows, "vertex": vertex_rows}
    expected = {f.name: lengths[f.axis] for f in DATASETS} | {"instance_offsets": n + 1, "vertex_offsets": rows + 1}
    for name, length in expected.items():
        have = len(ds.datasets[name])
        _check(have == length, f"dataset {name}: {have} rows, expected {length} for {n} scenes")
    vertex_offsets = ds.vertex_offsets[:]
    _check(
        vertex_offsets[0] == 0 and vertex_offsets[-1] == vertex_rows,
        f"vertex_offsets: must run from 0 to {vertex_rows}, the rows of dataset vertices",
    )
    falls = np.flatnonzero(np.diff(vertex_offsets) < 0)
    if falls.size:
        scene = int(falls[0]) // ds.config.num_instances
        raise ValidationError(f"scene {scene}: vertex_offsets decrease at instance row {int(falls[0])}")


def check_checksums(ds: ShapesDataset) -> None:
    """Every dataset's checksum equals the one recorded when it was written."""
    _check(ds.complete, "attribute complete is false: the render did not finish")
    recorded = ds.checksums
    expected = sorted([f.name for f in DATASETS] + list(OFFSETS))
    _check(sorted(recorded) == expected, f"checksums attribute lists {sorted(recorded)}, expected {expected}")
    chain = DigestChain()
    for scene in scene_digests(ds.datasets, ds.instance_offsets, ds.vertex_offsets[:]):
        chain.add(scene)
    actual = checksums(ds.datasets, chain)
    for name in expected:
        _check(actual[name] == recorded[name], f"dataset {name}: SHA-256 does not match the recorded checksum")


def check_scene(scene: Scene, ds: ShapesDataset) -> None:
    """The geometric and layer invariants of one scene."""
    config = ds.config
    where = f"scene {scene.index}"
    table = scene.instances
    n = len(table)
    _check(n == config.num_instances, f"{where}: {n} instances, expected {config.num_instances}")
    _check(bool(np.all(table["scene"] == scene.index)), f"{where}: instance rows name another scene")
    _check(bool(np.array_equal(table["id"], np.arange(1, n + 1))), f"{where}: ids are not 1..{n} in order")
    _check(
        bool(np.array_equal(np.sort(table["depth"]), np.arange(n))),
        f"{where}: depth is not a permutation of 0..{n - 1}",
    )
    _check(
        bool(np.all((table["class_id"] >= 1) & (table["class_id"] <= config.num_classes))),
        f"{where}: class_id out of range",
    )
    rate = table["occlusion_rate"]
    _check(bool(np.all((rate >= 0) & (rate <= 1))), f"{where}: occlusion_rate outside [0, 1]")
    front = int(np.argmin(table["depth"]))
    _check(rate[front] == 0, f"{where}: front-most instance id {front + 1} has occlusion_rate {rate[front]}")
    _check(bool(np.all(table["visible_area"] <= table["area"] + 1e-9)), f"{where}: visible_area exceeds area")

    amodal, visible = scene.amodal_masks, scene.visible_masks
    _check(
        bool(np.array_equal(table["amodal_pixels"], amodal.sum(axis=(1, 2)))),
        f"{where}: amodal_pixels differ from the masks",
    )
    _check(
        bool(np.array_equal(table["visible_pixels"], visible.sum(axis=(1, 2)))),
        f"{where}: visible_pixels differ from the masks",
    )
    _check(
        bool(np.array_equal(table["is_visible"], table["visible_pixels"] > 0)),
        f"{where}: is_visible != (visible_pixels > 0)",
    )
    _check(not bool(np.any(visible & ~amodal)), f"{where}: a visible mask leaves its amodal mask")

    layers = scene.layers
    expected = layer_maps(amodal, table["depth"].astype(np.int64), config.layers)
    for k in range(config.layers):
        if not np.array_equal(layers[k], expected[k]):
            raise ValidationError(f"{where}: layer {k + 1} is not the {k + 1}-th instance from the top")
    ids = np.arange(1, n + 1)[:, None, None]
    _check(bool(np.array_equal(visible, layers[0][None] == ids)), f"{where}: visible masks differ from layer 1")
    for k in range(1, config.layers):
        _check(
            not bool(np.any((layers[k] > 0) & (layers[k - 1] == 0))),
            f"{where}: layer {k + 1} covers a pixel layer {k} leaves empty",
        )
    class_of_id = np.concatenate([[0], table["class_id"]]).astype(np.uint8)
    _check(bool(np.array_equal(scene.class_layers, class_of_id[layers])), f"{where}: class_layers disagree with layers")
    in_layers = np.any(layers[None] == ids[:, None], axis=1)
    _check(not bool(np.any(in_layers & ~amodal)), f"{where}: an instance appears in a layer outside its amodal mask")
    shallow = amodal.sum(axis=0) <= config.layers
    _check(
        bool(np.array_equal(in_layers & shallow, amodal & shallow)),
        f"{where}: layers miss amodal pixels where the stack is <= {config.layers} deep",
    )


def compare_with_fresh(scene: Scene, fresh: Scene) -> None:
    """Every stored dataset of ``scene`` equals a fresh render's: arrays exactly (checked first),
    then the per-instance table column by column, ``rounded`` columns to ``GEOMETRY_RTOL``."""
    where = f"scene {scene.index}"
    for field in DATASETS:
        same = field.dtype.names or np.array_equal(getattr(fresh, field.attribute), getattr(scene, field.attribute))
        if not same:
            raise ValidationError(f"{where}: {field.attribute} differs from a fresh render of the stored config")
    for field in DATASETS:
        if not field.dtype.names:
            continue
        for column in INSTANCE_COLUMNS:
            ours, theirs = getattr(fresh, field.attribute)[column.name], getattr(scene, field.attribute)[column.name]
            same = (
                np.allclose(ours, theirs, rtol=GEOMETRY_RTOL, atol=GEOMETRY_RTOL)
                if column.rounded
                else np.array_equal(ours, theirs)
            )
            if not same:
                raise ValidationError(
                    f"{where}: {field.name} column {column.name} differs from a fresh render of the stored config"
                )


def validate_dataset(
    ds: ShapesDataset, *, regenerate: int = 2, progress: Callable[[int, int], None] | None = None
) -> int:
    """Raise :class:`ValidationError` at the first violation; return scenes checked.

    ``regenerate`` scenes (evenly spread; all if negative) are rendered again from
    the stored config and must match the file: pixels, ids and vertices exactly, the
    exact-geometry measures to 1e-9 (another shapesgen version may compute them by
    another exact method, equal up to rounding).
    """
    try:
        return _validate(ds, regenerate, progress)
    except CorruptDatasetError as exc:  # a chunk that cannot be read: a finding, named by scene and dataset
        raise ValidationError(exc.problem) from None


def validate_file(
    path: str | Path, *, regenerate: int = 2, progress: Callable[[int, int], None] | None = None, workers: int = 1
) -> int:
    """:func:`validate_dataset` of the file at ``path`` (an unfinished render too).

    A damaged file, one that cannot even be opened included, is a finding
    (:class:`ValidationError`); a missing path or a file that is not HDF5 or not a
    shapesgen dataset stays a :class:`DatasetError`. A sharded dataset folder is checked
    shard by shard (``workers`` at a time) and against its manifest
    (:func:`shapesgen.shards.validate_sharded`).
    """
    from shapesgen.shards import validate_sharded
    from shapesgen.storage.manifest import is_sharded

    if is_sharded(path):
        return validate_sharded(path, regenerate=regenerate, progress=progress, workers=workers)
    try:
        with open_dataset(path, allow_incomplete=True) as ds:
            return validate_dataset(ds, regenerate=regenerate, progress=progress)
    except CorruptDatasetError as exc:  # one that cannot be opened: named, as no scene is
        raise ValidationError(f"{path}: {exc.problem}") from None


def _validate(ds: ShapesDataset, regenerate: int, progress: Callable[[int, int], None] | None) -> int:
    check_structure(ds)
    check_checksums(ds)
    n = len(ds)
    count = n if regenerate < 0 else min(regenerate, n)
    again = set(np.linspace(0, n - 1, count).round().astype(int).tolist()) if count else set()
    for index in range(n):
        scene = ds[index]
        if ds.first_scene:  # a shard: its scenes' dataset-wide index
            scene = dataclasses.replace(scene, index=ds.first_scene + index)
        check_scene(scene, ds)
        if index in again:
            compare_with_fresh(scene, render_scene(ds.config, scene.index))
        if progress:
            progress(index + 1, n)
    return n
