"""Regenerate the golden files (run only when the format or generator changes on purpose).

python tests/golden/make_golden.py
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py

from shapesgen import SceneConfig, preset
from shapesgen.build import render_dataset

HERE = Path(__file__).parent

if __name__ == "__main__":
    tiny = SceneConfig(image_size=64, mask_size=32, instances_per_class=3, layers=3, seed=11)
    # tiny.h5 (3 scenes of this config) is a file of format 1.0, kept to check that files of an
    # earlier release still read and validate: it is never rewritten.
    render_dataset(tiny, HERE / "schema.h5", num_scenes=12, force=True)
    with h5py.File(HERE / "schema.h5", "r") as f:
        layout = {
            name: {
                "shape": list(f[name].shape),
                "dtype": f[name].dtype.descr if f[name].dtype.names else str(f[name].dtype),
            }
            for name in sorted(f)
        }
        golden = {"attributes": sorted(f.attrs), "datasets": layout}
    (HERE / "schema.h5").unlink()
    (HERE / "schema_tiny.json").write_text(json.dumps(golden, indent=1) + "\n")
    pinned = {
        "tiny": (tiny, 12),
        "paper6": (preset("paper").replace(layers=3, seed=5), 8),
        "extended": (preset("extended").replace(instances_per_class=4, seed=7), 8),
    }
    sums = {}
    for name, (config, count) in pinned.items():
        path = render_dataset(config, HERE / f"pinned-{name}.h5", num_scenes=count, force=True)  # not tiny.h5
        with h5py.File(path, "r") as f:
            sums[name] = {
                "config": json.loads(f.attrs["config"]),
                "num_scenes": count,
                "checksums": json.loads(f.attrs["checksums"]),
            }
        path.unlink()
    (HERE / "checksums.json").write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
