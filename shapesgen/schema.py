"""The HDF5 record schema, declared once.

Writers, readers, the validator and ``docs/format.md`` all derive from these
declarations. Bump ``FORMAT_VERSION`` whenever a layout or an ordering rule changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from shapesgen.config import SceneConfig

FORMAT_NAME = "shapesgen-hdf5"
FORMAT_VERSION = "1.3"

Axis = Literal["scene", "instance", "vertex"]


@dataclass(frozen=True)
class Column:
    """One column of the per-instance table."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    meaning: str


INSTANCE_COLUMNS: tuple[Column, ...] = (
    Column("scene", "int64", (), "index of the scene this instance belongs to"),
    Column("id", "uint16", (), "instance id in masks and layers: index within the scene + 1"),
    Column("class_id", "uint8", (), "class: index into the `class_names` attribute + 1"),
    Column("depth", "uint16", (), "depth rank, 0 = front-most; drawn back to front"),
    Column("anchor_x", "float64", (), "sampled anchor x, image pixels"),
    Column("anchor_y", "float64", (), "sampled anchor y, image pixels"),
    Column("angle", "float64", (), "sampled rotation, degrees clockwise on screen (unused for circles)"),
    Column("area", "float64", (), "amodal area inside the frame, image pixels², exact from geometry"),
    Column("visible_area", "float64", (), "visible area (amodal minus everything in front), exact"),
    Column("occlusion_rate", "float64", (), "(area - visible_area) / area, in [0, 1], from geometry"),
    Column("truncation", "float64", (), "fraction of the whole shape outside the image frame"),
    Column("bbox", "float64", (4,), "amodal box (x, y, w, h), image pixels, exact"),
    Column("visible_bbox", "float64", (4,), "visible box (x, y, w, h), image pixels; zeros if hidden"),
    Column("amodal_pixels", "int32", (), "amodal mask pixels at mask resolution"),
    Column("visible_pixels", "int32", (), "visible mask pixels at mask resolution"),
    Column("pixel_occlusion_rate", "float64", (), "occlusion rate from mask pixels (1 if no amodal pixel)"),
    Column("is_visible", "bool", (), "visible_pixels > 0: counts as an instance for evaluation"),
)

INSTANCE_DTYPE = np.dtype([(c.name, c.dtype, c.shape) for c in INSTANCE_COLUMNS])


@dataclass(frozen=True)
class DatasetField:
    """One HDF5 dataset: its axis, per-record shape, dtype and meaning."""

    name: str
    axis: Axis
    dtype: np.dtype
    shape_doc: str
    meaning: str

    def record_shape(self, config: SceneConfig) -> tuple[int, ...]:
        """Shape of one record along the dataset's first axis."""
        s, m, n_layers = config.image_size, config.mask_size, config.layers
        return {
            "images": (s, s, config.channels),
            "layers": (n_layers, m, m),
            "class_layers": (n_layers, m, m),
            "amodal_masks": (m, m),
            "visible_masks": (m, m),
            "instances": (),
            "vertices": (2,),
        }[self.name]


DATASETS: tuple[DatasetField, ...] = (
    DatasetField(
        "images",
        "scene",
        np.dtype("uint8"),
        "(scenes, S, S, C)",
        "rendered image: 255 background and fills, 0 outlines",
    ),
    DatasetField(
        "layers",
        "scene",
        np.dtype("uint16"),
        "(scenes, L, M, M)",
        "layer k = id of the k-th instance from the top at each mask pixel, 0 = none",
    ),
    DatasetField(
        "class_layers",
        "scene",
        np.dtype("uint8"),
        "(scenes, L, M, M)",
        "class_id of the instance in `layers`, 0 = background",
    ),
    DatasetField(
        "amodal_masks",
        "instance",
        np.dtype("bool"),
        "(instances, M, M)",
        "full extent of each instance at mask resolution",
    ),
    DatasetField(
        "visible_masks",
        "instance",
        np.dtype("bool"),
        "(instances, M, M)",
        "visible part of each instance (equals layer 1 == id)",
    ),
    DatasetField("instances", "instance", INSTANCE_DTYPE, "(instances,)", "per-instance table, columns below"),
    DatasetField(
        "vertices",
        "vertex",
        np.dtype("float64"),
        "(vertices, 2)",
        "exterior ring (x, y) of each amodal polygon clipped to the frame, image pixels",
    ),
)
OFFSETS: dict[str, tuple[Axis, Axis, str]] = {
    "instance_offsets": ("scene", "instance", "scene i owns instance rows instance_offsets[i]:instance_offsets[i+1]"),
    "vertex_offsets": ("instance", "vertex", "instance row j owns vertex rows vertex_offsets[j]:vertex_offsets[j+1]"),
}
FIELDS: dict[str, DatasetField] = {f.name: f for f in DATASETS}

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
        "Generated from `shapesgen/schema.py` by `python -m shapesgen.schema`; do not edit by hand.",
        "",
        "Shapes use S = `image_size`, C = `channels`, M = `mask_size`, L = `layers`.",
        "Conventions: instance id = index within its scene + 1, 0 = background; depth 0 = front;",
        "class_id = index into `class_names` + 1; masks are `[instances, M, M]` and layers",
        "`[L, M, M]`; image coordinates are pixels, origin top-left, y down.",
        "Every dataset is chunked per scene (per-instance data in chunks of one scene's",
        "instances) and gzip-compressed, so plain h5py reads it without this package.",
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
