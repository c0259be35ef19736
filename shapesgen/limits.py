"""Resource limits checked before a render starts, so that an impossible request is
refused with one line instead of failing minutes later (``MemoryError``, an h5py
chunk error, a full disk) with a half-written file.

Every figure here is an estimate from the config alone; the constants are
documented in ``docs/renderer.md`` (Limits).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError
from shapesgen.files import existing_ancestor
from shapesgen.shapes import SHAPE_KINDS
from shapesgen.storage.layout import DATASETS

MAX_CHUNK_BYTES = 2**32 - 1  # HDF5's limit on one chunk
BATCH_BYTES = 256 * 2**20  # a rendering batch's records stay below this (batches shrink for big scenes)
PAIR_BYTES = 160  # working bytes per (edge, polygon) pair in the visibility pass (measured: ~150)
MASK_WORK_BYTES = 24  # working bytes per instance mask pixel (rasteriser, layer ranks)
IMAGE_WORK_BYTES = 4  # working bytes per image byte (PIL drawing, copies)
DISK_MARGIN = 1.05  # free space needed over the estimated file size
FILE_OVERHEAD_BYTES = 64 * 2**10  # HDF5 header, attributes and chunk indexes of a file, beyond its scenes (~50 KiB)
WRITE_HEADROOM_BYTES = 64 * 2**10  # free space a write needs beyond its bytes (the metadata it updates)


def _fail(param: str, value: object, reason: str) -> ConfigError:
    return ConfigError(f"{param}={value!r} is too large: {reason}", param=param)


def edges_per_scene(config: SceneConfig) -> int:
    """Polygon sides in one scene, plus the frame's four."""
    sides = sum(len(SHAPE_KINDS[spec.kind].template(config.circle_segments)) for spec in config.shapes)
    return sides * config.instances_per_class + 4


def record_bytes(config: SceneConfig) -> dict[str, int]:
    """Uncompressed bytes of one scene's record (one HDF5 chunk) in each per-scene dataset."""
    rows = {"scene": 1, "instance": config.num_instances}
    sizes = {}
    for field in DATASETS:
        if field.axis == "vertex":
            continue
        sizes[field.name] = rows[field.axis] * int(np.prod(field.record_shape(config))) * field.dtype.itemsize
    return sizes


def scene_working_bytes(config: SceneConfig) -> int:
    """Estimated peak memory to render one scene (the visibility pass is quadratic in instances)."""
    n, m, s = config.num_instances, config.mask_size, config.image_size
    return (
        PAIR_BYTES * edges_per_scene(config) * n
        + MASK_WORK_BYTES * n * m * m
        + IMAGE_WORK_BYTES * s * s * config.channels
        + sum(record_bytes(config).values())
    )


def available_memory() -> int:
    """Memory this process may use: MemAvailable on Linux, else physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 2**34


def size_text(value: float) -> str:
    """A byte count in the unit that shows it (``3.2 GiB``, ``180.0 KiB``, ``1000 bytes``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value / 2**10:.1f} KiB" if value >= 2**10 else f"{int(value)} bytes"


def free_bytes(folder: Path) -> int | None:
    """Free space for this user in ``folder`` (or its nearest existing parent); ``None`` if unknown."""
    try:
        return shutil.disk_usage(existing_ancestor(folder)).free
    except OSError:
        return None


def check_scene_fits(config: SceneConfig, workers: int = 1) -> None:
    """Refuse a config whose scenes cannot be stored in HDF5 chunks or rendered in memory."""
    for name, size in record_bytes(config).items():
        if size > MAX_CHUNK_BYTES:
            param = {"images": "image_size", "layers": "layers", "class_layers": "layers"}.get(
                name, "instances_per_class"
            )
            raise _fail(
                param,
                getattr(config, param),
                f"one scene's {name} record would be {size_text(size)}, over HDF5's 4 GiB chunk limit",
            )
    need, have = scene_working_bytes(config) * workers, available_memory()
    if need > have:
        raise ConfigError(
            f"this config needs about {size_text(need)} of memory to render "
            f"({workers} worker(s) x one scene: {config.num_instances} instances, image_size={config.image_size}, "
            f"mask_size={config.mask_size}, layers={config.layers}, circle_segments={config.circle_segments}); "
            f"{size_text(have)} is available: lower them or the number of workers",
            param="workers" if workers > 1 and need / workers <= have else "instances_per_class",
        )


def batch_scenes_for(config: SceneConfig, batch_scenes: int) -> int:
    """A batch size whose records stay within ``BATCH_BYTES`` (never below one scene)."""
    per_scene = sum(record_bytes(config).values())
    return max(1, min(batch_scenes, BATCH_BYTES // max(per_scene, 1)))


class DiskSpaceError(ConfigError):
    """Too little free disk space for a render; ``detail`` says what is needed and what is free."""

    def __init__(self, message: str, *, detail: str = "", param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.detail = detail


def check_disk(folder: Path, num_scenes: int, bytes_per_scene: float, asked: int | None = None, files: int = 1) -> None:
    """Refuse a render whose estimated size exceeds the free space in ``folder`` (or its
    nearest existing parent): ``num_scenes`` scenes still to write, in ``files`` files (each
    with its HDF5 metadata), of the ``asked`` (default: the same) that the caller's
    ``num_scenes`` named."""
    free = free_bytes(folder)
    if free is None:
        return
    need = num_scenes * bytes_per_scene * DISK_MARGIN + files * FILE_OVERHEAD_BYTES
    if need > free:
        asked = num_scenes if asked is None else asked
        what = "is too large" if asked == num_scenes else f"leaves {num_scenes} scenes to render, which is too much"
        detail = (
            f"about {size_text(need)} needed ({bytes_per_scene / 1024:.1f} KiB per scene, measured on one scene), "
            f"{size_text(free)} free in {folder}"
        )
        raise DiskSpaceError(
            f"num_scenes={asked} {what} for the free disk space: {detail}", detail=detail, param="num_scenes"
        )
