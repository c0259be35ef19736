"""The HDF5 layout, declared once: datasets, instance columns, root attributes, chunking
and the names of a sharded dataset's files.

The encoder, writer, reader, the validator and ``docs/format.md`` all derive from these
declarations. Bump ``FORMAT_VERSION`` whenever a layout or an ordering rule changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from shapesgen.config import SceneConfig
from shapesgen.files import SHARDED_MARKER

FORMAT_NAME = "shapesgen-hdf5"
FORMAT_VERSION = "1.3"
VERTEX_CHUNK = 4096  # rows of a vertex-axis dataset's chunk
OFFSET_CHUNK = 1024  # rows of an offset array's chunk
SHARD_MANIFEST = SHARDED_MARKER  # names a sharded dataset's folder (shapesgen.storage.manifest)
SHARD_VIRTUAL = "dataset.h5"  # its shards as one file of virtual datasets
SHARD_FILE = re.compile(r"shard-\d{5,}\.h5")  # a shard's name (Shard.file)

Axis = Literal["scene", "instance", "vertex"]
AXIS_ROWS: dict[str, str] = {"scene": "scenes", "instance": "instances", "vertex": "vertices"}  # rows along each


@dataclass(frozen=True)
class Column:
    """One column of the per-instance table; ``rounded`` columns are exact geometry that
    another shapesgen version may compute by another exact method, equal up to rounding."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    meaning: str
    rounded: bool = False


INSTANCE_COLUMNS: tuple[Column, ...] = (
    Column("scene", "int64", (), "index of the scene this instance belongs to"),
    Column("id", "uint16", (), "instance id in masks and layers: index within the scene + 1"),
    Column("class_id", "uint8", (), "class: index into the `class_names` attribute + 1"),
    Column("depth", "uint16", (), "depth rank, 0 = front-most; drawn back to front"),
    Column("anchor_x", "float64", (), "sampled anchor x, image pixels"),
    Column("anchor_y", "float64", (), "sampled anchor y, image pixels"),
    Column("angle", "float64", (), "sampled rotation, degrees clockwise on screen (unused for circles)"),
    Column("area", "float64", (), "amodal area inside the frame, image pixels², exact from geometry"),
    Column("visible_area", "float64", (), "visible area (amodal minus everything in front), exact", rounded=True),
    Column("occlusion_rate", "float64", (), "(area - visible_area) / area, in [0, 1], from geometry", rounded=True),
    Column("truncation", "float64", (), "fraction of the whole shape outside the image frame"),
    Column("bbox", "float64", (4,), "amodal box (x, y, w, h), image pixels, exact"),
    Column("visible_bbox", "float64", (4,), "visible box (x, y, w, h), image pixels; zeros if hidden", rounded=True),
    Column("amodal_pixels", "int32", (), "amodal mask pixels at mask resolution"),
    Column("visible_pixels", "int32", (), "visible mask pixels at mask resolution"),
    Column("pixel_occlusion_rate", "float64", (), "occlusion rate from mask pixels (1 if no amodal pixel)"),
    Column("is_visible", "bool", (), "visible_pixels > 0: counts as an instance for evaluation"),
)

INSTANCE_DTYPE = np.dtype([(c.name, c.dtype, c.shape) for c in INSTANCE_COLUMNS])


def instance_table(columns: Mapping[str, ArrayLike], shape: tuple[int, ...]) -> np.ndarray:
    """The per-instance table of ``shape`` from one array per declared column.

    Every column of ``INSTANCE_COLUMNS`` must be given, and no other: a column
    declared but never filled fails here instead of being stored as zeros.
    """
    declared = [c.name for c in INSTANCE_COLUMNS]
    missing = [name for name in declared if name not in columns]
    unknown = [name for name in columns if name not in declared]
    if missing or unknown:
        raise ValueError(f"instance columns missing {missing}, undeclared {unknown}: fill exactly INSTANCE_COLUMNS")
    table = np.zeros(shape, dtype=INSTANCE_DTYPE)
    for name, values in columns.items():
        table[name] = values
    return table


@dataclass(frozen=True)
class Scene:
    """One scene's record: what the renderer makes and a reader returns. Each array is the
    attribute a ``DATASETS`` field stores (see ``docs/format.md``); ``index`` is the scene's
    position and ``vertex_offsets`` indexes its ``vertices`` by instance."""

    index: int
    image: np.ndarray  # (S, S, C) uint8
    layers: np.ndarray  # (L, M, M) uint16
    class_layers: np.ndarray  # (L, M, M) uint8
    amodal_masks: np.ndarray  # (n, M, M) bool
    visible_masks: np.ndarray  # (n, M, M) bool
    instances: np.ndarray  # (n,) INSTANCE_DTYPE
    vertices: np.ndarray  # (V, 2) float64
    vertex_offsets: np.ndarray  # (n + 1,) int64, local to this scene


