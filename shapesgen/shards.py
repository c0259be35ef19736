"""Sharded datasets: render a folder of shard files and a manifest, locally or on Dask, and validate it.

Shard k is a complete shapesgen HDF5 file holding scenes ``start .. stop - 1`` (its
``first_scene`` attribute is ``start``), written by the single-file writer
(:func:`shapesgen.build.render_dataset`), so every scene has the bytes a single-file
render of the same config and seed gives it. ``manifest.json`` is written last and
atomically: a folder without one is an unfinished render, which the same call resumes
shard by shard (a shard that exists and verifies is kept, any other is rendered again).

The manifest's whole-dataset checksums equal the single-file render's ``checksums``
attribute: a per-scene dataset's checksum is the SHA-256 of its per-scene digests in
scene order, so the client continues that chain across shards from the digests each
shard reports; the offset checksums hash the dataset-wide offsets rebuilt from the
shards' own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shapesgen.config import Engine, SceneConfig, StorageConfig
from shapesgen.engines import DASK_HINT as DASK_HINT  # re-exported: callers import them from here
from shapesgen.engines import (
    ENGINES,
    Accept,
    Report,
    Task,
    check_scheduler,
    import_dask,
    prepare_local_cluster,
    run_in_pool,
    run_on_dask,
)
from shapesgen.engines import MissingExtra as MissingExtra
from shapesgen.errors import ConfigError, DatasetError, FailedWrite, ResourceError, ShapesgenError, ValidationError
from shapesgen.files import (
    check_output_path,
    exclusive_lock,
    is_sharded_folder,
    make_parents,
    refuse_run_files,
    remove_empty,
    write_atomically,
    write_refusal,
)
from shapesgen.limits import DiskSpaceError, batch_scenes_for, check_scene_fits
from shapesgen.storage.digests import PER_SCENE_HASHED, DigestChain, checksums, scene_digests
from shapesgen.storage.encode import EncodedBatch
from shapesgen.storage.layout import OFFSETS, SHARD_FILE, SHARD_MANIFEST
from shapesgen.storage.manifest import (
    VIRTUAL_FILE,
    Shard,
    build_manifest,
    check_shard_header,
    plan_shards,
    read_manifest,
    storage_difference,
    write_virtual,
)
from shapesgen.storage.reader import CorruptDatasetError, not_ours, open_dataset

MAX_SHARDS = 100_000  # shard-NNNNN.h5; the manifest stays a few tens of MB
MAX_TOTAL_SCENES = 10**11
NO_WORKERS_TIMEOUT_S = 60  # a LocalCluster left without workers this long fails the run
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ShardResult:
    """What a finished shard reports to the client: its recorded checksums, its per-scene
    digests (each hashed dataset's 32-byte digests concatenated in scene order) and its
    offsets, from which the whole-dataset checksums are chained."""

    shard: Shard
    checksums: dict[str, str]
    digests: dict[str, bytes]
    instance_offsets: np.ndarray
    vertex_offsets: np.ndarray
    rendered: bool


def read_shard(
    path: Path, config: SceneConfig, shard: Shard, storage: Mapping[str, Any], *, rendered: bool = False
) -> ShardResult:
    """Read shard ``path`` back and check it: the config, scene range and storage (as JSON)
    asked for, and every stored byte against the checksums it records. Raises
    :class:`ConfigError` for a shard of another render and :class:`ValidationError` for
    damaged data."""
    try:
        with open_dataset(path) as ds:
            check_shard_header(ds, config, shard, storage)
            chain, parts = DigestChain(), {name: bytearray() for name in PER_SCENE_HASHED}
            vertex_offsets = ds.vertex_offsets[:]
            for scene in scene_digests(ds.datasets, ds.instance_offsets, vertex_offsets):
                chain.add(scene)
                for name in PER_SCENE_HASHED:
                    parts[name] += scene[name]
            actual = checksums(ds.datasets, chain)
            if actual != ds.checksums:
                wrong = sorted(name for name in actual if actual[name] != ds.checksums.get(name))
                raise ValidationError(f"{path}: dataset(s) {wrong} do not match the recorded checksums")
            digests = {name: bytes(part) for name, part in parts.items()}
            return ShardResult(shard, dict(ds.checksums), digests, ds.instance_offsets, vertex_offsets, rendered)
    except CorruptDatasetError as exc:
        raise ValidationError(f"{path}: {exc.problem}") from None


WrittenBatch = tuple[dict[str, list[bytes]], np.ndarray, np.ndarray]  # digests, instance and vertex counts


def _result_of(path: Path, shard: Shard, written: list[WrittenBatch]) -> ShardResult:
    """The result of a shard just rendered from its first scene: digests and offsets from the
    batches it wrote (no read-back; ``validate`` reads every byte), checksums from its file."""
    import h5py

    with h5py.File(path, "r") as file:
        sums: dict[str, str] = json.loads(str(file.attrs["checksums"]))
    digests = {name: b"".join(d for batch in written for d in batch[0][name]) for name in PER_SCENE_HASHED}
    instance_counts = np.concatenate([batch[1] for batch in written])
    vertex_counts = np.concatenate([batch[2] for batch in written])
    instance_offsets = np.concatenate([[0], np.cumsum(instance_counts)]).astype(np.int64)
    vertex_offsets = np.concatenate([[0], np.cumsum(vertex_counts)]).astype(np.int64)
    return ShardResult(shard, sums, digests, instance_offsets, vertex_offsets, rendered=True)


def render_shard(
    config: SceneConfig,
    folder: str,
    shard: Shard,
    storage: StorageConfig,
    created: str,
    workers: int = 1,
    progress: ProgressCallback | None = None,
) -> ShardResult:
    """Make shard ``shard`` of ``folder`` exist and verify; one engine task.

    A shard file that exists and verifies is kept; one whose data is damaged is
    rendered again; one of another render is refused. The file is written to
    ``<shard>.partial`` and renamed when complete, so a task that dies leaves no shard
    that looks finished. A ``.partial`` an earlier attempt left is rendered again from its
    first scene, not continued: a killed task's scenes would be rendered anyway to check
    them. Either way the shard's bytes are an uninterrupted render's.
    """
    from shapesgen.build import RenderNote, render_dataset

    path = Path(folder) / shard.file
    if path.is_symlink():  # even one that points nowhere: rendering would replace the user's link
        raise DatasetError(f"{path} is a symbolic link, not a shard: move it out of {folder}", param="out")
    if path.exists():
        try:
            return read_shard(path, config, shard, json.loads(storage.to_json()))
        except ConfigError as exc:  # another render's shard, copied in: not ours to delete
            raise ConfigError(f"{exc}; move it out of {folder} to render this shard again", param="out") from None
        except (ValidationError, DatasetError):  # damaged, or not a complete shapesgen file
            foreign = not_ours(path)
            if foreign is not None:  # a user's file, not ours to delete
                raise DatasetError(f"{path} {foreign}, not a shard: move it out of {folder}", param="out") from None
            path.unlink()
    written: list[WrittenBatch] = []  # what the chain needs of each batch, not its compressed chunks

    def keep(batch: EncodedBatch) -> None:
        written.append((batch.digests, batch.instance_counts, batch.vertex_counts))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RenderNote)  # a lowered worker count: the data is the same
        try:
            render_dataset(
                config,
                path,
                num_scenes=shard.count,
                workers=workers,
                storage=storage,
                force=True,  # an earlier attempt's .partial, under the shard's lock (a task still writing it refuses)
                progress=progress,
                first_scene=shard.start,
                created=created,
                on_batch=keep,
                shard_task=True,
            )
        except DiskSpaceError as exc:  # the disk filled since the render's own check: not a bad --num
            raise ResourceError(
                f"{path}: too little free disk space for this shard of {shard.count} scenes: {exc.detail}"
            ) from None
    return _result_of(path, shard, written)


class DatasetChain:
    """The whole dataset's checksums, equal to a single-file render's ``checksums``, fed
    shard results in shard order: per-scene datasets chain the shards' per-scene digests;
    offsets hash the dataset-wide offset arrays, rebuilt by shifting each shard's own.
    Only hash states and each shard's own checksums are kept, so the client's memory does
    not grow with the scene count."""

    def __init__(self) -> None:
        self.hashers = {name: hashlib.sha256() for name in (*PER_SCENE_HASHED, *OFFSETS)}
        self.instance_base = self.vertex_base = 0
        self.shards: list[tuple[Shard, dict[str, str]]] = []

    def add(self, result: ShardResult) -> None:
        """The next shard's result (shard 0 first)."""
        if result.shard.index != len(self.shards):
            raise ValueError(f"shard {result.shard.index} given when shard {len(self.shards)} is next")
        for name in PER_SCENE_HASHED:
            self.hashers[name].update(result.digests[name])
        skip = 1 if self.shards else 0  # each shard's offsets start at 0: the previous shard's end
        for name, base in (("instance_offsets", self.instance_base), ("vertex_offsets", self.vertex_base)):
            offsets = getattr(result, name)
            self.hashers[name].update((offsets[skip:] + base).astype(np.int64).tobytes())
        self.instance_base += int(result.instance_offsets[-1])
        self.vertex_base += int(result.vertex_offsets[-1])
        self.shards.append((result.shard, result.checksums))

    def hexdigests(self) -> dict[str, str]:
        return {name: self.hashers[name].hexdigest() for name in sorted(self.hashers)}


def created_time() -> str:
    """The render's start time, ISO 8601 UTC; ``SOURCE_DATE_EPOCH`` (reproducible builds) pins it."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch.isdigit() else datetime.now(UTC)
    return when.isoformat(timespec="seconds")


def _kept_created(out: Path, shards: tuple[Shard, ...]) -> str | None:
    """The start time the shards an earlier run of this render wrote record, so that the shards
    rendered now record it too: a resumed folder then holds the bytes of an uninterrupted one."""
    import h5py

    for shard in shards:
        path = out / shard.file
        if path.is_file():
            with contextlib.suppress(OSError, KeyError), h5py.File(path, "r") as file:
                return str(file.attrs["created"])
    return None


def _check_count(name: str, value: object, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise ConfigError(f"{name}={value!r} is invalid: must be an integer from 1 to {high:,}", param=name)
    return value


def render_sharded(
    config: SceneConfig,
    out: str | Path,
    *,
    num_scenes: int,
    shard_size: int,
    engine: Engine = "local",
    scheduler: str | None = None,
    workers: int = 1,
    storage: StorageConfig | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Render ``num_scenes`` scenes of ``config`` into the folder ``out`` as shards of
    ``shard_size`` scenes plus ``manifest.json``; return ``out``.

    ``engine="local"`` runs one task per shard on ``workers`` local processes (with fewer
    shards than workers: the shards one after another, each with ``workers``
    processes); ``engine="dask"`` runs one task per shard on the Dask scheduler at
    ``scheduler`` (or, without one, on a ``LocalCluster`` of ``workers`` processes): every
    worker must see ``out`` (shared storage). The bytes are the same for any engine and
    worker count. Calling again with the same arguments resumes an unfinished folder; a
    folder of another render is refused (:class:`ConfigError`).
    """
    from shapesgen.build import (
        MAX_SCENES,
        RenderInterrupted,
        RenderNote,
        check_disk_for,
        effective_workers,
        empty_layers_note,
        lowered_note,
        resolve_seed,
        usable_cores,
    )

    _check_count("num_scenes", num_scenes, MAX_TOTAL_SCENES)
    _check_count("shard_size", shard_size, MAX_SCENES)
    _check_count("workers", workers, 4096)
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r} is invalid: must be one of {', '.join(ENGINES)}", param="engine")
    if scheduler is not None and engine != "dask":
        raise ConfigError(f"scheduler={scheduler!r} needs engine='dask'", param="scheduler", related=("engine",))
    shards = plan_shards(num_scenes, shard_size)
    if len(shards) > MAX_SHARDS:
        raise ConfigError(
            f"shard_size={shard_size} is invalid: {num_scenes:,} scenes would make {len(shards):,} shards, "
            f"at most {MAX_SHARDS:,} are allowed",
            param="shard_size",
        )
    storage = storage or StorageConfig()
    out = check_output_path(out, "out")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"out={str(out)!r} exists and is not a folder: give a new or sharded folder", param="out")
    refuse_run_files(out, "out")
    if engine == "dask":
        try:
            if scheduler is None:
                prepare_local_cluster([_render_task.__module__])
            import_dask()
        except KeyboardInterrupt:
            raise _interrupted(out, shards) from None
        if scheduler is not None:
            check_scheduler(scheduler)
    created_dirs = _made_folders(out.parent, out)
    try:
        with exclusive_lock(out, "out"):  # first: a render of this folder still running is named as one
            config = _resolve_existing(out, config, shards, shard_size, storage)
            config = resolve_seed(config)
            check_scene_fits(config, 1)
            if (empty := empty_layers_note(config)) is not None:
                warnings.warn(empty, RenderNote, stacklevel=2)
            absent = [shard for shard in shards if not (out / shard.file).is_file()]
            if absent:
                missing = sum(shard.count for shard in absent)
                check_disk_for(config, storage, out, missing, asked=num_scenes, files=len(absent))
            created_dirs = _made_folders(out, out) + created_dirs  # deepest first
            created = _kept_created(out, shards) or created_time()
            try:
                pooled = min(workers, usable_cores()) if engine == "local" else 1
                if 1 < pooled <= len(shards):
                    if pooled < workers:
                        warnings.warn(
                            lowered_note(workers, pooled, f"{pooled} usable core(s)"), RenderNote, stacklevel=2
                        )
                    check_scene_fits(config, pooled)
                    # one task per shard, each process rendering and writing its shard alone (as under
                    # Dask): none waits at a shard's end for the others, no shard starts a pool of its own
                    chain, tasks, accept = _shard_tasks(config, str(out), shards, storage, created)
                    run_in_pool(tasks, accept, progress, pooled, "render")
                elif engine == "local":
                    batch = batch_scenes_for(config, storage.batch_scenes)
                    used, note = effective_workers(workers, min(shard_size, num_scenes), batch)
                    if note:
                        warnings.warn(note, RenderNote, stacklevel=2)
                    chain = _run_local(config, out, shards, storage, created, used, progress)
                else:
                    chain = _run_dask(config, out, shards, storage, created, scheduler, workers, progress)
            except ResourceError as exc:  # a full disk, a worker or the scheduler lost: the shards written are kept
                _remove_stale_locks(out, shards)
                if not any((out / shard.file).is_file() for shard in shards):
                    raise
                # a FailedWrite stays one: the CLI then ends the process at once
                kind = FailedWrite if isinstance(exc, FailedWrite) else ResourceError
                raise kind(f"{exc}; {_kept(out, shards)}", param=exc.param, related=exc.related) from None
            except (KeyboardInterrupt, RenderInterrupted):
                _remove_stale_locks(out, shards)
                raise
            write_virtual(out, config, shards, chain.hexdigests())
            manifest = build_manifest(config, storage, num_scenes, shard_size, chain.hexdigests(), chain.shards)
            text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
            write_atomically(out / SHARD_MANIFEST, text.encode(), force=True)
    except (KeyboardInterrupt, RenderInterrupted):
        remove_empty(created_dirs)
        raise _interrupted(out, shards) from None
    except BaseException:
        remove_empty(created_dirs)
        raise
    return out


