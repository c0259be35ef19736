"""Trained models shipped with the package, usable by name: ``predict --model NAME``.

Each lives in ``amodal_model/pretrained/<name>/``: a self-contained ``model.keras``
(architecture, data shapes, scene config and inference settings inside) and a
``MODEL_CARD.md`` (data, command, training time, metrics). :func:`package_run` makes
one from a finished training run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from amodal_model.config import InferenceConfig
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.files import MODEL_FILE

PRETRAINED = Path(__file__).parent / "pretrained"
CARD_FILE = "MODEL_CARD.md"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
INFERENCE_FIELDS = frozenset(f.name for f in dataclasses.fields(InferenceConfig))
"""The settings :func:`package_run` may change: every inference setting, none of training's."""
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
            f"run_dir={text!r} is invalid: give a run folder, a .keras file or a model name", param="run_dir"
        )
    path = Path(text)
    if path.exists() or path.is_symlink() or os.sep in text or text.endswith(".keras"):
        return path
    if text in shipped_models():
        return PRETRAINED / text
    names = ", ".join(shipped_models()) or "none installed"
    raise DatasetError(
        f"run_dir={text!r}: no such run folder or model file, and not a shipped model (shipped: {names})",
        param="run_dir",
    )


def package_run(run_dir: Path, name: str, card: str, metrics: dict[str, Any] | None = None, **inference: Any) -> Path:
    """Copy a run's model, as a self-contained :class:`LayeredEmbeddingModel`, to
    ``pretrained/<name>/`` with its model card; returns the folder.

    ``inference`` (``score=``, ``min_pixels=``, any :class:`InferenceConfig` field) changes the inference
    settings the shipped file carries. A run saved by an older ``train`` (a plain
    functional model) is rebuilt from its configs and given its weights, so the shipped
    file always carries its settings.
    """
    import keras

    from amodal_model.model import LayeredEmbeddingModel, build_model

    if not isinstance(name, str) or not NAME.fullmatch(name) or name.endswith(".keras"):
        raise ConfigError(
            f"name={name!r} is invalid: use lower-case letters, digits, '.', '_' and '-', starting with a letter "
            "or digit, not ending in .keras (predict --model NAME must read it as a name)",
            param="name",
        )
    unknown = sorted(set(inference) - INFERENCE_FIELDS)
    if unknown:
        raise ConfigError(
            f"{unknown[0]}= is invalid here: a shipped model's training settings are fixed; only "
            + ", ".join(sorted(INFERENCE_FIELDS))
            + " may change",
            param=unknown[0],
        )
    from amodal_model.predict import load_run

    model, config, scene = load_run(run_dir)
    if inference:
        config = config.replace(inference=inference)
    if inference or not isinstance(model, LayeredEmbeddingModel) or model.scene_config is None:
        from amodal_model.model import DataSpec

        rebuilt = build_model(config.replace(model={"backbone_weights": None}), DataSpec.from_scene(scene), scene)
        rebuilt.set_weights(model.get_weights())
        model = rebuilt
    target = PRETRAINED / name
    with tempfile.TemporaryDirectory(dir=PRETRAINED.parent) as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        keras.saving.save_model(model, staged / MODEL_FILE)
        make_reproducible(staged / MODEL_FILE)
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


def make_reproducible(path: Path) -> None:
    """Rewrite a ``.keras`` zip, in place, without what changes between two saves of the
    same model (the save date in ``metadata.json``, the entries' times), so a saved file
    (and the checksum on a shipped model's card) depends on the weights and configs only.
    ``path`` is a file not yet published (a staged or partial one): it is rewritten whole."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    rewritten = io.BytesIO()
    with zipfile.ZipFile(rewritten, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            if name == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    path.write_bytes(rewritten.getvalue())
