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

from shapesgen import geometry, preset, raster
from shapesgen.build import render_dataset
from shapesgen.renderer import render_scenes, scene_rng
from shapesgen.storage.encode import encode_scenes
from shapesgen.visibility import overlay_visibility, visibility


def throughput(instances: int, workers: int, scenes: int, folder: Path) -> float:
    config = preset("paper").replace(instances_per_class=instances, layers=3, seed=0)
    start = time.perf_counter()
    render_dataset(config, folder / f"n{instances}w{workers}.h5", num_scenes=scenes, workers=workers, force=True)
    return scenes / (time.perf_counter() - start)


def stage_profile(instances: int, scenes: int = 640, batch: int = 64) -> dict[str, float]:
    """Milliseconds per scene spent in each stage of one core's work, batch by batch."""
    config = preset("paper").replace(instances_per_class=instances, layers=3, seed=0)
    keys = ["poses + rings", "polygons + clip", "visibility (boundary)", "masks", "layers", "image"]
    totals = dict.fromkeys(keys, 0.0)
    m = config.mask_size
    for start in range(0, scenes, batch):
        indices = range(start, start + batch)
        t0 = time.perf_counter()
        poses = geometry.stack_poses([geometry.sample_poses(config, scene_rng(0, i)) for i in indices])
        rings = geometry.class_rings(config, poses)
        t1 = time.perf_counter()
        geometry.clip_to_frame(geometry.polygons(rings).reshape(-1), config.image_size)
        t2 = time.perf_counter()
        visibility(rings, poses.depth, config.image_size)
        t3 = time.perf_counter()
        masks = np.concatenate(
            [
                raster.rasterize_convex(g.reshape(-1, *g.shape[-2:]), m, config.mask_scale).reshape(batch, -1, m, m)
                for g in rings
            ],
            axis=1,
        )
        t4 = time.perf_counter()
        for b in range(batch):
            raster.layer_maps(masks[b], poses.depth[b], config.layers)
        t5 = time.perf_counter()
        for b in range(batch):
            flat = [ring for group in rings for ring in group[b]]
            raster.draw_outlines(flat, poses.depth[b], config.image_size, config.outline_pixels, 1)
        t6 = time.perf_counter()
        for key, dt in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            totals[key] += dt
    whole = time.perf_counter()
    rendered = [render_scenes(config, range(start, start + batch)) for start in range(0, scenes, batch)]
    totals["render_scenes total"] = time.perf_counter() - whole
    whole = time.perf_counter()
    for group in rendered:
        encode_scenes(group, 1)
    totals["compress + hash"] = time.perf_counter() - whole
    whole = time.perf_counter()
    for index in range(0, scenes, 4):
        poses = geometry.sample_poses(config, scene_rng(0, index))
        overlay_visibility(geometry.class_rings(config, poses), poses.depth, config.image_size)
    totals["(GEOS overlays instead)"] = 4 * (time.perf_counter() - whole)
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
        print(f"\nwhere one core's time goes, N={instances}, batches of 64 (ms per scene):")
        for key, ms in stage_profile(instances).items():
            print(f"  {key:<26} {ms:6.3f}")


if __name__ == "__main__":
    main()
