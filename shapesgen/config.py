"""Scene and storage configuration: frozen, keyword-only, validated once.

A :class:`SceneConfig` fully determines a dataset together with its seed: scene ``i``
is a pure function of ``(config, i)``. Configs serialise to JSON and back exactly, and
every file the package writes carries that JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shapesgen.errors import ConfigError, shown
from shapesgen.shapes import SHAPE_KINDS

AnchorMode = Literal["corner", "center"]
Engine = Literal["local", "dask"]  # how a sharded render runs its shards (shapesgen.shards)
MAX_INSTANCES_PER_SCENE = 65535
MAX_SEED = 2**63 - 1
MAX_IMAGE_SIZE = 32768  # an RGB image chunk stays under HDF5's 4 GiB chunk limit
MIN_SHAPE_SIZE = 1e-6  # smaller shapes underflow in geometry (1e-20 broke GEOS; 1e-15 still validated)
SIZE_RANGE = f"each number must be in [{MIN_SHAPE_SIZE:g}, 1], a fraction of the image side"
MAX_CIRCLE_SEGMENTS = 4096  # at 32768 px a 4096-gon circle is within 0.25 px of the true circle


def _fail(name: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(
        f"{name}={shown(value, 80)} is invalid: {allowed}", param=name if name.isidentifier() else "shapes"
    )


def parse_json(text: str | bytes, label: str) -> Any:
    """JSON from untrusted text: every way it can fail (syntax, not UTF-8, a 5,000-digit
    integer, 100,000-deep nesting) is one :class:`ConfigError`, ``<label> is not valid JSON (why)``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        reason = str(exc)
    except UnicodeDecodeError:
        reason = "not UTF-8 text"
    except ValueError as exc:  # an integer beyond Python's digit limit
        reason = "a number has more than 4300 digits" if "digits" in str(exc) else str(exc).splitlines()[0]
    except RecursionError:
        reason = "nested too deeply"
    raise ConfigError(f"{label} is not valid JSON ({reason})")


def _sequence(name: str, value: object) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise _fail(name, value, "must be a list")
    return tuple(value)


