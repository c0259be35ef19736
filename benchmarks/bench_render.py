"""Render throughput against the paper's reference generator, measured in one run.

    python benchmarks/bench_render.py [--scenes 2000] [--reference PATH] [--reference-scenes K]
        [--sharded-scenes K] [--no-dask]

Paper preset, 3 layers, HDF5 written (default storage: zlib-ng level 2), N = 6 and 12 instances per class. Rows:

* ``reference``: ``shapes.py`` of the paper's public code, imported from ``PATH``, a
  checkout of github.com/yanfengliu/layered_embeddings (nothing of it is copied here), on
  the paper's settings (S = 256, 64 px ground truth, classes 1-3, N per class): its
  training generator (``get_new_shapes`` + ``get_image_from_shapes``, 2-layer ground
  truth) and its N-layer one (``get_n_layer_gt_from_shapes`` with amodal masks, as
  ``FULL_GT`` gives them), ``K`` scenes each (default: ``--scenes``). Imports that this
  path never calls are stubbed (``cv2``, ``keras``); ``utils`` is the checkout's own
  ``utils.py`` cut down to the functions ``shapes.py`` imports (the rest needs the model).
* ``local``: ``render_dataset`` with 1 and 2 worker processes, one file.
* ``local sharded`` and ``dask``: ``render_sharded`` into 8 shards with 2 processes, one
  after another on this machine, then on a Dask ``LocalCluster`` of 2 workers; ``overhead``
  is Dask's wall time over the local sharded one's (and over one file's, 2 processes).
  ``--sharded-scenes`` renders more scenes in these rows, to amortise the cluster's start-up.

Every measurement runs in a fresh process. ``scenes/s`` is wall time; ``per CPU-s`` divides
the scenes by the CPU time of that process and its workers (``getrusage``), the rate of one
busy core whatever else the machine runs; ``peak MiB`` is the largest resident set of one
worker (the process itself when it renders alone). ``x ref`` compares per-CPU-second rates
with the reference's training generator at the same N. Then where one core's CPU time goes,
stage by stage, as the renderer runs them.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from shapesgen import geometry, preset, raster
from shapesgen.build import render_dataset
from shapesgen.renderer import render_scenes, scene_rng
from shapesgen.shards import Engine, render_sharded
from shapesgen.storage.encode import encode_scenes
from shapesgen.visibility import overlay_visibility, visibility

REFERENCE_STUBS = ("cv2", "keras", "keras.utils")  # imported by shapes.py, never called on the scene path
REFERENCE_UTILS = ("consecutive_integer", "totuple", "add_xy", "normalize")  # what shapes.py takes from utils
SHARDS = 8


@dataclass(frozen=True)
class Usage:
    """What one measured run took."""

    wall: float  # s
    cpu: float  # s, the process and its reaped workers
    peak_mib: float  # the largest resident set of one worker


def measure(job: Callable[..., object], *args: Any) -> Usage:
    """Run ``job(*args)`` in a fresh process and report its wall time, CPU time and peak memory."""
    return in_fresh_process(_usage, job, args)


def in_fresh_process(job: Callable[..., Any], *args: Any) -> Any:
    """``job(*args)`` in a fresh, non-daemonic process (one that may start a LocalCluster)."""
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    process = multiprocessing.get_context("spawn").Process(target=_returned, args=(send, job, args))
    process.start()
    send.close()
    result = receive.recv()
    process.join()
    if isinstance(result, BaseException):
        raise result
    return result


def _returned(send: Connection, job: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        send.send(job(*args))
    except BaseException as exc:  # reported by the parent
        send.send(exc)


def _usage(job: Callable[..., object], args: tuple[Any, ...]) -> Usage:
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    job(*args)
    wall = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before, strict=True))
    workers = after[1].ru_maxrss if after[1].ru_maxrss > before[1].ru_maxrss else 0  # KiB; 0: none ran
    return Usage(wall=wall, cpu=cpu, peak_mib=(workers or after[0].ru_maxrss) / 1024)


def paper(instances: int) -> Any:
    return preset("paper").replace(instances_per_class=instances, layers=3, seed=0)


def local_render(instances: int, workers: int, scenes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        render_dataset(paper(instances), Path(tmp) / "out.h5", num_scenes=scenes, workers=workers)


def sharded_render(instances: int, engine: Engine, scenes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        size = max(1, -(-scenes // SHARDS))
        render_sharded(
            paper(instances), Path(tmp) / "out", num_scenes=scenes, shard_size=size, engine=engine, workers=2
        )


def running_cluster_render(instances: int, scenes: int) -> float:
    """Wall seconds of a sharded render on a Dask cluster that is already running (started
    as shapesgen starts a LocalCluster, warmed by one small render first): the engine's
    cost without the cluster's start-up, as a user with a cluster pays it."""
    import dask
    import distributed

    from shapesgen.engines import LOCAL_CLUSTER_CONFIG

    with dask.config.set(LOCAL_CLUSTER_CONFIG), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, dashboard_address=None, silence_logs=logging.CRITICAL
            ) as cluster,
            tempfile.TemporaryDirectory() as tmp,
        ):
            config, size = paper(instances), max(1, -(-scenes // SHARDS))
            render_sharded(
                config,
                Path(tmp) / "warm",
                num_scenes=2 * SHARDS,
                shard_size=2,
                engine="dask",
                scheduler=cluster.scheduler_address,
            )
            start = time.perf_counter()
            render_sharded(
                config,
                Path(tmp) / "out",
                num_scenes=scenes,
                shard_size=size,
                engine="dask",
                scheduler=cluster.scheduler_address,
            )
            return time.perf_counter() - start


def load_reference(checkout: Path) -> types.ModuleType:
    """The reference's ``shapes.py`` from ``checkout``, with the stubs the module docstring lists."""
    utils_path = checkout / "utils.py"
    tree = ast.parse(utils_path.read_text())
    kept: list[ast.stmt] = [
        node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in REFERENCE_UTILS
    ]
    utils = types.ModuleType("utils")
    vars(utils)["np"] = np
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(utils_path), "exec"), vars(utils))
    stubs = {name: types.ModuleType(name) for name in REFERENCE_STUBS}
    vars(stubs["keras.utils"])["to_categorical"] = None
    vars(stubs["keras"])["utils"] = stubs["keras.utils"]
    sys.modules.update({"utils": utils, **stubs})
    spec = importlib.util.spec_from_file_location("reference_shapes", checkout / "shapes.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"--reference {checkout}: no shapes.py there")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_render(checkout: Path, instances: int, scenes: int, n_layer: bool) -> None:
    """``scenes`` scenes of the reference generator with the paper's settings."""
    shapes = load_reference(checkout)
    params = types.SimpleNamespace(
        SIDE=256, DOWNSAMPLE_RESOLUTION=64, NUM_SHAPE_PER_CLASS=instances, CLASS_IDS=[1, 2, 3], FULL_GT=n_layer
    )
    draw = shapes.get_n_layer_gt_from_shapes if n_layer else shapes.get_image_from_shapes
    np.random.seed(0)
    for _ in range(scenes):
        draw(params, shapes.get_new_shapes(params))


def row(
    what: str, instances: int, workers: int, scenes: int, usage: Usage, note: str = "", *, reaped: bool = True
) -> None:
    """One table row; ``reaped=False``: the workers were not this process's reaped children
    (a LocalCluster's fork from a fork server), so their CPU time and memory are unknown here."""
    cpu, peak = (f"{scenes / usage.cpu:>9.1f}", f"{usage.peak_mib:>9.0f}") if reaped else (f"{'-':>9}", f"{'-':>9}")
    print(
        f"{what:<28} {instances:>3} {workers:>7} {scenes:>7} {scenes / usage.wall:>9.1f} {cpu} {peak}  {note}",
        flush=True,
    )


def stage_profile(instances: int, scenes: int = 640, batch: int = 64) -> dict[str, float]:
    """CPU milliseconds per scene in each stage of one core's work, as ``render_scenes`` runs them."""
    config = paper(instances)
    keys = ["poses + rings", "polygons + clip", "visibility (boundary)", "masks", "layers", "image"]
    totals = dict.fromkeys(keys, 0.0)
    m = config.mask_size
    for start in range(0, scenes, batch):
        indices = range(start, start + batch)
        t0 = time.process_time()
        poses = geometry.stack_poses([geometry.sample_poses(config, scene_rng(0, i)) for i in indices])
        rings = geometry.class_rings(config, poses)
        t1 = time.process_time()
        geometry.clip_to_frame(geometry.polygons(rings).reshape(-1), config.image_size)
        t2 = time.process_time()
        visibility(rings, poses.depth, config.image_size)
        t3 = time.process_time()
        masks = np.concatenate(
            [
                raster.rasterize_convex(g.reshape(-1, *g.shape[-2:]), m, config.mask_scale).reshape(batch, -1, m, m)
                for g in rings
            ],
            axis=1,
        )
        t4 = time.process_time()
        for b in range(batch):
            raster.layer_maps(masks[b], poses.depth[b], config.layers)
        t5 = time.process_time()
        for b in range(batch):
            flat = [ring for group in rings for ring in group[b]]
            raster.draw_outlines(flat, poses.depth[b], config.image_size, config.outline_pixels, 1)
        t6 = time.process_time()
        for key, dt in zip(keys, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
            totals[key] += dt
    whole = time.process_time()
    rendered = [render_scenes(config, range(start, start + batch)) for start in range(0, scenes, batch)]
    totals["render_scenes total"] = time.process_time() - whole
    whole = time.process_time()
    for group in rendered:
        encode_scenes(group, 1)
    totals["compress + hash"] = time.process_time() - whole
    whole = time.process_time()
    for index in range(0, scenes, 4):
        poses = geometry.sample_poses(config, scene_rng(0, index))
        overlay_visibility(geometry.class_rings(config, poses), poses.depth, config.image_size)
    totals["(GEOS overlays instead)"] = 4 * (time.process_time() - whole)
    return {key: 1e3 * value / scenes for key, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--reference", type=Path, help="a checkout of github.com/yanfengliu/layered_embeddings")
    parser.add_argument("--reference-scenes", type=int, help="scenes per reference row (default: --scenes)")
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask rows")
    parser.add_argument(
        "--sharded-scenes", type=int, help="scenes per sharded and Dask row (default: --scenes): start-up amortised"
    )
    args = parser.parse_args()
    if args.reference is not None and not (args.reference / "shapes.py").is_file():
        raise SystemExit(f"--reference {args.reference}: no shapes.py there")
    reference_scenes = args.reference_scenes or args.scenes
    sharded = args.sharded_scenes or args.scenes
    print(f"cpu cores: {os.cpu_count()}, paper preset, 3 layers, zlib-ng level 2, {args.scenes} scenes per row of ours")
    print(f"{'':<28} {'N':>3} {'workers':>7} {'scenes':>7} {'scenes/s':>9} {'per CPU-s':>9} {'peak MiB':>9}")
    for instances in (6, 12):
        base = None
        if args.reference is not None:
            for n_layer, what in ((False, "reference (training)"), (True, "reference (N-layer, amodal)")):
                usage = measure(reference_render, args.reference, instances, reference_scenes, n_layer)
                row(what, instances, 1, reference_scenes, usage)
                base = base or reference_scenes / usage.cpu
        for workers in (1, 2):
            usage = measure(local_render, instances, workers, args.scenes)
            rate = args.scenes / usage.cpu
            row("local", instances, workers, args.scenes, usage, f"{rate / base:.0f}x ref" if base else "")
        if args.no_dask:
            continue
        one_file = usage  # the 2-worker row above
        if sharded != args.scenes:
            one_file = measure(local_render, instances, 2, sharded)
            row("local", instances, 2, sharded, one_file)
        local = measure(sharded_render, instances, "local", sharded)
        row(f"local sharded ({SHARDS})", instances, 2, sharded, local)
        dask = measure(sharded_render, instances, "dask", sharded)
        row(
            f"dask LocalCluster ({SHARDS})",
            instances,
            2,
            sharded,
            dask,
            f"overhead {dask.wall / local.wall - 1:+.0%} ({dask.wall / one_file.wall - 1:+.0%} over one file)",
            reaped=False,
        )
        wall = in_fresh_process(running_cluster_render, instances, sharded)
        print(
            f"{f'dask running cluster ({SHARDS})':<28} {instances:>3} {2:>7} {sharded:>7} "
            f"{sharded / wall:>9.1f} {'-':>9} {'-':>9}  overhead {wall / local.wall - 1:+.0%} (no start-up)",
            flush=True,
        )
    for instances in (6, 12):
        print(f"\nwhere one core's CPU time goes, N={instances}, batches of 64 (ms per scene):")
        for key, ms in stage_profile(instances).items():
            print(f"  {key:<26} {ms:6.3f}")


if __name__ == "__main__":
    main()