def _made_folders(folder: Path, out: Path) -> list[Path]:
    """Create ``folder`` (the output ``out`` or its parent) and its missing parents; those
    created, deepest first (:func:`~shapesgen.files.make_parents`), or one line naming ``out``."""
    try:
        return make_parents(folder)
    except OSError as exc:
        raise write_refusal(f"out={str(out)!r}: cannot create the folder", exc, "out") from None


def _interrupted(out: Path, shards: tuple[Shard, ...]) -> ShapesgenError:
    """The one line a stopped sharded render ends with: what it kept, and how to finish."""
    from shapesgen.build import RenderInterrupted

    if not out.is_dir():
        return RenderInterrupted("interrupted before any shard was written")
    return RenderInterrupted(f"interrupted; {_kept(out, shards)}")


def _remove_stale_locks(out: Path, shards: tuple[Shard, ...]) -> None:
    """Remove the lock files that the shard tasks killed by an interrupt (or a lost worker) left:
    each is taken and released as a new holder would, so one that a running task still holds
    (a Dask worker elsewhere) stays."""
    for shard in shards:
        if (out / f"{shard.file}.lock").exists():
            with contextlib.suppress(ShapesgenError, OSError), exclusive_lock(out / shard.file, "out"):
                pass


def _kept(out: Path, shards: tuple[Shard, ...]) -> str:
    """What an unfinished folder holds, and how to finish it."""
    done = sum((out / shard.file).is_file() for shard in shards)
    return (
        f"{out} is kept with {done} of {len(shards)} shards written: rerun the same command to finish it "
        "(shards that exist and verify are kept)"
    )