def reject_unknown_fields(cls: type, data: dict[str, Any], label: str) -> None:
    """One clear error for keys that are not fields of the dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {label} field(s) {unknown}: allowed are {sorted(known)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class ShapeSpec:
    """One shape class: its kind and its fixed size as fractions of the image side.

    ``size`` has one number for circle (diameter), triangle (side) and square (side),
    two for rectangle and ellipse (width, height before rotation).
    """

    kind: str
    size: tuple[float, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in SHAPE_KINDS:
            raise _fail("shape kind", self.kind, f"must be one of {', '.join(SHAPE_KINDS)}")
        object.__setattr__(self, "size", _sequence(f"size of {self.kind}", self.size))
        if not isinstance(self.name, str):
            raise _fail("shape name", self.name, "must be a string")
        arity = SHAPE_KINDS[self.kind].size_arity
        if len(self.size) != arity:
            what = "width and height, e.g. 0.3x0.2" if arity == 2 else "one number, e.g. 0.25"
            raise _fail(f"size of {self.kind}", self.size, f"a {self.kind} takes {what}")
        for value in self.size:
            if not _is_number(value) or not MIN_SHAPE_SIZE <= value <= 1.0:
                raise _fail(f"size of {self.kind}", self.size, SIZE_RANGE)
        if not self.name:
            object.__setattr__(self, "name", self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": list(self.size), "name": self.name}


PAPER_SHAPES: tuple[ShapeSpec, ...] = (
    ShapeSpec(kind="circle", size=(0.25,)),
    ShapeSpec(kind="triangle", size=(0.3,)),
    ShapeSpec(kind="rectangle", size=(0.1, 0.8)),
)

DEFAULT_SIZES: dict[str, tuple[float, ...]] = {
    "circle": (0.25,),
    "triangle": (0.3,),
    "rectangle": (0.1, 0.8),
    "ellipse": (0.3, 0.15),
    "square": (0.3,),
}


@dataclass(frozen=True, kw_only=True)
class SceneConfig:
    """Everything that defines a scene distribution (defaults: the paper's dataset).

    Sizes and placement are fractions of ``image_size``; rotations are in degrees.
    ``seed=None`` means "draw one": :func:`shapesgen.render_dataset` resolves it
    before rendering and records the drawn value in the file.
    """

    image_size: int = 256
    mask_size: int = 64
    shapes: tuple[ShapeSpec, ...] = PAPER_SHAPES
    instances_per_class: int = 6
    layers: int = 2
    anchor: AnchorMode = "corner"
    anchor_range: tuple[float, float] = (0.1, 0.9)
    rotation_range: tuple[float, float] = (0.0, 360.0)
    outline_width: float = 0.01
    circle_segments: int = 64
    channels: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shapes", _sequence("shapes", self.shapes))
        object.__setattr__(self, "anchor_range", _sequence("anchor_range", self.anchor_range))
        object.__setattr__(self, "rotation_range", _sequence("rotation_range", self.rotation_range))
        if not _is_int(self.image_size) or not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise _fail("image_size", self.image_size, f"must be an integer in [8, {MAX_IMAGE_SIZE}]")
        if not _is_int(self.mask_size) or not 1 <= self.mask_size <= self.image_size:
            raise _fail("mask_size", self.mask_size, f"must be an integer in [1, {self.image_size}]")
        if self.image_size % self.mask_size:
            raise _fail(
                "mask_size",
                self.mask_size,
                f"must divide image_size={self.image_size} so each mask pixel covers a whole block of image pixels",
            )
        if not self.shapes:
            raise _fail("shapes", self.shapes, "at least one shape class is needed")
        for spec in self.shapes:
            if not isinstance(spec, ShapeSpec):
                raise _fail("shapes", spec, "each entry must be a ShapeSpec")
        names = [spec.name for spec in self.shapes]
        if len(set(names)) != len(names):
            raise _fail("shapes", names, "class names must be unique")
        if not _is_int(self.instances_per_class) or self.instances_per_class < 1:
            raise _fail("instances_per_class", self.instances_per_class, "must be an integer >= 1")
        if self.num_instances > MAX_INSTANCES_PER_SCENE:
            raise _fail(
                "instances_per_class",
                self.instances_per_class,
                f"classes x instances must be <= {MAX_INSTANCES_PER_SCENE}",
            )
        if not _is_int(self.layers) or self.layers < 1:
            raise _fail("layers", self.layers, "must be an integer >= 1")
        if self.anchor not in ("corner", "center"):
            raise _fail("anchor", self.anchor, "must be 'corner' or 'center'")
        lo, hi = self._pair("anchor_range", self.anchor_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise _fail("anchor_range", self.anchor_range, "must satisfy 0 <= low <= high <= 1")
        lo, hi = self._pair("rotation_range", self.rotation_range)
        if not lo <= hi:
            raise _fail("rotation_range", self.rotation_range, "must satisfy low <= high (degrees)")
        if not _is_number(self.outline_width) or not 0.0 < self.outline_width < 0.25:
            raise _fail("outline_width", self.outline_width, "must be in (0, 0.25), a fraction of image_size")
        if not _is_int(self.circle_segments) or not 8 <= self.circle_segments <= MAX_CIRCLE_SEGMENTS:
            raise _fail("circle_segments", self.circle_segments, f"must be an integer in [8, {MAX_CIRCLE_SEGMENTS}]")
        if self.channels not in (1, 3) or not _is_int(self.channels):
            raise _fail("channels", self.channels, "must be 1 (grey) or 3 (RGB)")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED):
            raise _fail("seed", self.seed, f"must be None or an integer in [0, {MAX_SEED}]")

    @staticmethod
    def _pair(name: str, value: tuple[float, ...]) -> tuple[float, float]:
        if len(value) != 2 or not all(_is_number(v) for v in value):
            raise _fail(name, value, "must be two finite numbers (low, high)")
        return float(value[0]), float(value[1])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.shapes)

    @property
    def num_classes(self) -> int:
        return len(self.shapes)

    @property
    def num_instances(self) -> int:
        """Instances per scene: every class contributes ``instances_per_class``."""
        return self.num_classes * self.instances_per_class

    @property
    def mask_scale(self) -> int:
        """Image pixels per mask pixel along each axis."""
        return self.image_size // self.mask_size

    @property
    def outline_pixels(self) -> int:
        """Outline width in image pixels (the reference code's ``int(0.01 * S)``)."""
        return max(1, int(self.outline_width * self.image_size))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shapes"] = [spec.to_dict() for spec in self.shapes]
        data["anchor_range"] = list(self.anchor_range)
        data["rotation_range"] = list(self.rotation_range)
        return data

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), stored in every output file."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneConfig:
        reject_unknown_fields(cls, data, "config")
        values = dict(data)
        if "shapes" in values:
            values["shapes"] = tuple(_shape_spec(spec) for spec in _sequence("shapes", values["shapes"]))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> SceneConfig:
        data = parse_json(text, "config")
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> SceneConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _shape_spec(spec: object) -> ShapeSpec:
    """A ShapeSpec from a config entry (an object with ``kind``, ``size`` and optional ``name``)."""
    if isinstance(spec, ShapeSpec):
        return spec
    if not isinstance(spec, dict):
        raise _fail("shapes", spec, 'each entry must be an object like {"kind": "circle", "size": [0.25]}')
    reject_unknown_fields(ShapeSpec, spec, "shape")
    if "kind" not in spec or "size" not in spec:
        raise _fail("shapes", spec, "each entry needs 'kind' and 'size'")
    return ShapeSpec(**spec)


def shape_specs(class_names: list[str], sizes: dict[str, tuple[float, ...]] | None = None) -> tuple[ShapeSpec, ...]:
    """Shape specs for kind names, with default sizes unless ``sizes`` overrides them."""
    sizes = sizes or {}
    unknown = sorted(set(sizes) - set(class_names))
    if unknown:
        raise _fail("size", unknown, f"sizes can only be given for the chosen classes {class_names}")
    specs = []
    for name in class_names:
        if name not in SHAPE_KINDS:
            raise ConfigError(
                f"classes={shown(class_names, 80)} is invalid: class {name!r} is not one of {', '.join(SHAPE_KINDS)}",
                param="classes",
            )
        specs.append(ShapeSpec(kind=name, size=sizes.get(name, DEFAULT_SIZES[name])))
    return tuple(specs)


PresetName = Literal["paper", "rectangles", "extended"]
PRESETS: dict[str, SceneConfig] = {
    "paper": SceneConfig(),
    "rectangles": SceneConfig(shapes=(ShapeSpec(kind="rectangle", size=(0.1, 0.8)),)),
    "extended": SceneConfig(
        shapes=shape_specs(["circle", "triangle", "rectangle", "ellipse", "square"]),
        anchor="center",
        instances_per_class=3,
        layers=3,
    ),
}
PRESET_HELP: dict[str, str] = {
    "paper": "the paper's dataset: circle, triangle, rectangle at fixed sizes, 256 px images, 64 px masks",
    "rectangles": "one class of long bars (the paper's single-class capacity study)",
    "extended": "five shape kinds, centred anchors, 3 layers: a harder, more varied mix",
}


def preset(name: str) -> SceneConfig:
    """The named preset config (see ``PRESETS``)."""
    if name not in PRESETS:
        raise _fail("preset", name, f"must be one of {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """How the HDF5 file stores the data (never what the data is)."""

    compression_level: int = 2
    batch_scenes: int = 64

    def __post_init__(self) -> None:
        if not _is_int(self.compression_level) or not 0 <= self.compression_level <= 9:
            raise _fail("compression_level", self.compression_level, "must be an integer in [0, 9] (0 = none)")
        if not _is_int(self.batch_scenes) or self.batch_scenes < 1:
            raise _fail("batch_scenes", self.batch_scenes, "must be an integer >= 1")

    def to_json(self) -> str:
        return json.dumps(
            {"compression_level": self.compression_level, "batch_scenes": self.batch_scenes}, sort_keys=True
        )


def parse_pair(name: str, text: str) -> tuple[float, float]:
    """``"0.1,0.9"`` -> ``(0.1, 0.9)``, with an error naming the option."""
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise _fail(name, text, "must be two numbers 'low,high'") from None


def parse_classes(text: str) -> list[str]:
    """``"circle, triangle"`` -> ``["circle", "triangle"]`` (checked when the config is built)."""
    return [name.strip() for name in text.split(",")]


def parse_sizes(items: list[str]) -> dict[str, tuple[float, ...]]:
    """``["rectangle=0.1x0.8", "circle=0.3"]`` -> ``{"rectangle": (0.1, 0.8), ...}``."""
    sizes: dict[str, tuple[float, ...]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            if not sep:
                raise ValueError
            sizes[name] = tuple(float(v) for v in value.lower().split("x"))
        except ValueError:
            raise _fail("size", item, "must look like 'rectangle=0.1x0.8' or 'circle=0.25'") from None
        if not all(MIN_SHAPE_SIZE <= v <= 1.0 for v in sizes[name]):  # NaN fails too
            raise _fail("size", item, SIZE_RANGE)
    return sizes


def load_config(path: str | Path) -> SceneConfig:
    """A SceneConfig from a JSON file (as written next to every export)."""
    from shapesgen.files import regular_input

    path = regular_input(path, "config")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config={str(path)!r}: cannot read ({exc.strerror})", param="config") from None
    try:
        return SceneConfig.from_json(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config={str(path)!r} is not UTF-8 JSON text", param="config") from None
    except ConfigError as exc:  # a value inside the file: the file is what the caller passed
        raise ConfigError(f"config={str(path)!r}: {exc}", param="config") from None


def build_config(
    preset_name: str = "paper",
    *,
    base: SceneConfig | None = None,
    classes: list[str] | None = None,
    sizes: dict[str, tuple[float, ...]] | None = None,
    **overrides: Any,
) -> SceneConfig:
    """A preset (or ``base``) with overrides applied; ``None`` values keep what is there."""
    base = base or preset(preset_name)
    changes = {key: value for key, value in overrides.items() if value is not None}
    if classes is not None or sizes:
        names = classes if classes is not None else [spec.kind for spec in base.shapes]
        current = {spec.kind: spec.size for spec in base.shapes}
        merged = {name: current[name] for name in names if name in current}
        merged.update(sizes or {})
        changes["shapes"] = shape_specs(names, merged)
    try:
        return base.replace(**changes)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
