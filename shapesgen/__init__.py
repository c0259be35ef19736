"""shapesgen: occlusion scenes with exact amodal ground truth and N-layer masks.

The public names below are imported on first use (PEP 562), so that ``python -m shapesgen``
reaches the command line's signal handling before NumPy, shapely and h5py load: a Ctrl-C
during start-up is then one line, not a traceback.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shapesgen.config import PRESETS, SceneConfig, ShapeSpec, StorageConfig, preset
    from shapesgen.errors import ConfigError, DatasetError, ShapesgenError, ValidationError
    from shapesgen.renderer import render_scene, render_scenes
    from shapesgen.storage.layout import Scene
    from shapesgen.storage.reader import ShapesDataset, open_dataset

__version__ = "0.1.0"

_HOMES = {
    "PRESETS": "shapesgen.config",
    "SceneConfig": "shapesgen.config",
    "ShapeSpec": "shapesgen.config",
    "StorageConfig": "shapesgen.config",
    "preset": "shapesgen.config",
    "ConfigError": "shapesgen.errors",
    "DatasetError": "shapesgen.errors",
    "ShapesgenError": "shapesgen.errors",
    "ValidationError": "shapesgen.errors",
    "render_scene": "shapesgen.renderer",
    "render_scenes": "shapesgen.renderer",
    "Scene": "shapesgen.storage.layout",
    "ShapesDataset": "shapesgen.storage.reader",
    "open_dataset": "shapesgen.storage.reader",
}

__all__ = [
    "PRESETS",
    "ConfigError",
    "DatasetError",
    "Scene",
    "ShapesDataset",
    "SceneConfig",
    "ShapeSpec",
    "ShapesgenError",
    "StorageConfig",
    "ValidationError",
    "__version__",
    "open_dataset",
    "preset",
    "render_scene",
    "render_scenes",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'shapesgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
