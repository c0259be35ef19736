"""Training and prediction batches from a COCO-amodal export (``shapesgen export coco``).

An export folder (``annotations.json`` + ``images/``, in any of the ``coco``, ``cocoa``,
``kins`` and ``aistron`` layouts) gives the same Batch dicts as the HDF5 file it came
from (:func:`amodal_model.data.hdf5_batches`): the same keys, dtypes, shapes and, for a
given seed and epoch, the same order. Images are the exported PNGs. The layer targets
(``layers``, at mask size) are rebuilt from what the export holds:

1. the layer PNGs (``layers_png``), when each mask pixel's sample point is the centre of
   an exported pixel (an odd number of image pixels per mask pixel, or the same size):
   exact, instances with no visible pixel included;
2. otherwise the amodal masks in depth order (``depth``, or the COCOA ``order``), with
   ``layer k`` = the k-th instance from the front at each mask pixel:

   - a polygon is rasterised at mask size by the HDF5 file's pixel-centre rule: exact,
     except that written vertices are rounded to 1e-4 px, so a sample point closer than
     that to an edge can fall on the other side (2 pixels in 200 paper scenes);
   - an RLE mask at image size is sampled at the mask pixels' sample points: exact for
     an odd scale; for an even one (the paper's 4) a sample point is the corner between
     four exported pixels and is decided by convexity (inside when three of them are, or
     two diagonal ones) or, for two neighbouring ones, by the 8 x 8 pixels around it:
     about 1% of the labelled layer pixels, all on boundaries, differ from the source's;
   - an export without ``include_hidden`` lacks the instances with no visible pixel, so
     its deeper layers show the instance behind where the source has a hidden one.

   Layer PNGs at an even scale are not used: they cannot be sampled exactly either.

:func:`describe_coco_export` gives one note when the targets are not exact, saying why
(:func:`open_coco_export` issues it as a :class:`~shapesgen.errors.ShapesgenNote`), and
counts the images without any annotation: training refuses an export without any. An
export at ``resolution="mask"`` holds box-averaged images at mask size, which the model
(trained on the source's images) cannot use: it is refused, unless image and mask size
are equal.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

import numpy as np
from PIL import Image

from amodal_model.batching import Batch, blocked_batches
from shapesgen.coco import (
    CHECKSUMS,
    check_listed_digest,
    decode_sized,
    export_digests,
    layer_file_name,
    pad_rings,
)
from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError, DatasetError, ShapesgenNote, one_line, shown
from shapesgen.raster import layer_maps, rasterize_convex

ANNOTATIONS = "annotations.json"
CONFIG = "config.json"
CORNER_WINDOW = 8  # side of the pixel window that decides an even-scale corner sample
_MAX_GROUPS = 12  # characters in one number of a compressed RLE string (as shapesgen.coco reads them)


@dataclass(frozen=True)
class _Instance:
    instance_id: int  # 1..n: the value in the layer maps
    depth: int  # smaller = nearer; only the order within a scene matters
    segmentation: Any
    where: str  # the record, for messages


@dataclass(frozen=True)
class _Scene:
    index: int  # scene index (= image id - 1)
    image: Path
    instances: tuple[_Instance, ...]


@dataclass(frozen=True)
class _Export:
    folder: Path
    config: SceneConfig
    scenes: tuple[_Scene, ...]  # sorted by scene index
    layer_pngs: bool  # targets read from the layer PNGs (exact)
    notes: tuple[str, ...]  # why the targets are not exact (empty: exact)
    digests: dict[str, str]  # SHA256SUMS: relative name -> digest (empty: none listed)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`describe_coco_export` finds in an export, before any pixel is read."""

    config: SceneConfig
    num_scenes: int
    unannotated: int
    """Images with no instance annotated: all background as targets."""
    note: str | None
    """Why the layer targets are approximate (``None``: exact), as one line naming the export."""