def _resolve_existing(
    out: Path, config: SceneConfig, shards: tuple[Shard, ...], shard_size: int, storage: StorageConfig
) -> SceneConfig:
    """The config asked for, checked against what an existing folder holds (its seed
    taken when none was asked for); a different render is refused, an unfinished one of
    more scenes (shards past this plan's) too: finishing it would leave them behind."""
    num_scenes = shards[-1].stop
    if not out.is_dir():
        return config
    manifest_path = out / SHARD_MANIFEST
    if manifest_path.is_file():
        try:
            manifest = read_manifest(out)
        except DatasetError as exc:
            if not is_sharded_folder(out):
                raise DatasetError(
                    f"{exc}: this folder is not a sharded render's; give a new folder", param="out"
                ) from None
            raise DatasetError(
                f"{exc}: delete it and rerun, the render checks every shard and writes it again", param="out"
            ) from None
        theirs = SceneConfig.from_dict(manifest["config"])
        if config.seed is None:
            config = config.replace(seed=theirs.seed)
        asked = {"config": config.to_dict(), "num_scenes": num_scenes, "shard_size": shard_size}
        asked["storage"] = json.loads(storage.to_json())
        differs = [key for key in ("config", "num_scenes", "shard_size", "storage") if manifest[key] != asked[key]]
        if differs:
            detail = _config_difference(config, theirs) if "config" in differs else ", ".join(differs)
            raise ConfigError(f"out={str(out)!r} holds another sharded render ({detail}): choose another folder")
        views = (out / VIRTUAL_FILE, out / (VIRTUAL_FILE + ".partial"))
        foreign = [p.name for p in views if (p.exists() or p.is_symlink()) and not _is_ours(p)]
        if foreign:
            raise DatasetError(
                f"out={str(out)!r}: {foreign[0]} is not a file a sharded render wrote (a user's file or a link), "
                "and the render writes its single-file view there: move it out of the folder, then rerun",
                param="out",
            )
        return config
    others = sorted(p.name for p in out.iterdir() if not _is_ours(p))
    if others:
        raise DatasetError(
            f"out={str(out)!r} is a folder that holds other files ({', '.join(others[:3])}): give a new folder",
            param="out",
        )
    entries = sorted(p for p in out.glob("shard-*.h5*") if not p.name.endswith(".lock"))  # shards, .partial ones
    for path in entries:
        stored = _stored_config(path)
        if stored is None:
            continue
        if config.seed is None:
            config = config.replace(seed=stored.seed)
        if stored != config:
            raise ConfigError(
                f"out={str(out)!r} holds an unfinished render of another config "
                f"({_config_difference(config, stored)}): choose another folder",
                param="out",
            )
        break
    asked = json.loads(storage.to_json())
    for path in entries:
        stored_storage = _stored_storage(path) if path.suffix == ".h5" else None
        if stored_storage is not None and stored_storage != asked:
            raise ConfigError(
                f"out={str(out)!r} holds an unfinished render with another storage "
                f"({storage_difference(stored_storage, asked)}, in {path.name}): "
                "rerun it with the storage it was started with (--compression), or choose another folder",
                param="out",
            )
    planned = {shard.file for shard in shards}
    beyond = [p.name for p in entries if p.name.split(".")[0] + ".h5" not in planned]
    if beyond:
        raise ConfigError(
            f"out={str(out)!r} holds an unfinished render with shards past the {len(shards):,} that "
            f"num_scenes={num_scenes} and shard_size={shard_size} make ({', '.join(beyond[:3])}): it was started "
            "with more scenes or smaller shards; rerun it as it was started to finish it, or choose another folder",
            param="num_scenes",
            related=("out", "shard_size"),
        )
    return config


