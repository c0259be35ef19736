"""Trained models shipped with the package, usable by name: ``predict --model NAME``.

Each lives in ``amodal_model/pretrained/<name>/``: a self-contained ``model.keras``
(architecture, data shapes, scene config and inference settings inside) and a
``MODEL_CARD.md`` (data, command, training time, metrics). :func:`package_run` makes
one from a finished training run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shapesgen.errors import ConfigError, DatasetError

PRETRAINED = Path(__file__).parent / "pretrained"
MODEL_FILE = "model.keras"
CARD_FILE = "MODEL_CARD.md"
MAX_SHIPPED_BYTES = 10 * 1024 * 1024
"""A shipped model must stay small: the repository carries it."""


def shipped_models() -> list[str]:
    """Names of the trained models shipped with the package."""
    if not PRETRAINED.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED.iterdir() if (p / MODEL_FILE).is_file())


def resolve_model(spec: str | os.PathLike[str]) -> Path:
    """A run folder, a ``.keras`` file, or the name of a shipped model, as a path."""
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"model={text!r} is invalid: give a run folder, a .keras file or a model name", param="run_dir"
        )
    path = Path(text)
    if path.exists() or path.is_symlink() or os.sep in text or text.endswith(".keras"):
        return path
    if text in shipped_models():
        return PRETRAINED / text
    names = ", ".join(shipped_models()) or "none installed"
    raise DatasetError(
        f"model={text!r}: no such run folder or model file, and not a shipped model (shipped: {names})",
        param="run_dir",
    )


def package_run(
    run_dir: Path, name: str, card: str, metrics: dict[str, Any] | None = None, **inference: Any
) -> Path:
    """Copy a run's model, as a self-contained :class:`LayeredEmbeddingModel`, to
    ``pretrained/<name>/`` with its model card; returns the folder.

    ``inference`` (``score=``, ``bandwidth=``, ``min_pixels=``) changes the inference
    settings the shipped file carries. A run saved by an older ``train`` (a plain
    functional model) is rebuilt from its configs and given its weights, so the shipped
    file always carries its settings.
    """
    import keras

    from amodal_model.model import LayeredEmbeddingModel, build_model
    from amodal_model.predict import load_run

    model, config, scene = load_run(run_dir)
    if inference:
        config = config.replace(**inference)
    if inference or not isinstance(model, LayeredEmbeddingModel) or model.scene_config is None:
        from amodal_model.model import DataSpec

        rebuilt = build_model(config.replace(backbone_weights=None), DataSpec.from_scene(scene), scene)
        rebuilt.set_weights(model.get_weights())
        model = rebuilt
    target = PRETRAINED / name
    with tempfile.TemporaryDirectory(dir=PRETRAINED.parent) as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        keras.saving.save_model(model, staged / MODEL_FILE)
        size = (staged / MODEL_FILE).stat().st_size
        if size > MAX_SHIPPED_BYTES:
            raise DatasetError(
                f"{name}: the model is {size} bytes, over the {MAX_SHIPPED_BYTES} a shipped model may be"
            )
        digest = hashlib.sha256((staged / MODEL_FILE).read_bytes()).hexdigest()
        (staged / CARD_FILE).write_text(card.rstrip() + f"\n\nSHA-256 of `{MODEL_FILE}`: `{digest}`\n")
        if metrics is not None:
            (staged / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        PRETRAINED.mkdir(exist_ok=True)
        staged.rename(target)
    return target
