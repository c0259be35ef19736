"""Read shapesgen HDF5 files: a lazy, indexable view whose header is checked once at open,
and a view of a sharded dataset folder. Layout comes from :mod:`shapesgen.storage.layout`."""

from __future__ import annotations

import bisect
import dataclasses
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5s, h5t

from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError, DatasetError, one_line, shown
from shapesgen.files import partial_path
from shapesgen.limits import MAX_CHUNK_BYTES  # no scene record this package writes is larger
from shapesgen.splits import Split, split_from_json
from shapesgen.storage.layout import (
    AXIS_ROWS,
    DATASETS,
    FORMAT_NAME,
    FORMAT_VERSION,
    OFFSETS,
    PER_SCENE,
    ROOT_ATTRIBUTES,
    SHARD_FILE,
    SHARD_MANIFEST,
    SHARD_VIRTUAL,
    Scene,
)
from shapesgen.storage.manifest import check_shard_header, plan_shards, read_manifest

OFFSET_READ_BLOCK = 1 << 20  # instance offsets read and checked at a time when opening a file
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
READ_ERRORS = (OSError, RuntimeError)  # h5py's errors for stored bytes it cannot read or decode
METADATA_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)  # and for a damaged header
OPTIONAL_ATTRIBUTES = ("clean_stop", "split", "first_scene", "stopped_checksums")  # since 1.1 .. 1.3
REQUIRED_ATTRIBUTES = tuple(name for name in ROOT_ATTRIBUTES if name not in OPTIONAL_ATTRIBUTES)
TEXT_ATTRIBUTES = ("config", "storage", "class_names", "checksums", "created", "package_version")
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
VLEN_STRING_TYPES = frozenset(
    h5t.py_create(h5py.string_dtype(encoding), logical=True).encode() for encoding in ("utf-8", "ascii")
)
FIXED_TYPE_CLASSES = frozenset({h5t.INTEGER, h5t.FLOAT, h5t.ENUM, h5t.STRING, h5t.BITFIELD})


def scene_index(index: object, count: int) -> int:
    """``index`` as a position in ``count`` scenes (negative counts from the end), as a
    sequence would take it: a TypeError for a non-integer, an IndexError out of range."""
    if not isinstance(index, (int, np.integer)):
        raise TypeError(f"scene index must be an integer, got {type(index).__name__}")
    if not -count <= index < count:
        raise IndexError(f"scene {index} out of range for a dataset of {count} scenes")
    return int(index) % count


class CorruptDatasetError(DatasetError):
    """A file whose header or stored bytes break the format (damaged, truncated or tampered with).

    ``problem`` is the finding without the file name, as :func:`shapesgen.validate.validate_file`
    reports it; ``dataset`` and ``scene`` say where it is, when known.
    """

    def __init__(
        self, path: Path, problem: str, *, dataset: str | None = None, scene: int | None = None, hint: str = ""
    ) -> None:
        super().__init__(f"{path}: corrupt file: {problem}{hint}")
        self.path = path
        self.problem = problem
        self.dataset = dataset
        self.scene = scene