DIMENSIONS: dict[str, str] = {"S": "image_size", "C": "channels", "M": "mask_size", "L": "layers"}


@dataclass(frozen=True)
class DatasetField:
    """One HDF5 dataset: the :class:`Scene` attribute it stores, its axis,
    the shape of one record (``DIMENSIONS`` symbols or integers), its dtype and meaning.

    Records along the ``scene`` axis are one per scene; along ``instance``, ``num_instances``
    per scene (the scene's attribute stacks them); along ``vertex``, as many as the scene's
    ``vertex_offsets`` say. Writers, readers and the validator loop over ``DATASETS``.
    """

    name: str
    attribute: str
    axis: Axis
    dtype: np.dtype
    record: tuple[str | int, ...]
    meaning: str

    def record_shape(self, config: SceneConfig) -> tuple[int, ...]:
        """Shape of one record along the dataset's first axis."""
        return tuple(d if isinstance(d, int) else int(getattr(config, DIMENSIONS[d])) for d in self.record)

    @property
    def per_scene(self) -> bool:
        """Whether a scene owns a fixed number of rows (stored as one chunk per scene)."""
        return self.axis != "vertex"

    def scene_rows(self, config: SceneConfig) -> int:
        """Rows one scene owns: 1 along ``scene``, ``num_instances`` along ``instance``."""
        if self.axis == "vertex":
            raise ValueError(f"dataset {self.name}: a scene's vertex rows vary, see vertex_offsets")
        return 1 if self.axis == "scene" else config.num_instances

    @property
    def shape_doc(self) -> str:
        """The dataset's shape as ``docs/format.md`` writes it, e.g. ``(scenes, S, S, C)``."""
        return f"({', '.join([AXIS_ROWS[self.axis], *map(str, self.record)])}{',' if not self.record else ''})"


DATASETS: tuple[DatasetField, ...] = (
    DatasetField(
        "images",
        "image",
        "scene",
        np.dtype("uint8"),
        ("S", "S", "C"),
        "rendered image: 255 background and fills, 0 outlines",
    ),
    DatasetField(
        "layers",
        "layers",
        "scene",
        np.dtype("uint16"),
        ("L", "M", "M"),
        "layer k = id of the k-th instance from the top at each mask pixel, 0 = none",
    ),
    DatasetField(
        "class_layers",
        "class_layers",
        "scene",
        np.dtype("uint8"),
        ("L", "M", "M"),
        "class_id of the instance in `layers`, 0 = background",
    ),
    DatasetField(
        "amodal_masks",
        "amodal_masks",
        "instance",
        np.dtype("bool"),
        ("M", "M"),
        "full extent of each instance at mask resolution",
    ),
    DatasetField(
        "visible_masks",
        "visible_masks",
        "instance",
        np.dtype("bool"),
        ("M", "M"),
        "visible part of each instance (equals layer 1 == id)",
    ),
    DatasetField("instances", "instances", "instance", INSTANCE_DTYPE, (), "per-instance table, columns below"),
    DatasetField(
        "vertices",
        "vertices",
        "vertex",
        np.dtype("float64"),
        (2,),
        "exterior ring (x, y) of each amodal polygon clipped to the frame, image pixels",
    ),
)
OFFSETS: dict[str, tuple[Axis, Axis, str]] = {
    "instance_offsets": ("scene", "instance", "scene i owns instance rows instance_offsets[i]:instance_offsets[i+1]"),
    "vertex_offsets": ("instance", "vertex", "instance row j owns vertex rows vertex_offsets[j]:vertex_offsets[j+1]"),
}
FIELDS: dict[str, DatasetField] = {f.name: f for f in DATASETS}
PER_SCENE: tuple[DatasetField, ...] = tuple(f for f in DATASETS if f.per_scene)  # one chunk per scene each

