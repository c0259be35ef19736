"""The validator accepts good files and names the first violation in tampered ones."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from shapesgen import ValidationError
from shapesgen.storage.reader import open_dataset
from shapesgen.validate import check_scene, validate_dataset


def test_a_fresh_render_validates(tiny_dataset: Path) -> None:
    with open_dataset(tiny_dataset) as ds:
        assert validate_dataset(ds, regenerate=-1) == 12


def tamper(src: Path, dst: Path, edit: Callable[[h5py.File], None]) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def flip_layer_pixel(f: h5py.File) -> None:
    layer = f["layers"][3]
    layer[1][layer[1] > 0] = 0
    f["layers"][3] = layer


def test_tampered_data_fails_the_checksum(tiny_dataset: Path, tmp_path: Path) -> None:
    bad = tamper(tiny_dataset, tmp_path / "bad.h5", flip_layer_pixel)
    with open_dataset(bad) as ds, pytest.raises(ValidationError, match="layers: SHA-256"):
        validate_dataset(ds)


def test_scene_checks_name_the_broken_invariant(tiny_dataset: Path) -> None:
    with open_dataset(tiny_dataset) as ds:
        scene = ds[3]
        broken_layer = scene.layers.copy()
        broken_layer[1][broken_layer[1] > 0] = 0
        with pytest.raises(ValidationError, match="scene 3: layer 2"):
            check_scene(type(scene)(**{**scene.__dict__, "layers": broken_layer}), ds)
        table = scene.instances.copy()
        table["occlusion_rate"][0] = 1.5
        with pytest.raises(ValidationError, match="occlusion_rate outside"):
            check_scene(type(scene)(**{**scene.__dict__, "instances": table}), ds)
        table = scene.instances.copy()
        table["depth"][0] = table["depth"][1]
        with pytest.raises(ValidationError, match="permutation"):
            check_scene(type(scene)(**{**scene.__dict__, "instances": table}), ds)
        visible = scene.visible_masks.copy()
        visible[np.argmax(scene.instances["visible_pixels"])] = False
        with pytest.raises(ValidationError, match="visible_pixels|visible masks"):
            check_scene(type(scene)(**{**scene.__dict__, "visible_masks": visible}), ds)


def test_incomplete_file_fails(tiny_dataset: Path, tmp_path: Path) -> None:
    def cut(f: h5py.File) -> None:
        f.attrs["complete"] = False
        f.attrs["scenes_written"] = 5

    bad = tamper(tiny_dataset, tmp_path / "cut.h5", cut)
    with open_dataset(bad, allow_incomplete=True) as ds, pytest.raises(ValidationError, match="scenes_written=5"):
        validate_dataset(ds)
