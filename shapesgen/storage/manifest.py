"""A sharded dataset's folder: its plan (shard k holds scenes ``start .. stop - 1`` in
``shard-<k>.h5``), its ``manifest.json`` and its ``dataset.h5``, the shards as one file of
HDF5 virtual datasets."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from h5py import h5d, h5p, h5s, h5t

from shapesgen.config import SceneConfig, StorageConfig
from shapesgen.errors import ConfigError, DatasetError, one_line
from shapesgen.files import SHARDED_FORMAT
from shapesgen.storage.layout import DATASETS, SHARD_MANIFEST, SHARD_VIRTUAL

if TYPE_CHECKING:
    from shapesgen.storage.reader import ShapesDataset

MANIFEST_FORMAT = SHARDED_FORMAT
MANIFEST_VERSION = "1.0"
VIRTUAL_FILE = SHARD_VIRTUAL  # the shards as one file of HDF5 virtual datasets


@dataclass(frozen=True)
class Shard:
    """Shard ``index``: scenes ``start .. stop - 1`` in file ``shard-<index>.h5``."""

    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.h5"

    @property
    def count(self) -> int:
        return self.stop - self.start


def plan_shards(num_scenes: int, shard_size: int) -> tuple[Shard, ...]:
    """Contiguous shards of ``shard_size`` scenes (the last may be shorter)."""
    return tuple(
        Shard(k, start, min(start + shard_size, num_scenes)) for k, start in enumerate(range(0, num_scenes, shard_size))
    )


def check_shard_header(
    ds: ShapesDataset, config: SceneConfig, shard: Shard, storage: Mapping[str, Any] | None = None
) -> None:
    """Refuse a shard file of another render: another config, scenes the plan puts elsewhere,
    or (given the ``storage`` the manifest or the render asks, as JSON) another storage."""
    if ds.config != config:
        ours, theirs = config.to_dict(), ds.config.to_dict()
        differ = ", ".join(f"{k}: {theirs[k]!r} there vs {ours[k]!r}" for k in sorted(ours) if ours[k] != theirs[k])
        raise ConfigError(f"{ds.path} was rendered with another config ({differ})", param="out")
    if ds.first_scene != shard.start or ds.num_scenes != shard.count:
        held = f"scenes {ds.first_scene}..{ds.first_scene + ds.num_scenes - 1}"
        raise ConfigError(
            f"{ds.path} holds {held}, the plan asks {shard.start}..{shard.stop - 1} (another num_scenes or shard_size)",
            param="out",
        )
    if storage is not None and ds.storage != dict(storage):
        raise ConfigError(
            f"{ds.path} was written with another storage ({storage_difference(ds.storage, storage)})", param="out"
        )


def storage_difference(theirs: Mapping[str, Any], asked: Mapping[str, Any]) -> str:
    """``key: <theirs> there vs <asked> asked`` for each storage setting that differs (JSON forms)."""
    return ", ".join(
        f"{key}: {theirs.get(key)!r} there vs {asked.get(key)!r} asked"
        for key in sorted(set(asked) | set(theirs))
        if theirs.get(key) != asked.get(key)
    )


def build_manifest(
    config: SceneConfig,
    storage: StorageConfig,
    num_scenes: int,
    shard_size: int,
    checksums: dict[str, str],
    shards: Sequence[tuple[Shard, dict[str, str]]],
) -> dict[str, Any]:
    """The manifest's content: the whole dataset's ``checksums`` and each shard's, in shard
    order; no time stamps, so the same render gives the same bytes."""
    from shapesgen import __version__

    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "package_version": __version__,
        "config": config.to_dict(),
        "seed": config.seed,
        "storage": json.loads(storage.to_json()),
        "num_scenes": num_scenes,
        "shard_size": shard_size,
        "checksums": checksums,
        "virtual": VIRTUAL_FILE,
        "shards": [
            {"file": shard.file, "start": shard.start, "stop": shard.stop, "checksums": sums} for shard, sums in shards
        ],
    }


def write_virtual(folder: Path, config: SceneConfig, shards: tuple[Shard, ...], sums: dict[str, str]) -> Path:
    """Write ``folder/dataset.h5``: a shapesgen file whose per-scene and per-instance datasets
    (and ``vertices``) are HDF5 virtual datasets mapping the shards' rows end to end, and
    whose offset arrays are real, rebuilt dataset-wide; root attributes as a single-file
    render's (no ``first_scene``; the whole-dataset checksums). Plain h5py reads it as one
    file; the shard files must stay beside it. Written to a ``.partial`` name, then renamed."""
    n, per_scene = shards[-1].stop, config.num_instances
    vertex_rows: list[int] = []
    partial = folder / (VIRTUAL_FILE + ".partial")
    partial.unlink(missing_ok=True)  # an earlier run's (checked as ours); a link goes, never its target
    try:
        with h5py.File(partial, "x") as out:
            vertex_offsets = out.create_dataset("vertex_offsets", shape=(1,), maxshape=(None,), dtype=np.int64)
            attrs: dict[str, Any] = {}
            base = 0
            for shard in shards:
                with h5py.File(folder / shard.file, "r") as source:
                    if not attrs:
                        attrs = {key: source.attrs[key] for key in source.attrs if key != "first_scene"}
                    offsets = source["vertex_offsets"][1:] + base
                vertex_offsets.resize(len(vertex_offsets) + len(offsets), axis=0)  # every shard has instance rows
                vertex_offsets[-len(offsets) :] = offsets
                vertex_rows.append(int(offsets[-1]) - base)
                base = int(offsets[-1])
            out.create_dataset("instance_offsets", data=np.arange(n + 1, dtype=np.int64) * per_scene)
            for field in DATASETS:
                record = field.record_shape(config)
                rows = [s.count * field.scene_rows(config) if field.per_scene else vertex_rows[s.index] for s in shards]
                _virtual_dataset(out, field.name, field.dtype, record, [s.file for s in shards], rows)
            for key, value in attrs.items():
                out.attrs[key] = value
            out.attrs["num_scenes"] = out.attrs["scenes_written"] = np.int64(n)
            out.attrs["checksums"] = json.dumps(sums, sort_keys=True)
    except BaseException:  # cut short (Ctrl-C, a full disk): a file a rerun would not take for ours
        partial.unlink(missing_ok=True)
        raise
    return partial.replace(folder / VIRTUAL_FILE)


def _virtual_dataset(
    out: Any, name: str, dtype: np.dtype, record: tuple[int, ...], files: list[str], rows: list[int]
) -> None:
    """Dataset ``name`` of ``out`` as the rows of the same dataset in ``files``, end to end
    (h5py's VirtualLayout, but without time stamps, so the file's bytes are reproducible)."""
    space = h5s.create_simple((sum(rows), *record))
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    row = 0
    for file, count in zip(files, rows, strict=True):
        if count:
            selection = space.copy()
            selection.select_hyperslab((row, *(0 for _ in record)), (count, *record))
            source = h5s.create_simple((count, *record))
            dcpl.set_virtual(selection, file.encode(), name.encode(), source)
        row += count
    h5d.create(out.id, name.encode(), h5t.py_create(dtype, logical=True), space, dcpl=dcpl).close()


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a sharded dataset's manifest."""
    return (Path(path) / SHARD_MANIFEST).is_file()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of a sharded dataset folder (:class:`DatasetError` if it is
    missing, not JSON, or breaks the layout)."""
    path = Path(folder) / SHARD_MANIFEST
    if not path.is_file():
        raise DatasetError(f"{folder}: no {SHARD_MANIFEST}: not a sharded dataset, or its render is unfinished")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{path}: cannot be read as JSON ({one_line(exc, 120)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{path}: not a shapesgen shard manifest (format != '{MANIFEST_FORMAT}')")
    if str(manifest.get("format_version", "")).split(".")[0] != MANIFEST_VERSION.split(".")[0]:
        raise DatasetError(f"{path}: manifest format_version {manifest.get('format_version')!r} is not readable")
    try:
        config = SceneConfig.from_dict(manifest["config"])
        if not isinstance(manifest["storage"], dict):
            raise TypeError(f"storage is {type(manifest['storage']).__name__}, not an object")
        StorageConfig(**manifest["storage"])
        num, size, shards = int(manifest["num_scenes"]), int(manifest["shard_size"]), manifest["shards"]
        plan = plan_shards(num, size)
        ok = (
            isinstance(shards, list)
            and len(shards) == len(plan)
            and config.seed == manifest["seed"]
            and isinstance(manifest["checksums"], dict)
            and all(
                entry["file"] == s.file and entry["start"] == s.start and entry["stop"] == s.stop
                for entry, s in zip(shards, plan, strict=True)
            )
        )
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise DatasetError(f"{path}: damaged manifest ({one_line(exc, 120)})") from None
    if not ok:
        raise DatasetError(f"{path}: damaged manifest (its shard list does not match num_scenes and shard_size)")
    return manifest