ROOT_ATTRIBUTES: dict[str, str] = {
    "format": f"always '{FORMAT_NAME}'",
    "format_version": f"layout version, currently '{FORMAT_VERSION}'",
    "package_version": "shapesgen version that wrote the file",
    "config": "the full SceneConfig as canonical JSON (seed included)",
    "storage": "the StorageConfig as JSON (compression, batching)",
    "seed": "the seed every scene was derived from: scene i uses default_rng([seed, i])",
    "class_names": "JSON list; class_id k is class_names[k - 1]",
    "num_scenes": "scenes the render was asked for",
    "scenes_written": "scenes complete in the file (equals num_scenes once complete)",
    "complete": "true once every scene is written and checksums are set",
    "clean_stop": "false while a render writes the file, true once it closed it (finished, or stopped by "
    "Ctrl-C or an error); a partial file left false was killed hard, and --resume re-renders its "
    "scenes to find the prefix that is intact (since 1.1)",
    "created": "UTC time the render started, ISO 8601",
    "checksums": "JSON {dataset: hex SHA-256}, set on completion: for offsets, of the array's bytes; "
    "for every other dataset, of the concatenated 32-byte SHA-256 digests of each scene's slice "
    "(C-order bytes), in scene order, so workers hash in parallel",
    "stopped_checksums": "only in a partial file stopped cleanly: the checksums (as above) of the scenes "
    "it holds; --resume re-hashes them and, where a byte changed since, re-renders to find the intact "
    "prefix (since 1.3)",
    "split": "JSON: null, or the split the file holds, {name, base_seed, seed, dataset, version}: the "
    "config's seed is seed = split_seed(base_seed, name) (first 63 bits of SHA-256 of "
    "'shapesgen-split/<base_seed>/<name>'); dataset and version name a registered dataset, else null "
    "(since 1.2)",
    "first_scene": "present in a shard of a sharded dataset (see docs/scaling.md): record j holds scene "
    "first_scene + j of the dataset, whose index the instances' scene column holds and whose rng is "
    "default_rng([seed, first_scene + j]); absent means 0 (since 1.3)",
}


def format_markdown() -> str:
    """``docs/format.md``, generated from the declarations above."""
    lines = [
        "# HDF5 format (`shapesgen-hdf5` " + FORMAT_VERSION + ")",
        "",
        "Generated from `shapesgen/storage/layout.py` by `python -m shapesgen.storage.layout`; do not edit by hand.",
        "",
        "Shapes use " + ", ".join(f"{symbol} = `{name}`" for symbol, name in DIMENSIONS.items()) + ".",
        "Conventions: instance id = index within its scene + 1, 0 = background; depth 0 = front;",
        "class_id = index into `class_names` + 1; masks are `[instances, M, M]` and layers",
        "`[L, M, M]`; image coordinates are pixels, origin top-left, y down.",
        "Every per-scene dataset is chunked per scene (per-instance data in chunks of one scene's",
        f"instances), `vertices` in chunks of {VERTEX_CHUNK} rows and the offset arrays in chunks of",
        f"{OFFSET_CHUNK}. All but the offsets are gzip-compressed at the storage's `compression_level`",
        "(0: stored uncompressed), written as zlib streams by zlib-ng, which any gzip filter reads;",
        "so plain h5py reads every dataset without this package.",
        "",
        "## Datasets",
        "",
        "| name | shape | dtype | meaning |",
        "|---|---|---|---|",
    ]
    for f in DATASETS:
        dtype = "compound (see below)" if f.dtype.names else str(f.dtype)
        lines.append(f"| `{f.name}` | `{f.shape_doc}` | {dtype} | {f.meaning} |")
    for name, (_, _, meaning) in OFFSETS.items():
        lines.append(f"| `{name}` | `(n + 1,)` | int64 | {meaning} |")
    lines += ["", "## `instances` columns", "", "| column | dtype | meaning |", "|---|---|---|"]
    for c in INSTANCE_COLUMNS:
        dtype = c.dtype + (str(list(c.shape)) if c.shape else "")
        lines.append(f"| `{c.name}` | {dtype} | {c.meaning} |")
    lines += ["", "## Root attributes", "", "| attribute | meaning |", "|---|---|"]
    for name, meaning in ROOT_ATTRIBUTES.items():
        lines.append(f"| `{name}` | {meaning} |")
    lines += [
        "",
        "## Reading without shapesgen",
        "",
        "```python",
        "import json",
        "",
        "import h5py",
        "",
        'with h5py.File("data.h5", "r") as f:',
        '    config = json.loads(f.attrs["config"])',
        '    lo, hi = f["instance_offsets"][i : i + 2]',
        '    image, layers = f["images"][i], f["layers"][i]',
        '    table = f["instances"][lo:hi]  # numpy structured array',
        '    amodal = f["amodal_masks"][lo:hi]  # [instances, M, M] bool',
        '    ids = table["id"]  # values used in layers',
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_markdown(), end="")