OWN_ENTRY = re.compile(rf"{SHARD_FILE.pattern}(\.partial)?(\.lock)?|\.shapesgen-.*\.partial")
"""A shard, the file a shard task builds, their locks, a temporary file of ours."""


def _is_ours(path: Path) -> bool:
    """Whether a sharded render may have written ``path`` (and so may replace it): its
    manifest, its virtual file, and shards that shapesgen may have written
    (:func:`~shapesgen.storage.reader.not_ours`: a user's file named ``shard-00000.h5`` is
    not rendered over)."""
    name = path.name
    if name == SHARD_MANIFEST:
        return path.is_file() and not path.is_symlink()
    if name == VIRTUAL_FILE:
        return _is_our_virtual_file(path)
    if name == VIRTUAL_FILE + ".partial":
        return _is_our_virtual_file(path, partial=True)
    if not OWN_ENTRY.fullmatch(name):
        return False
    if name.endswith(".lock") or name.startswith(".shapesgen-"):
        return True
    return not_ours(path, empty_is_ours=name.endswith(".partial")) is None


def _is_our_virtual_file(path: Path, partial: bool = False) -> bool:
    """Whether ``path`` is a sharded render's single-file view: a shapesgen file whose scenes
    are virtual datasets (a user's own dataset copied in under that name is not) or, for
    the ``partial`` one, what writing it leaves when cut short (empty, damaged, unfinished)."""
    import h5py

    if not_ours(path, empty_is_ours=partial) is not None:
        return False
    try:
        with h5py.File(path, "r") as file:
            images = file.get("images")
            return bool(images.is_virtual) if images is not None else partial
    except (OSError, TypeError, AttributeError):
        return partial


