"""Evaluation speed against plain pycocotools, and the oracle table: what K ground-truth layers allow.

    python benchmarks/bench_eval.py [--scenes 1000] [--repeats 3] [--reference-layers 2]

Renders the paper preset (N = 6 and 12, 4 layers stored), then for K = 1..4 scores the
oracle (each visible instance = union of its pixels in the first K layers) with the full
evaluation (overall + 3 bands). Evaluation runs pinned to one core, best of ``--repeats``.
For K = ``--reference-layers`` the same metrics are also computed by plain pycocotools
(``COCOeval``, once overall and once per band; best of ``--repeats`` too) in the same run,
checked to agree, and the ratio of the two times is printed. The load average is printed too: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shapesgen import preset
from shapesgen.build import render_dataset
from shapesgen.evaluate import _summary, evaluate, load_ground_truth, oracle_predictions, pycocotools_eval
from shapesgen.stats import OCCLUSION_BANDS


def pin_to_one_core() -> str:
    """Run on one core (the first allowed), so times do not depend on free cores."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity here)"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def best_of(repeats: int, work: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """The shortest of ``repeats`` timed calls of ``work(*args)``, and its result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def plain_pycocotools(gt: Any, detections: list[dict[str, Any]]) -> dict[str, Any]:
    """The same table from pycocotools' own COCOeval: overall, then once per band."""
    return {
        "all": _summary(pycocotools_eval(gt, detections)),
        "bands": {band: _summary(pycocotools_eval(gt, detections, band=band)) for band in OCCLUSION_BANDS},
    }


def largest_difference(ours: dict[str, Any], plain: dict[str, Any]) -> float:
    pairs = [(ours["all"][k], plain["all"][k]) for k in plain["all"]]
    pairs += [(ours["bands"][b][k], plain["bands"][b][k]) for b in OCCLUSION_BANDS for k in plain["bands"][b]]
    return max(abs(a - b) for a, b in pairs)


def load_average() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="render workers")
    parser.add_argument("--repeats", type=int, default=3, help="evaluation runs per case; the best is shown")
    parser.add_argument("--reference-layers", type=int, default=2, help="K timed with pycocotools too (0: none)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for instances in (6, 12):
            config = preset("paper").replace(instances_per_class=instances, layers=4, seed=2019)
            paths[instances] = Path(tmp) / f"paper{instances}.h5"
            render_dataset(config, paths[instances], num_scenes=args.scenes, workers=args.workers)
        print(f"{pin_to_one_core()}; {load_average()}", flush=True)
        for instances, path in paths.items():
            load_s, gt = best_of(1, load_ground_truth, path, True)
            for k in (1, 2, 3, 4):
                predict_s, detections = best_of(1, oracle_predictions, gt, k)
                eval_s, metrics = best_of(args.repeats, evaluate, gt, detections)
                rows.append((instances, k, metrics))
                line = (
                    f"N={instances:>2} K={k}: load GT {load_s:.2f}s, oracle {predict_s:.2f}s, "
                    f"evaluate (overall + 3 bands) {eval_s:.3f}s on {args.scenes} scenes"
                )
                if k == args.reference_layers:
                    plain_s, plain = best_of(args.repeats, plain_pycocotools, gt, detections)
                    diff = largest_difference(metrics, plain)
                    line += f"; plain pycocotools {plain_s:.2f}s = {plain_s / eval_s:.1f}x; max |difference| {diff:.1e}"
                print(line, flush=True)
        print(load_average())
    print(f"\noracle, paper preset, {args.scenes} scenes, seed 2019")
    print("| N/class | K | AP | AP50 | AP75 | AR100 | AR none | AR partial | AR heavy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for instances, k, m in rows:
        overall, bands = m["all"], m["bands"]
        cells = [overall[key] for key in ("AP", "AP50", "AP75", "AR100")]
        cells += [bands[b]["AR100"] for b in ("none", "partial", "heavy")]
        print(f"| {instances} | {k} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