def is_coco_export(path: Path) -> bool:
    """Whether ``path`` is to be read as a COCO export: a folder (an HDF5 source is a
    file; :func:`open_coco_export` says what a folder lacks) or a ``.json`` file, the
    export's ``annotations.json`` (its folder holds the images). Reads no file."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() == ".json"


def describe_coco_export(path: Path, param: str) -> ExportSummary:
    """The scene config an export records (``info.config``, or ``config.json`` beside it),
    its number of scenes and of images without annotations, and the note to give when the
    layer targets are approximate, after checking everything but the pixels.

    Raises :class:`DatasetError` (one line, starting ``param=path``) for anything that
    cannot give the source's batches. Issues no warning: the caller gives the note once
    its own checks have passed, so a refused command prints its error alone.
    """
    export = _load(path, param)
    note = None
    if export.notes:
        note = (
            f"{param}={str(path)!r}: layer targets are approximate ({'; '.join(export.notes)}); an export with "
            "segmentation='polygon' and include_hidden=True gives exact ones"
        )
    unannotated = sum(1 for scene in export.scenes if not scene.instances)
    return ExportSummary(export.config, len(export.scenes), unannotated, note)


def open_coco_export(path: Path, param: str) -> tuple[SceneConfig, int]:
    """:func:`describe_coco_export`'s scene config and number of scenes; warns with a
    :class:`ShapesgenNote` when the layer targets are rebuilt approximately (see the
    module docstring)."""
    summary = describe_coco_export(path, param)
    if summary.note is not None:
        warnings.warn(summary.note, ShapesgenNote, stacklevel=2)
    return summary.config, summary.num_scenes


def coco_batches(
    path: Path,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    limit: int | None = None,
    *,
    param: str = "train_source",
) -> Iterator[Batch]:
    """Numpy batches (image uint8, layers, class_layers, instance_classes int32, index
    int64) of an export, in the order :func:`amodal_model.data.hdf5_batches` gives its
    source for the same ``seed`` and ``epoch``. A damaged image, mask or layer PNG raises
    one :class:`DatasetError` naming it when it is met."""
    export = _load(path, param)
    scenes = export.scenes if limit is None else export.scenes[: max(limit, 0)]
    n = export.config.num_instances
    per_class = export.config.instances_per_class
    classes = np.concatenate([[0], np.repeat(np.arange(1, export.config.num_classes + 1), per_class)]).astype(np.int32)

    def read_block(start: int, stop: int) -> Batch:
        chunk = scenes[start:stop]
        layers = np.stack([_scene_layers(export, scene, path, param) for scene in chunk]).astype(np.int32)
        return {
            "image": np.stack([_image(export, scene, path, param) for scene in chunk]),
            "layers": layers,
            "class_layers": classes[layers],
            "instance_classes": np.broadcast_to(classes, (len(chunk), n + 1)).copy(),
            "index": np.array([scene.index for scene in chunk], dtype=np.int64),
        }

    return blocked_batches(len(scenes), read_block, batch_size, seed, epoch, shuffle)


# Reading the export ---------------------------------------------------------------


def _load(path: Path, param: str) -> _Export:
    """The checked export (cached per version of ``annotations.json``, ``config.json`` and
    ``SHA256SUMS``: epochs read them once)."""
    path = Path(path)
    where = f"{param}={str(path)!r}"
    file = path / ANNOTATIONS if path.is_dir() else path
    try:
        status = file.stat()
    except FileNotFoundError:
        what = f"a folder without {ANNOTATIONS}" if path.is_dir() else "missing"
        raise DatasetError(f"{where}: {what}: not a COCO export", param=param) from None
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read ({exc.strerror})", param=param) from None
    try:
        resolved = file.resolve()
        beside = tuple(_version(resolved.parent / name) for name in (CONFIG, CHECKSUMS))
        return _parse(resolved, (status.st_mtime_ns, status.st_size), beside)
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}", param=param) from None


def _version(path: Path) -> tuple[int, int] | None:
    """A file's (mtime in ns, size), or ``None`` if it is absent or unreadable: a cache key."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


