"""Render throughput: scenes/s for the paper preset, HDF5 write included.

    python benchmarks/bench_render.py [--scenes 2000]

Prints one row per (N, workers) and a per-stage profile of one core's time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely

from shapesgen import geometry, preset, raster, render_scene
from shapesgen.render import render_batch, render_dataset
from shapesgen.scene import scene_rng


def throughput(instances: int, workers: int, scenes: int, folder: Path) -> float:
    config = preset("paper").replace(instances_per_class=instances, layers=3, seed=0)
    start = time.perf_counter()
    render_dataset(config, folder / f"n{instances}w{workers}.h5", num_scenes=scenes, workers=workers, force=True)
    return scenes / (time.perf_counter() - start)


def stage_profile(instances: int, scenes: int = 300) -> dict[str, float]:
    """Milliseconds per scene spent in each stage of ``render_scene`` (one core)."""
    config = preset("paper").replace(instances_per_class=instances, layers=3, seed=0)
    totals = dict.fromkeys(["poses+rings", "clip", "visible geometry", "masks", "layers", "image"], 0.0)
    for index in range(scenes):
        t0 = time.perf_counter()
        poses = geometry.sample_poses(config, scene_rng(0, index))
        rings = geometry.class_rings(config, poses)
        t1 = time.perf_counter()
        amodal = geometry.clip_to_frame(geometry.polygons(rings), config.image_size)
        t2 = time.perf_counter()
        geometry.visible_geometry(amodal, poses.depth)
        shapely.area(amodal)
        t3 = time.perf_counter()
        masks = np.concatenate([raster.rasterize_convex(g, config.mask_size, config.mask_scale) for g in rings])
        t4 = time.perf_counter()
        raster.layer_maps(masks, poses.depth, config.layers)
        t5 = time.perf_counter()
        raster.draw_outlines([r for g in rings for r in g], poses.depth, config.image_size, 2, 1)
        t6 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            totals[key] += dt
    whole = time.perf_counter()
    for index in range(scenes):
        render_scene(config, index)
    totals["render_scene total"] = time.perf_counter() - whole
    whole = time.perf_counter()
    for start in range(0, scenes, 64):
        render_batch(config, start, min(start + 64, scenes), 1)
    totals["render + stack batches"] = time.perf_counter() - whole
    return {key: 1e3 * value / scenes for key, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=2000)
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}, scenes per run: {args.scenes}, paper preset, 3 layers, gzip 1")
    print(f"{'N/class':>8} {'workers':>8} {'scenes/s':>10} {'per worker':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for instances in (6, 12):
            for workers in (1, 2):
                rate = throughput(instances, workers, args.scenes, Path(tmp))
                print(f"{instances:>8} {workers:>8} {rate:>10.0f} {rate / workers:>11.0f}")
    for instances in (6, 12):
        print(f"\nwhere one core's time goes, N={instances} (ms per scene):")
        for key, ms in stage_profile(instances).items():
            print(f"  {key:<24} {ms:6.3f}")


if __name__ == "__main__":
    main()
