"""shapesgen: occlusion scenes with exact amodal ground truth and N-layer masks."""

from shapesgen.config import PRESETS, SceneConfig, ShapeSpec, StorageConfig, preset
from shapesgen.errors import ConfigError, DatasetError, ShapesgenError, ValidationError
from shapesgen.renderer import render_scene, render_scenes
from shapesgen.storage.layout import Scene
from shapesgen.storage.reader import ShapesDataset, open_dataset

__version__ = "0.1.0"

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