def _stored_config(path: Path) -> SceneConfig | None:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            return SceneConfig.from_json(str(file.attrs["config"]))
    except (OSError, KeyError, ConfigError, ValueError, TypeError):
        return None


def _stored_storage(path: Path) -> dict[str, Any] | None:
    """The storage a shard file records (as JSON), or ``None`` if it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as file:
            stored = json.loads(str(file.attrs["storage"]))
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return stored if isinstance(stored, dict) else None


def _config_difference(ours: SceneConfig, theirs: SceneConfig) -> str:
    a, b = ours.to_dict(), theirs.to_dict()
    return ", ".join(f"{key}: {b[key]!r} there vs {a[key]!r} asked" for key in sorted(a) if a[key] != b[key])


def _run_local(
    config: SceneConfig,
    out: Path,
    shards: tuple[Shard, ...],
    storage: StorageConfig,
    created: str,
    workers: int,
    progress: ProgressCallback | None,
) -> DatasetChain:
    """The shards on this machine, one after another, each with ``workers`` processes (with
    fewer shards than workers; otherwise one task per shard on a pool)."""
    total = shards[-1].stop
    chain = DatasetChain()
    for shard in shards:

        def update(done: int, _total: int, base: int = shard.start) -> None:
            if progress:
                progress(base + done, total)

        chain.add(render_shard(config, str(out), shard, storage, created, workers, update))
        if progress:
            progress(shard.stop, total)
    return chain


def _shard_tasks(
    config: SceneConfig, folder: str, shards: tuple[Shard, ...], storage: StorageConfig, created: str
) -> tuple[DatasetChain, list[Task], Accept]:
    """One engine task per shard, and the ``accept`` that chains their results in shard order
    as they finish in any order."""
    chain, waiting = DatasetChain(), dict[int, ShardResult]()
    tasks = [
        Task(shard.index, f"shard {shard.file}", shard.count, _render_task, (config, folder, shard, storage, created))
        for shard in shards
    ]

    def accept(task: Task, result: ShardResult) -> None:
        waiting[task.index] = result
        while len(chain.shards) in waiting:  # results that arrived early wait for their turn
            chain.add(waiting.pop(len(chain.shards)))

    return chain, tasks, accept


def _render_task(
    config: SceneConfig, folder: str, shard: Shard, storage: StorageConfig, created: str, *, report: Report
) -> ShardResult:
    """One engine task: :func:`render_shard`, its written scenes reported as they grow."""
    return render_shard(config, folder, shard, storage, created, progress=lambda done, _total: report(done))


def _run_dask(
    config: SceneConfig,
    out: Path,
    shards: tuple[Shard, ...],
    storage: StorageConfig,
    created: str,
    scheduler: str | None,
    workers: int,
    progress: ProgressCallback | None,
) -> DatasetChain:
    """One Dask task per shard, chained in shard order as they finish; the bar moves scene
    by scene (see :mod:`shapesgen.engines`). The first failed task fails the run."""
    import dask

    from shapesgen import dask_preload

    folder = str(out.resolve())
    chain, tasks, accept = _shard_tasks(config, folder, shards, storage, created)

    # A LocalCluster's workers leave Ctrl-C to us, and if every one of them dies and none can be
    # started again (a full disk, no memory) its scheduler fails the tasks instead of waiting forever.
    local_cluster = {**dask_preload.CONFIG, "distributed.scheduler.no-workers-timeout": f"{NO_WORKERS_TIMEOUT_S}s"}
    if scheduler is not None:
        local_cluster = {}
    with dask.config.set(local_cluster):
        run_on_dask(tasks, accept, progress, scheduler=scheduler, workers=workers, name=f"{folder}/{created}")
    return chain


def _validate_shard(
    folder: str,
    config: SceneConfig,
    spec: Shard,
    storage: dict[str, Any],
    regenerate: int,
    progress: ProgressCallback | None = None,
) -> ShardResult:
    """Validate one shard as ``validate`` does a file, and read its digests for the chain."""
    from shapesgen.validate import validate_dataset

    shard_path = Path(folder) / spec.file
    if not shard_path.is_file():
        raise ValidationError(f"shard {spec.file} is missing")
    try:
        with open_dataset(shard_path) as ds:
            check_shard_header(ds, config, spec, storage)
            validate_dataset(ds, regenerate=regenerate, progress=progress)
    except CorruptDatasetError as exc:
        raise ValidationError(f"shard {spec.file}: {exc.problem}") from None
    except (ConfigError, DatasetError, ValidationError) as exc:
        raise ValidationError(f"shard {spec.file}: {exc}") from None
    return read_shard(shard_path, config, spec, storage)


def _summarize_shard(
    folder: str, config: SceneConfig, spec: Shard, storage: dict[str, Any], *, report: Report
) -> dict[str, Any]:
    """One engine task of :func:`summarize_sharded`: the summary of shard ``spec``, checked
    against the manifest's config and plan. Errors are plain :class:`DatasetError` lines (a
    pool returns them pickled)."""
    from shapesgen.stats import summarize

    try:
        with open_dataset(Path(folder) / spec.file) as ds:
            check_shard_header(ds, config, spec, storage)
            return summarize(ds)
    except CorruptDatasetError as exc:
        raise DatasetError(f"shard {spec.file}: {exc.problem}") from None
    except ShapesgenError as exc:
        raise DatasetError(str(exc)) from None


def summarize_sharded(path: str | Path, *, workers: int = 1) -> dict[str, Any]:
    """``shapesgen info`` of a sharded folder: :func:`shapesgen.stats.summarize` of every shard
    (the manifest gives the config and plan each is checked against), ``workers`` shards at a
    time in processes, merged in shard order by :func:`shapesgen.stats.merge_summaries`."""
    from shapesgen.engines import run_here, run_in_pool
    from shapesgen.stats import merge_summaries

    _check_count("workers", workers, 4096)
    manifest = read_manifest(path)
    config = SceneConfig.from_dict(manifest["config"])
    shards = plan_shards(int(manifest["num_scenes"]), int(manifest["shard_size"]))
    tasks = [
        Task(s.index, f"shard {s.file}", s.count, _summarize_shard, (str(path), config, s, manifest["storage"]))
        for s in shards
    ]
    parts: dict[int, dict[str, Any]] = {}

    def accept(task: Task, summary: dict[str, Any]) -> None:
        parts[task.index] = summary

    if workers == 1:
        run_here(tasks, accept, None)
    else:
        run_in_pool(tasks, accept, None, workers, "info")
    return merge_summaries(str(path), [parts[k] for k in range(len(shards))])


def validate_sharded(
    path: str | Path, *, regenerate: int = 2, progress: ProgressCallback | None = None, workers: int = 1
) -> int:
    """Validate every shard (as ``validate`` does a file, ``regenerate`` scenes each;
    ``workers`` shards at a time, in processes), each shard's checksums against the
    manifest, the whole-dataset checksums and the single-file view (first that it is one a
    render wrote, last that it maps these shards); return scenes checked. Raises
    :class:`ValidationError` at the first violation (in shard order)."""
    from concurrent.futures import Future, ProcessPoolExecutor

    from shapesgen.build import _pool_context, _worker_init

    _check_count("workers", workers, 4096)
    manifest = read_manifest(path)
    folder = str(path)
    config = SceneConfig.from_dict(manifest["config"])
    shards = plan_shards(int(manifest["num_scenes"]), int(manifest["shard_size"]))
    _check_view(Path(path))  # first: a cheap check that needs no shard read
    total = shards[-1].stop
    chain = DatasetChain()

    def accept(result: ShardResult, entry: dict[str, Any]) -> None:
        if result.checksums != entry["checksums"]:
            raise ValidationError(f"shard {result.shard.file}: its checksums differ from the manifest's")
        chain.add(result)
        if progress:
            progress(result.shard.stop, total)

    if workers == 1:
        for spec, entry in zip(shards, manifest["shards"], strict=True):

            def update(done: int, _total: int, base: int = spec.start) -> None:
                if progress:
                    progress(base + done, total)

            accept(_validate_shard(folder, config, spec, manifest["storage"], regenerate, update), entry)
    else:
        with ProcessPoolExecutor(
            min(workers, len(shards)), mp_context=_pool_context(), initializer=_worker_init
        ) as pool:
            futures: list[Future[ShardResult]] = [
                pool.submit(_validate_shard, folder, config, spec, manifest["storage"], regenerate) for spec in shards
            ]
            try:
                for future, entry in zip(futures, manifest["shards"], strict=True):
                    accept(future.result(), entry)
            finally:
                for future in futures:
                    future.cancel()
    if chain.hexdigests() != manifest["checksums"]:
        raise ValidationError("the manifest's whole-dataset checksums do not match the shards")
    _check_view(Path(path), manifest)
    return total


def _check_view(folder: Path, manifest: dict[str, Any] | None = None) -> None:
    """Refuse a sharded folder whose single-file view is missing or is not a view a render
    wrote (a user's file, a link); with the ``manifest`` (once the shards verified against
    it), also one that is not the view of these shards (another render's, copied in)."""
    import h5py

    view = folder / VIRTUAL_FILE
    if not (view.exists() or view.is_symlink()):
        raise ValidationError(
            f"{view}, the single-file view that export and plain-h5py readers open, is missing: rerun the "
            "render command to write it (the shards are kept)"
        )
    ours = _is_our_virtual_file(view)
    if ours and manifest is not None:
        with h5py.File(view, "r") as file:
            ours = (
                int(file.attrs["num_scenes"]) == int(manifest["num_scenes"])
                and json.loads(file.attrs["checksums"]) == manifest["checksums"]
            )
    if not ours:
        raise ValidationError(
            f"{view} is not the single-file view of these shards (a user's file, a link, or another render's "
            "view): move it out of the folder, then rerun the render command to write the view"
        )