class DatasetView:
    """One dataset of an open file, sliced like the h5py dataset it wraps.

    A read h5py cannot complete (a damaged compressed chunk, a broken chunk index)
    raises :class:`CorruptDatasetError` naming the file, the dataset and the first
    scene that cannot be read. Shape and dtype are cached: the file is read-only.
    """

    __slots__ = ("_data", "_owner", "axis", "dtype", "name", "shape")

    def __init__(self, owner: ShapesDataset, data: h5py.Dataset, name: str, axis: str) -> None:
        self._owner = owner
        self._data = data
        self.name = name
        self.axis = axis  # "scene", "instance", "vertex", or "offset" for the offset arrays
        self.shape: tuple[int, ...] = tuple(data.shape)
        self.dtype: np.dtype = data.dtype

    def __getitem__(self, key: Any) -> Any:
        try:
            return self._data[key]
        except READ_ERRORS as exc:
            raise self._unreadable(key, exc) from None

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[Any]:
        for row in range(len(self)):
            yield self[row]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = np.asarray(self[()])
        return data if dtype is None else data.astype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def chunks(self) -> tuple[int, ...] | None:
        return self._data.chunks

    @property
    def compression(self) -> str | None:
        return self._data.compression

    def _unreadable(self, key: Any, exc: BaseException) -> CorruptDatasetError:
        """The error for a failed read: re-read the rows asked for chunk by chunk to find the bad one."""
        owner = self._owner
        rows = _rows_of(key, len(self))
        bad = self._first_bad_rows(rows)
        where = f"dataset {self.name}"
        scene = None
        if rows is not None and bad is not None:
            row = max(bad.start, min(rows))  # the first row asked for in the block that cannot be read
            scene = owner._scene_of(self.axis, row)
            where = f"dataset {self.name} row {row}" if scene is None else f"scene {scene}: dataset {self.name}"
        return CorruptDatasetError(
            owner.path,
            f"{where} cannot be read ({one_line(exc)})",
            dataset=self.name,
            scene=scene,
            hint=f"; check the file with `shapesgen validate {owner.path}`",
        )

    def _first_bad_rows(self, rows: range | None) -> range | None:
        """The first chunk-sized block of ``rows`` that cannot be read, if any."""
        if not rows:
            return None
        step = (self._data.chunks or self.shape)[0] or 1
        for start in range(min(rows) // step * step, max(rows) + 1, step):
            block = range(start, min(start + step, len(self)))
            try:
                self._data[block.start : block.stop]
            except READ_ERRORS:
                return block
        return None


def _rows_of(key: Any, length: int) -> range | None:
    """Rows along the first axis that a simple index (integer, slice, ``()``, ``...``) selects."""
    if isinstance(key, tuple):
        if not key:
            return range(length)
        key = key[0]
    if key is Ellipsis:
        return range(length)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        row = int(key) + (length if key < 0 else 0)
        return range(row, row + 1) if 0 <= row < length else None
    if isinstance(key, slice):
        return range(*key.indices(length))
    return None


class ShapesDataset:
    """A read-only view of a shapesgen HDF5 file; scenes are read on access.

    ``dataset[i]`` is a :class:`Scene`; the datasets are exposed as attributes
    (``images``, ``layers``, ...) for fast batch reads. The header (attributes,
    shapes, dtypes, instance offsets) is checked when the file is opened, so a
    damaged file fails there with one line; a damaged chunk fails the read that
    meets it with a :class:`CorruptDatasetError`.
    """

    # Every dataset of the schema is set as an attribute of its name when the file opens;
    # these annotations only tell type checkers.
    images: DatasetView
    layers: DatasetView
    class_layers: DatasetView
    amodal_masks: DatasetView
    visible_masks: DatasetView
    instances: DatasetView
    vertices: DatasetView
    vertex_offsets: DatasetView

    def __init__(self, path: str | Path, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            why = "a symbolic link to nothing (or a link loop)" if self.path.is_symlink() else "no such file"
            raise DatasetError(f"{self.path}: {why}", param="path")
        if (self.path / SHARD_MANIFEST).is_file():  # a sharded dataset: read it through its virtual-dataset file
            if not (self.path / SHARD_VIRTUAL).is_file():
                raise DatasetError(
                    f"{self.path} is a sharded dataset without its {SHARD_VIRTUAL}: rerun its render command to "
                    "write it, or read the folder with shapesgen.storage.reader.open_sharded",
                    param="path",
                )
            self.path = self.path / SHARD_VIRTUAL
        if (unfinished := unfinished_sharded_render(self.path, str(self.path), "path")) is not None:
            raise unfinished
        if self.path.is_dir():
            export = (self.path / "annotations.json").is_file()
            what, source = ("a COCO export", " (the one it was exported from)") if export else ("a folder", "")
            raise DatasetError(
                f"{self.path} is {what}, not a shapesgen dataset: give a shapesgen HDF5 file{source} or a sharded "
                "dataset's folder",
                param="path",
            )
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: not a regular file", param="path")
        try:
            self.file = h5py.File(self.path, "r")
        except METADATA_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:  # permissions, a writer's lock, the disk
                raise DatasetError(f"{self.path}: cannot open for reading ({one_line(exc)})", param="path") from None
            if has_hdf5_signature(self.path):
                raise CorruptDatasetError(self.path, f"damaged or truncated HDF5 ({one_line(exc)})") from None
            if _starts_like_json(self.path):
                raise DatasetError(
                    f"{self.path} is a JSON file (a COCO export's annotations?), not a shapesgen dataset: give the "
                    "shapesgen HDF5 file it came from",
                    param="path",
                ) from None
            raise DatasetError(f"{self.path}: not a readable HDF5 file ({one_line(exc)})", param="path") from None
        try:
            self._check_header(allow_incomplete)
        except BaseException:
            self.file.close()
            raise

    @property
    def _finish(self) -> str:
        """How to finish an unfinished render's file: a render resumes ``<out>.partial`` only."""
        name = self.path.name
        if SHARD_FILE.fullmatch(name.removesuffix(".partial")):
            return f"finish it by rerunning the sharded render command (--out {shlex.quote(str(self.path.parent))})"
        if name.endswith(".partial") and len(name) > len(".partial"):
            out = shlex.quote(str(self.path.with_name(name.removesuffix(".partial"))))
            return f"finish it by rerunning its render command with --resume --out {out}"
        partial = shlex.quote(partial_path(self.path).name)
        return (
            f"finish it by renaming it to {partial} and rerunning its render command with --resume --out "
            f"{shlex.quote(str(self.path))}"
        )

    def _corrupt(self, problem: str, dataset: str | None = None) -> CorruptDatasetError:
        return CorruptDatasetError(self.path, problem, dataset=dataset)

    def _check_header(self, allow_incomplete: bool) -> None:
        """Check every attribute, dataset shape and dtype, and the instance offsets, once."""
        attrs, unreadable = self._read_attributes()
        if "format" not in unreadable and (not isinstance(attrs.get("format"), str) or attrs["format"] != FORMAT_NAME):
            raise DatasetError(f"{self.path}: not a shapesgen dataset (attribute format != '{FORMAT_NAME}')")
        version = attrs.get("format_version")
        major = FORMAT_VERSION.split(".")[0]
        if "format_version" in attrs and (not isinstance(version, str) or version.split(".")[0] != major):
            raise DatasetError(
                f"{self.path}: format_version {shown(version, 40)} is not readable by this shapesgen (reads {major}.x)"
            )
        if unreadable:
            raise self._corrupt(next(iter(unreadable.values())))
        missing = [name for name in REQUIRED_ATTRIBUTES if name not in attrs]
        if missing:
            raise self._corrupt(f"attribute(s) {missing} missing")
        for name in TEXT_ATTRIBUTES:
            if not isinstance(attrs[name], str):
                raise self._corrupt(f"attribute {name} must be a string, not {type(attrs[name]).__name__}")
        self._attrs = attrs
        self.config = self._config(attrs["config"])
        self._check_attributes(attrs)
        if not allow_incomplete and not self._complete:
            done = f"{self._scenes} of {self._num_scenes} scenes"
            raise DatasetError(f"{self.path}: incomplete render ({done}); {self._finish}")
        views = self._open_datasets()
        self.datasets: dict[str, DatasetView] = views  # every dataset of the schema, by name
        for name, view in views.items():
            setattr(self, name, view)
        self.instance_offsets: np.ndarray = self._check_offsets(views)  # checked, in memory

    def _read_attributes(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The format's root attributes, and a problem for each that is not safe to read.

        h5py crashes the interpreter (a segmentation fault) reading a variable-length
        string attribute whose datatype message is damaged, so such types must match
        the writer's exactly; fixed-size numbers and strings are read and checked after.
        """
        attrs: dict[str, Any] = {}
        unreadable: dict[str, str] = {}
        try:
            stored = self.file.attrs
        except METADATA_ERRORS as exc:
            raise self._corrupt(f"the root group cannot be read ({one_line(exc)})") from None
        for name in ROOT_ATTRIBUTES:
            try:
                if not h5a.exists(self.file.id, name.encode()):
                    continue
                attribute = h5a.open(self.file.id, name.encode())
                kind, space = attribute.get_type(), attribute.get_space()
                variable = kind.get_class() == h5t.VLEN or (kind.get_class() == h5t.STRING and kind.is_variable_str())
                if variable:
                    safe = kind.encode() in VLEN_STRING_TYPES and space.get_simple_extent_type() == h5s.SCALAR
                else:
                    safe = kind.get_class() in FIXED_TYPE_CLASSES
                if safe:
                    attrs[name] = stored[name]
                else:
                    unreadable[name] = f"attribute {name} has an HDF5 datatype that no shapesgen file uses"
            except METADATA_ERRORS as exc:
                unreadable[name] = f"attribute {name} cannot be read ({one_line(exc)})"
        return attrs, unreadable

    def _config(self, text: str) -> SceneConfig:
        try:
            config = SceneConfig.from_json(text)
        except (ConfigError, TypeError, ValueError, RecursionError) as exc:
            raise self._corrupt(f"attribute config is not a valid SceneConfig ({one_line(exc)})") from None
        if config.seed is None:
            raise self._corrupt("attribute config has seed=None: a file records the seed it was rendered with")
        return config

    def _json(self, name: str) -> Any:
        try:
            return json.loads(self._attrs[name])
        except (ValueError, RecursionError) as exc:
            raise self._corrupt(f"attribute {name} is not JSON ({one_line(exc, 120)})") from None

    def _split(self, value: Any) -> Split | None:
        if not isinstance(value, str):
            raise self._corrupt(f"attribute split must be a string, not {type(value).__name__}")
        try:
            split = split_from_json(value)
        except ConfigError as exc:
            raise self._corrupt(f"attribute split is invalid ({one_line(exc, 200)})") from None
        if split is not None and split.seed != self.config.seed:
            raise self._corrupt(f"attribute split has seed {split.seed}, the config's seed is {self.config.seed}")
        return split

    def _integer(self, name: str) -> int:
        value = self._attrs[name]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise self._corrupt(f"attribute {name}={shown(value)} is invalid: must be an integer >= 0")
        return int(value)

    def _check_attributes(self, attrs: dict[str, Any]) -> None:
        config = self.config
        self._seed = self._integer("seed")
        if self._seed != config.seed:
            raise self._corrupt(f"attribute seed={self._seed} differs from the config's seed={config.seed}")
        names = self._json("class_names")
        expected = list(config.class_names)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise self._corrupt(f"attribute class_names={shown(names, 80)} is not a JSON list of strings")
        if len(names) != len(expected):
            raise self._corrupt(
                f"attribute class_names lists {len(names)} names, the config has {len(expected)} classes"
            )
        if names != expected:
            raise self._corrupt(f"attribute class_names={names} differs from the config's classes {expected}")
        self._class_names = names
        sums = self._json("checksums")
        if not isinstance(sums, dict) or not all(
            isinstance(value, str) and HEX_DIGEST.fullmatch(value) for value in sums.values()
        ):
            raise self._corrupt("attribute checksums is not a JSON object of hex SHA-256 digests")
        self.checksums: dict[str, str] = sums
        storage = self._json("storage")
        if not isinstance(storage, dict):
            raise self._corrupt(f"attribute storage={shown(storage)} is not a JSON object")
        self.storage: dict[str, Any] = storage
        self._num_scenes = self._integer("num_scenes")
        self._scenes = self._integer("scenes_written")
        if self._scenes > self._num_scenes:
            raise self._corrupt(f"attribute scenes_written={self._scenes} exceeds num_scenes={self._num_scenes}")
        for name in ("complete", "clean_stop"):
            if name in attrs and not isinstance(attrs[name], (bool, np.bool_)):
                raise self._corrupt(f"attribute {name}={shown(attrs[name])} is not a boolean")
        self._complete = bool(attrs["complete"])
        self.split: Split | None = self._split(attrs.get("split", "null"))
        self._first_scene = self._integer("first_scene") if "first_scene" in attrs else 0
        if self._complete and self._scenes != self._num_scenes:
            raise self._corrupt(
                f"attribute complete is true but scenes_written={self._scenes} != num_scenes={self._num_scenes}"
            )

    def _open_datasets(self) -> dict[str, DatasetView]:
        """Every dataset of the schema, wrapped, with its dtype and record shape checked."""
        axes: dict[str, str] = {f.name: f.axis for f in DATASETS} | dict.fromkeys(OFFSETS, "offset")
        views: dict[str, DatasetView] = {}
        missing = []
        for name, axis in axes.items():
            try:
                data = self.file.get(name)
                if data is None:
                    missing.append(name)
                    continue
                if not isinstance(data, h5py.Dataset):
                    raise self._corrupt(f"{name} is a {type(data).__name__}, not a dataset", name)
                views[name] = DatasetView(self, data, name, axis)
            except METADATA_ERRORS as exc:
                raise self._corrupt(f"dataset {name} cannot be opened ({one_line(exc)})", name) from None
        if missing:
            raise self._corrupt(f"dataset(s) {missing} missing")
        self._check_virtual_sources()
        for field in DATASETS:
            view, record = views[field.name], field.record_shape(self.config)
            if view.dtype != field.dtype:
                raise self._corrupt(f"dataset {field.name} has dtype {view.dtype}, expected {field.dtype}", field.name)
            if view.ndim != len(record) + 1 or view.shape[1:] != record:
                expected = ", ".join([AXIS_ROWS[field.axis], *map(str, record)])
                raise self._corrupt(
                    f"dataset {field.name} has shape {view.shape}, expected ({expected}) for the stored config",
                    field.name,
                )
            rows = field.scene_rows(self.config) if field.per_scene else 1
            nbytes = int(np.prod(record)) * field.dtype.itemsize * rows
            if nbytes > MAX_CHUNK_BYTES:
                raise self._corrupt(
                    f"dataset {field.name}: one scene's record would be {nbytes / 2**30:.1f} GiB, "
                    "over HDF5's 4 GiB chunk limit, so no render wrote it",
                    field.name,
                )
        for name in OFFSETS:
            if views[name].dtype != np.int64 or views[name].ndim != 1:
                raise self._corrupt(
                    f"dataset {name} has dtype {views[name].dtype} and shape {views[name].shape}, "
                    "expected int64 (n + 1,)",
                    name,
                )
        return views

    def _check_virtual_sources(self) -> None:
        """Every file a virtual dataset maps must exist: HDF5 would read a missing one as zeros."""
        for field in DATASETS:
            data = self.file[field.name]
            if not data.is_virtual:
                continue
            for source in data.virtual_sources():
                where = Path(source.file_name)
                where = where if where.is_absolute() or source.file_name == "." else self.path.parent / where
                if not where.is_file():
                    raise self._corrupt(f"dataset {field.name} maps {source.file_name}, which is missing", field.name)
        beside_manifest = (self.path.parent / SHARD_MANIFEST).is_file()
        if self.file["images"].is_virtual and beside_manifest:
            self._check_shards()
        elif self.path.name == SHARD_VIRTUAL and beside_manifest and _is_shard_manifest(self.path.parent):
            raise DatasetError(  # as validate and a rerun of the render find it
                f"{self.path} is not the single-file view of the shards {SHARD_MANIFEST} lists (a plain file, copied "
                "in?): move it out of the folder, then rerun the render command to write the view",
                param="path",
            )

    def _check_shards(self) -> None:
        """A sharded folder's virtual file: it and every shard it maps must be those the manifest
        lists (their recorded checksums), or a shard of another render copied over one of ours
        would be read as this dataset's scenes. Data damaged inside a shard is found on read or
        by ``shapesgen validate``, as in any file."""
        folder = self.path.parent
        manifest = read_manifest(folder)
        hint = f"; `shapesgen validate {folder}` checks every shard, and its render command renders bad ones again"
        try:
            ours = json.loads(self._attrs["checksums"])
        except ValueError:
            ours = None
        if ours != manifest["checksums"]:
            raise self._corrupt(f"its checksums are not those of {SHARD_MANIFEST} (another render's file?){hint}")
        for entry in manifest["shards"]:
            try:
                with h5py.File(folder / entry["file"], "r") as shard:
                    sums = json.loads(str(shard.attrs["checksums"]))
            except METADATA_ERRORS as exc:
                raise self._corrupt(f"shard {entry['file']} cannot be read ({one_line(exc, 160)}){hint}") from None
            if sums != entry["checksums"]:
                raise self._corrupt(
                    f"shard {entry['file']} is not the one {SHARD_MANIFEST} lists (its checksums differ: "
                    f"replaced, or from another render){hint}"
                )

    def _check_offsets(self, views: dict[str, DatasetView]) -> np.ndarray:
        """The instance offsets of the written scenes, checked against every dataset's length.

        Every scene owns ``num_instances`` instance rows. A complete file's datasets
        hold exactly the written scenes; a partial one may hold a torn tail beyond them.
        """
        n, per_scene, exact = self._scenes, self.config.num_instances, self._complete

        def check_length(name: str, needed: int, what: str) -> None:
            have = len(views[name])
            if have < needed or (exact and have != needed):
                raise self._corrupt(
                    f"dataset {name} has {have} rows, expected {needed} ({what}, scenes_written={n})", name
                )

        check_length("instance_offsets", n + 1, "one more than the scenes")
        offsets = self._read_instance_offsets(views["instance_offsets"], n + 1, per_scene)
        rows = int(offsets[-1])
        for field in PER_SCENE:
            what = "one per scene" if field.axis == "scene" else f"{per_scene} per scene"
            check_length(field.name, n * field.scene_rows(self.config), what)
        check_length("vertex_offsets", rows + 1, "one more than the instance rows")
        first, last = int(views["vertex_offsets"][0]), int(views["vertex_offsets"][rows])
        self._vertex_rows = len(views["vertices"])
        if first != 0 or not 0 <= last <= self._vertex_rows or (exact and last != self._vertex_rows):
            raise self._corrupt(
                f"dataset vertex_offsets runs from {first} to {last}, expected 0 to {self._vertex_rows} "
                "(the rows of dataset vertices)",
                "vertex_offsets",
            )
        return offsets

    def _read_instance_offsets(self, view: DatasetView, count: int, per_scene: int) -> np.ndarray:
        """The first ``count`` instance offsets, which must be ``0, k, 2k, ...`` (``k`` instances a scene).

        Read in blocks, so a length claimed by a tampered header fails at its first
        wrong block instead of allocating it all.
        """
        blocks: list[np.ndarray] = []
        for start in range(0, count, OFFSET_READ_BLOCK):
            block = view[start : min(start + OFFSET_READ_BLOCK, count)]
            wrong = np.flatnonzero(block != np.arange(start, start + len(block), dtype=np.int64) * per_scene)
            if wrong.size:
                at = start + int(wrong[0])
                if at == 0:
                    problem = f"starts at {int(block[0])}, not 0"
                else:  # every offset before it is right, so scene at - 1 starts at (at - 1) * per_scene
                    rows = int(block[wrong[0]]) - (at - 1) * per_scene
                    problem = f"gives scene {at - 1} {rows} instance rows, every scene has {per_scene}"
                raise self._corrupt(f"dataset instance_offsets {problem}", "instance_offsets")
            blocks.append(block)
        return np.concatenate(blocks)

    def _scene_of(self, axis: str, row: int) -> int | None:
        """The scene that owns ``row`` of a dataset along ``axis``, when the offsets can tell."""
        per_scene = self.config.num_instances
        if axis == "scene":
            return row
        if axis == "instance":
            return row // per_scene
        if axis == "vertex" and hasattr(self, "vertex_offsets"):
            try:
                offsets = self.vertex_offsets[:]
            except CorruptDatasetError:
                return None
            instance_row = int(np.searchsorted(offsets, row, side="right")) - 1
            return instance_row // per_scene if 0 <= instance_row < len(offsets) - 1 else None
        return None

    def check_read(self, actual: Mapping[str, str], param: str, outcome: str = "") -> None:
        """What a command read hashes (``actual``: dataset -> checksum, computed as the
        ``checksums`` attribute is) to the checksums recorded when the file was written: a
        damaged file is refused, not exported or scored. A dataset the record lacks is not
        checked; ``outcome`` says what the refusal left undone."""
        for name in sorted(actual):
            if name in self.checksums and self.checksums[name] != actual[name]:
                raise DatasetError(
                    f"{self.path}: dataset {name} does not match the checksum recorded when it was written (the "
                    f"file is damaged){outcome}: run 'shapesgen validate {self.path}' to find the scene",
                    param=param,
                )

    @property
    def attrs(self) -> dict[str, Any]:
        """The format's root attributes (those in ``schema.ROOT_ATTRIBUTES``), as checked at open."""
        return {key: self._attrs[key] for key in sorted(self._attrs)}

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def first_scene(self) -> int:
        """Index of the file's first scene: record ``j`` (``dataset[j]``, whose ``index`` is
        its position ``j``) is scene ``first_scene + j`` of the dataset, as its instance
        rows' ``scene`` column says (0 unless the file is a shard of a sharded dataset)."""
        return self._first_scene

    @property
    def num_scenes(self) -> int:
        """Scenes the render was asked for (``len`` counts those written)."""
        return self._num_scenes

    def __len__(self) -> int:
        return self._scenes

    def instance_rows(self, index: int) -> slice:
        """Rows of scene ``index`` in the per-instance datasets."""
        return slice(int(self.instance_offsets[index]), int(self.instance_offsets[index + 1]))

    def __getitem__(self, index: int) -> Scene:
        index = scene_index(index, len(self))
        rows = self.instance_rows(index)
        vertex_offsets = self.vertex_offsets[rows.start : rows.stop + 1]
        if vertex_offsets[0] < 0 or vertex_offsets[-1] > self._vertex_rows or np.any(np.diff(vertex_offsets) < 0):
            raise CorruptDatasetError(
                self.path,
                f"scene {index}: dataset vertex_offsets is not non-decreasing within [0, {self._vertex_rows}]",
                dataset="vertex_offsets",
                scene=index,
                hint=f"; check the file with `shapesgen validate {self.path}`",
            )
        vertex_rows = slice(int(vertex_offsets[0]), int(vertex_offsets[-1]))
        where = {"scene": index, "instance": rows, "vertex": vertex_rows}
        records = {field.attribute: self.datasets[field.name][where[field.axis]] for field in DATASETS}
        return Scene(index=index, vertex_offsets=vertex_offsets - vertex_offsets[0], **records)

    def __iter__(self) -> Iterator[Scene]:
        for index in range(len(self)):
            yield self[index]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ShapesDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_shard_manifest(folder: Path) -> bool:
    """Whether ``folder``'s manifest is a shapesgen shard manifest (not another program's file of that name)."""
    try:
        read_manifest(folder)
    except DatasetError:
        return False
    return True


def _starts_like_json(path: Path) -> bool:
    """Whether ``path``'s first non-blank byte opens a JSON object or array."""
    try:
        with path.open("rb") as file:
            return file.read(4096).lstrip()[:1] in (b"{", b"[")
    except OSError:
        return False


def unfinished_sharded_render(folder: Path, given: str, param: str) -> DatasetError | None:
    """The error for ``folder`` (passed as ``given``) if it is a sharded render that has not
    finished (a shard file, finished or ``.partial``, but no manifest yet), else None."""
    if not folder.is_dir() or (folder / SHARD_MANIFEST).exists():
        return None
    names = (path.name.removesuffix(".partial") for path in folder.glob("shard-*.h5*"))
    if not any(SHARD_FILE.fullmatch(name) for name in names):
        return None
    return DatasetError(
        f"{given} is an unfinished sharded render (shard files but no {SHARD_MANIFEST} yet): rerun its render "
        "command to finish it",
        param=param,
    )


def has_hdf5_signature(path: Path) -> bool:
    """Whether ``path`` starts like an HDF5 file (so a failure to open it means damage, not a foreign file)."""
    try:
        with path.open("rb") as file:
            return file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except OSError:
        return False


def not_ours(path: Path, *, empty_is_ours: bool = False) -> str | None:
    """Why shapesgen cannot have written ``path``, or ``None`` where it may have (so a render
    may resume, replace or delete it). shapesgen writes plain HDF5 files that record its
    format name; one that no longer opens is a render's cut short (a killed render leaves
    such files), and with ``empty_is_ours`` an empty file is one killed as it was created.
    Anything else (a link, a folder, a text file, another program's HDF5 file, an HDF5 file
    a program holds open, whose lock makes it unreadable) is the user's."""
    if path.is_symlink() or not path.is_file():
        return "is not a plain file"
    if empty_is_ours and path.stat().st_size == 0:
        return None
    if not has_hdf5_signature(path):
        return "is not an HDF5 file"
    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") != FORMAT_NAME:
                return "is an HDF5 file that shapesgen did not write"
    except OSError as exc:
        if "unable to lock" in str(exc).lower():  # another program holds it open: in use, whoever wrote it
            return "is an HDF5 file another program has open"
        return None  # damaged: what a render cut short leaves
    except (KeyError, ValueError, TypeError):
        return None
    return None


def open_dataset(path: str | Path, *, allow_incomplete: bool = False) -> ShapesDataset:
    """Open a shapesgen HDF5 file for reading (lazy; use as a context manager).

    Raises :class:`DatasetError` for a missing, foreign or (unless ``allow_incomplete``)
    unfinished file and :class:`CorruptDatasetError` for a damaged one.
    """
    return ShapesDataset(path, allow_incomplete=allow_incomplete)


class ShardedDataset:
    """A read-only view of a sharded dataset folder; ``dataset[i]`` is scene ``i`` (a
    :class:`Scene`, read from its shard). Shards are opened on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.config = SceneConfig.from_dict(self.manifest["config"])
        self.shards = plan_shards(int(self.manifest["num_scenes"]), int(self.manifest["shard_size"]))
        self.checksums: dict[str, str] = dict(self.manifest["checksums"])
        self._starts = [s.start for s in self.shards]
        self._open: dict[int, ShapesDataset] = {}

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    def shard(self, k: int) -> ShapesDataset:
        """Shard ``k``, opened and checked against the manifest."""
        if k not in self._open:
            spec = self.shards[k]
            ds = open_dataset(self.path / spec.file)
            try:
                check_shard_header(ds, self.config, spec, self.manifest["storage"])
            except BaseException:
                ds.close()
                raise
            self._open[k] = ds
        return self._open[k]

    def __len__(self) -> int:
        return self.shards[-1].stop

    def __getitem__(self, index: int) -> Scene:
        index = scene_index(index, len(self))
        k = bisect.bisect_right(self._starts, index) - 1
        return dataclasses.replace(self.shard(k)[index - self.shards[k].start], index=index)

    def __iter__(self) -> Iterator[Scene]:
        for index in range(len(self)):
            yield self[index]

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()

    def __enter__(self) -> ShardedDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_sharded(path: str | Path) -> ShardedDataset:
    """Open a sharded dataset folder for reading (lazy; use as a context manager)."""
    return ShardedDataset(path)