def _integer(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@lru_cache(maxsize=4)
def _parse(file: Path, version: tuple[int, int], beside: tuple[tuple[int, int] | None, ...]) -> _Export:
    """The export whose ``annotations.json`` is ``file`` (its ``version`` and those of the
    files ``beside`` it key the cache)."""
    del version, beside
    if not file.is_file():
        raise DatasetError(f"{file.name} is not a file: not a COCO export")
    folder = file.parent
    digests = export_digests(folder)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{file.name} cannot be read ({exc.strerror})") from None
    check_listed_digest(file.name, raw, digests)
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSON syntax, not UTF-8, huge numbers, deep nesting
        raise DatasetError(f"{file.name} is not readable JSON ({one_line(exc, 120)})") from None
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DatasetError(f"{file.name} is not a COCO file (needs 'images' and 'annotations' lists)")
    if not isinstance(document.get("annotations"), list):
        raise DatasetError(f"{file.name} is not a COCO file (needs 'images' and 'annotations' lists)")
    info: dict[str, Any] = document["info"] if isinstance(document.get("info"), dict) else {}
    config = _config(info, folder, digests)
    images = _images(document["images"], folder, config)
    records = _records(document["annotations"], images, config)
    scale = config.mask_scale
    layers_png = _has_layer_pngs(info, folder, min(images))
    layer_pngs = layers_png and scale % 2 == 1
    notes: list[str] = []
    scenes = []
    missing = False
    for index in sorted(images):
        instances = tuple(sorted(records.get(index, []), key=lambda i: i.instance_id))
        missing = missing or 0 < len(instances) < config.num_instances  # an image without any: not annotated
        scenes.append(_Scene(index, images[index], instances))
    if not layer_pngs:
        for scene in scenes:
            for instance in scene.instances:
                if instance.depth < 0:
                    raise DatasetError(f"{instance.where}: no depth order ('depth', or the COCOA 'order')")
        rle = any(isinstance(i.segmentation, dict) for s in scenes for i in s.instances)
        if rle and scale % 2 == 0:
            notes.append(
                f"RLE masks at {config.image_size} px are sampled at {config.mask_size} px, {scale} px per mask "
                "pixel: boundary pixels are estimated"
            )
        if missing:
            notes.append("instances with no visible pixel are not exported (include_hidden=False)")
    return _Export(folder, config, tuple(scenes), layer_pngs, tuple(notes), digests)


def _config(info: dict[str, Any], folder: Path, digests: dict[str, str]) -> SceneConfig:
    """The generator config of ``info.config``, or of ``config.json`` beside the annotations."""
    recorded = info.get("config")
    path = folder / CONFIG
    beside = None
    if path.is_file():
        try:
            raw = path.read_bytes()
            check_listed_digest(CONFIG, raw, digests)
            beside = json.loads(raw)
        except (OSError, ValueError, RecursionError) as exc:
            raise DatasetError(f"{CONFIG} is not readable JSON ({one_line(exc, 120)})") from None
    if recorded is None and beside is None:
        raise DatasetError(
            f"records no generator config (info.config in {ANNOTATIONS}, or {CONFIG} beside it): the layer "
            "targets need its classes, instances per class, layers and mask size"
        )
    if recorded is not None and beside is not None and recorded != beside:
        raise DatasetError(f"info.config in {ANNOTATIONS} differs from {CONFIG}: which one made the data is unknown")
    data = recorded if recorded is not None else beside
    if not isinstance(data, dict):
        raise DatasetError(f"the generator config must be a JSON object, got {type(data).__name__}")
    try:
        return SceneConfig.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise DatasetError(f"the generator config is invalid ({one_line(exc, 160)})") from None


def _images(images: list[Any], folder: Path, config: SceneConfig) -> dict[int, Path]:
    """Scene index -> image file, for images at the config's image size that exist."""
    if not images:
        raise DatasetError("images is empty: there is nothing to train on")
    size = config.image_size
    found: dict[int, Path] = {}
    for i, image in enumerate(images):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            raise DatasetError(f"{where} must be an object")
        image_id, name = image.get("id"), image.get("file_name")
        if not _integer(image_id) or image_id < 1:
            raise DatasetError(f"{where}: id must be an integer >= 1 (scene index + 1), got {shown(image_id)}")
        index = image_id - 1
        if "scene_index" in image and image["scene_index"] != index:
            raise DatasetError(f"{where}: scene_index {shown(image['scene_index'])} is not id - 1 = {index}")
        if index in found:
            raise DatasetError(f"{where}: id {image_id} repeats an earlier image's")
        if (image.get("height"), image.get("width")) != (size, size):
            extent = f"{shown(image.get('height'), 20)}x{shown(image.get('width'), 20)}"
            raise DatasetError(
                f"{where} is {extent} px, the config's image_size is {size}: "
                + (
                    f"an export at mask resolution (`export coco --resolution mask`) holds box-averaged "
                    f"{config.mask_size} px images and the model needs the source's {size} px ones; export it with "
                    "`--resolution image`"
                    if image.get("height") == config.mask_size
                    else "not images of this dataset"
                )
            )
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{where}: file_name must be a non-empty string")
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or "\\" in name:
            raise DatasetError(f"{where}: file_name {shown(name)} must be a path inside the export folder")
        file = folder / relative
        if not file.is_file():
            what = "is missing" if not file.exists() else "is not a file (a folder or device)"
            raise DatasetError(f"{where}: image {shown(name)} {what}")
        found[index] = file
    return found


def _records(annotations: list[Any], images: dict[int, Path], config: SceneConfig) -> dict[int, list[_Instance]]:
    """Per scene index, its exported instances (flat annotations or COCOA regions), checked
    against the config: instance ids 1..n once each, classes in class-major order."""
    n, per_class = config.num_instances, config.instances_per_class
    scenes: dict[int, list[_Instance]] = {}
    seen: set[tuple[int, int]] = set()
    for i, annotation in enumerate(annotations):
        where = f"annotations[{i}]"
        if not isinstance(annotation, dict):
            raise DatasetError(f"{where} must be an object")
        if "regions" in annotation:  # COCOA: one record per image, regions front to back
            regions = annotation["regions"]
            if not isinstance(regions, list):
                raise DatasetError(f"{where}: regions must be a list")
            items = [(f"{where}.regions[{j}]", region, annotation.get("image_id")) for j, region in enumerate(regions)]
        else:
            items = [(where, annotation, annotation.get("image_id"))]
        for place, record, image_id in items:
            if not isinstance(record, dict):
                raise DatasetError(f"{place} must be an object")
            if not _integer(image_id) or image_id - 1 not in images:
                raise DatasetError(f"{place}: image_id {shown(image_id)} is not an image id")
            index = image_id - 1
            instance_id = record.get("instance_id")
            if instance_id is None and _integer(record.get("id")):  # COCOA regions: id = index * n + instance id
                instance_id = record["id"] - index * n
            if not _integer(instance_id) or not 1 <= instance_id <= n:
                raise DatasetError(
                    f"{place}: instance id {shown(instance_id)} is not in 1..{n} (the config's instances)"
                )
            if (index, instance_id) in seen:
                raise DatasetError(f"{place}: instance {instance_id} of image {image_id} appears twice")
            seen.add((index, instance_id))
            expected = (instance_id - 1) // per_class + 1
            if record.get("category_id") != expected:
                raise DatasetError(
                    f"{place}: category_id {shown(record.get('category_id'))} is not {expected}, the class of instance "
                    f"{instance_id} in the config (class-major order): the export is not of this config"
                )
            depth = record.get("depth", record.get("order", -1))
            if not _integer(depth) or depth < -1:
                raise DatasetError(f"{place}: depth order {shown(depth)} must be an integer >= 0")
            segmentation = next(
                (record[k] for k in ("segmentation", "a_segm", "amodal_segm") if k in record and record[k] is not None),
                None,
            )
            if segmentation is None:
                raise DatasetError(f"{place}: no amodal mask ('segmentation', 'a_segm' or 'amodal_segm')")
            scenes.setdefault(index, []).append(_Instance(int(instance_id), int(depth), segmentation, place))
    for index, instances in scenes.items():
        depths = [i.depth for i in instances if i.depth >= 0]
        if len(set(depths)) != len(depths):
            raise DatasetError(f"image_id {index + 1}: two of its instances have the same depth order")
    return scenes


def _has_layer_pngs(info: dict[str, Any], folder: Path, first: int) -> bool:
    """Whether the export has layer PNGs (its options say so, or the first scene's exists)."""
    options = info.get("export")
    if isinstance(options, dict) and "layers_png" in options:
        return options["layers_png"] is True
    return (folder / layer_file_name(first, 1)).is_file()


# Pixels ---------------------------------------------------------------------------


def _png(export: _Export, file: Path, size: int, modes: tuple[str, ...], what: str) -> np.ndarray:
    """The pixels of a PNG of ``size`` x ``size`` in one of ``modes``, checked against the
    export's ``SHA256SUMS`` when it lists the file."""
    try:
        data = file.read_bytes()
        check_listed_digest(file.relative_to(export.folder).as_posix(), data, export.digests)
        with Image.open(io.BytesIO(data)) as png:
            if png.format != "PNG" or png.mode not in modes or png.size != (size, size):
                raise DatasetError(
                    f"{what} {file.name} is a {png.format} {png.mode} {png.size[0]}x{png.size[1]} image, "
                    f"expected a {size}x{size} PNG ({' or '.join(modes)})"
                )
            return np.asarray(png)
    except FileNotFoundError:
        raise DatasetError(f"{what} {file.name} is missing") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's errors for damaged files
        raise DatasetError(f"{what} {file.name} cannot be decoded ({one_line(exc, 120)})") from None


def _image(export: _Export, scene: _Scene, path: Path, param: str) -> np.ndarray:
    """Scene image ``(S, S, C)`` uint8 from its PNG."""
    config = export.config
    modes = ("L",) if config.channels == 1 else ("RGB",)
    try:
        pixels = _png(export, scene.image, config.image_size, modes, "image")
    except DatasetError as exc:
        raise DatasetError(f"{param}={str(path)!r}: scene {scene.index}: {exc}", param=param) from None
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _scene_layers(export: _Export, scene: _Scene, path: Path, param: str) -> np.ndarray:
    """Layer maps ``(L, M, M)`` of one scene (ids 1..n, 0 = none)."""
    try:
        if export.layer_pngs:
            return _png_layers(export, scene)
        return _mask_layers(export.config, scene)
    except DatasetError as exc:
        raise DatasetError(f"{param}={str(path)!r}: scene {scene.index}: {exc}", param=param) from None


def _png_layers(export: _Export, scene: _Scene) -> np.ndarray:
    """The exported layer PNGs sampled at the mask pixels' centres (odd scale: exact)."""
    config = export.config
    scale, offset = config.mask_scale, config.mask_scale // 2
    maps = np.stack(
        [
            _png(
                export,
                export.folder / layer_file_name(scene.index, k),
                config.image_size,
                ("I;16", "I", "L"),
                "layer PNG",
            )
            for k in range(1, config.layers + 1)
        ]
    )[:, offset::scale, offset::scale]
    worst = int(maps.max(initial=0))
    if worst > config.num_instances or int(maps.min(initial=0)) < 0:
        raise DatasetError(f"layer PNGs hold instance id {worst}, beyond the config's {config.num_instances} instances")
    return maps


def _mask_layers(config: SceneConfig, scene: _Scene) -> np.ndarray:
    """Layer maps from the exported amodal masks in depth order (see the module docstring)."""
    n, m, size, scale = config.num_instances, config.mask_size, config.image_size, config.mask_scale
    amodal = np.zeros((n, m, m), dtype=bool)
    depth = np.arange(n, dtype=np.int64) + n  # instances not exported: empty masks, any depth
    rings: list[np.ndarray] = []
    ring_owner: list[int] = []
    rles: list[_Instance] = []
    for instance in scene.instances:
        depth[instance.instance_id - 1] = instance.depth
        polygons = _polygons(instance.segmentation, size, instance.where)
        if polygons is None:
            rles.append(instance)
        else:
            rings.extend(polygons)
            ring_owner.extend([instance.instance_id - 1] * len(polygons))
    if rings:
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rings])])
        drawn = rasterize_convex(pad_rings(np.concatenate(rings), offsets), m, float(scale))
        np.logical_or.at(amodal, np.array(ring_owner), drawn)
    if rles:
        masks = decode_rles([i.segmentation for i in rles], size, [i.where for i in rles])
        amodal[np.array([i.instance_id - 1 for i in rles])] = sample_masks(masks, scale)
    return layer_maps(amodal, depth, config.layers)


def _polygons(segmentation: Any, size: int, where: str) -> list[np.ndarray] | None:
    """The rings ``(k, 2)`` of a polygon segmentation (COCO ``[[x, y, ...], ...]`` or one flat
    COCOA ``[x, y, ...]``), ``None`` for an RLE; checked: numbers, pairs, finite, near the frame."""
    if not isinstance(segmentation, list):
        return None
    if segmentation and not isinstance(segmentation[0], list):
        segmentation = [segmentation]
    bound = 4 * size
    rings = []
    for k, polygon in enumerate(segmentation):
        ok = isinstance(polygon, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and -bound <= v <= bound for v in polygon
        )
        if not ok or len(polygon) % 2 or len(polygon) < 6:
            raise DatasetError(
                f"{where}: polygon {k} must be an even number (>= 6) of finite coordinates within +-{bound}"
            )
        rings.append(np.asarray(polygon, dtype=np.float64).reshape(-1, 2))
    return rings


def decode_rles(rles: list[Any], size: int, wheres: list[str]) -> np.ndarray:
    """Boolean masks ``(k, size, size)`` of COCO RLEs, compressed strings decoded together.

    Checked as :func:`shapesgen.coco.rle_runs` checks one (characters, whole numbers,
    runs that are non-negative and fill exactly ``size`` x ``size``), in a few vectorised
    passes over all strings instead of a Python loop per character: a bad one raises
    :class:`DatasetError` naming its record (``wheres[i]``). Other forms (uncompressed
    counts) go through :func:`shapesgen.coco.decode_segmentation`. The result is a
    transposed view (COCO masks are column-major).
    """
    pixels = size * size
    out = np.empty((len(rles), size, size), dtype=bool)
    fast: list[int] = []
    texts: list[bytes] = []
    for k, (rle, where) in enumerate(zip(rles, wheres, strict=True)):
        counts = rle.get("counts") if isinstance(rle, dict) else None
        if isinstance(counts, str) and counts.isascii() and rle.get("size") == [size, size]:
            fast.append(k)
            texts.append(counts.encode("ascii"))
            continue
        out[k] = decode_sized(rle, size, size, where, "mask")
    if not fast:
        return out

    def refuse(strings: np.ndarray, problem: str) -> DatasetError:
        return DatasetError(f"{wheres[fast[int(np.flatnonzero(strings)[0])]]}: segmentation counts {problem}")

    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    count = len(texts)
    groups = np.frombuffer(b"".join(texts), np.uint8).astype(np.int64) - 48
    char_owner = np.repeat(np.arange(count), lengths)
    bad = (groups < 0) | (groups > 63)
    if bad.any():
        raise refuse(np.isin(np.arange(count), char_owner[bad]), "must be characters '0'..'o'")
    ends = np.cumsum(lengths) - 1
    filled = lengths > 0
    truncated = np.zeros(count, dtype=bool)
    truncated[filled] = groups[ends[filled]] >= 32
    if truncated.any():
        raise refuse(truncated, "end in the middle of a number (truncated string)")
    last = np.flatnonzero(groups < 32)  # the last group of each number; numbers never span two strings
    first = np.concatenate(([0], last[:-1] + 1)) if last.size else last
    span = last - first + 1
    owner = char_owner[last]
    if span.size and span.max() > _MAX_GROUPS:
        raise refuse(
            np.isin(np.arange(count), owner[span > _MAX_GROUPS]), f"hold a number of over {_MAX_GROUPS} characters"
        )
    shift = 5 * (np.arange(groups.size) - np.repeat(first, span))
    values = np.add.reduceat((groups & 0x1F) << shift, first) if span.size else np.zeros(0, np.int64)
    negative = groups[last] >= 16
    values[negative] -= np.left_shift(1, 5 * span[negative])
    beyond = np.abs(values) > pixels  # no valid difference is; this also bounds the sums below
    if beyond.any():
        raise refuse(np.isin(np.arange(count), owner[beyond]), f"hold a number beyond height x width = {pixels}")
    numbers = np.bincount(owner, minlength=count)
    position = np.arange(values.size) - np.repeat(np.cumsum(numbers) - numbers, numbers)
    runs = values.copy()
    for parity in (0, 1):  # from the fourth on, a run is the difference to the run two before
        chain = np.flatnonzero((position >= 1) & (position % 2 == parity))
        if chain.size:
            total = np.cumsum(values[chain])
            before = total - values[chain]
            starts = np.r_[True, owner[chain][1:] != owner[chain][:-1]]
            runs[chain] = total - before[np.maximum.accumulate(np.where(starts, np.arange(chain.size), 0))]
    if runs.size and runs.min() < 0:
        raise refuse(np.isin(np.arange(count), owner[runs < 0]), "hold a negative run length")
    sums = np.bincount(owner, weights=runs, minlength=count)
    if np.any(sums != pixels):
        raise refuse(sums != pixels, f"do not sum to height x width = {size}x{size} = {pixels}")
    flat = np.repeat(position % 2 == 1, runs)
    out[fast] = np.swapaxes(flat.reshape(count, size, size), 1, 2)
    return out


def sample_masks(masks: np.ndarray, scale: int) -> np.ndarray:
    """Masks ``(k, S, S)`` at image size -> ``(k, S/scale, S/scale)``, each mask pixel
    sampled at its centre, as the HDF5 file's masks are.

    For an odd ``scale`` that centre is the centre of an image pixel: exact. For an even
    one it is the corner of four image pixels. A convex shape holds the corner when it
    holds three of them or two diagonal ones (the corner is their midpoint) and, almost
    always, not when it holds one or none. With two neighbouring ones (an edge runs
    between them), the corner is taken as inside when at least half of the
    :data:`CORNER_WINDOW` x :data:`CORNER_WINDOW` pixels around it are.
    """
    if scale % 2:
        offset = scale // 2
        return masks[:, offset::scale, offset::scale]
    half = scale // 2
    tl, tr = masks[:, half - 1 :: scale, half - 1 :: scale], masks[:, half - 1 :: scale, half::scale]
    bl, br = masks[:, half::scale, half - 1 :: scale], masks[:, half::scale, half::scale]
    count = tl.astype(np.int8) + tr + bl + br
    diagonal = (tl & br) | (tr & bl)
    inside = (count >= 3) | diagonal
    which, row, col = np.nonzero((count == 2) & ~diagonal)
    if which.size:
        w, size = CORNER_WINDOW // 2, masks.shape[1]
        offsets = np.arange(-w, w)
        rows, cols = (row * scale + half)[:, None] + offsets, (col * scale + half)[:, None] + offsets
        held = masks[
            which[:, None, None], np.clip(rows, 0, size - 1)[:, :, None], np.clip(cols, 0, size - 1)[:, None, :]
        ]
        held &= ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
        inside[which, row, col] = held.sum(axis=(1, 2)) >= 2 * w * w
    return inside
