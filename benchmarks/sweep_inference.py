"""Choose a trained model's inference settings on validation data: AP for a grid of settings.

    python benchmarks/sweep_inference.py --model RUN_OR_NAME --data val.h5 [--cache outputs.npz]
        [--bandwidth 1.25 1.5 1.75 2.0] [--min-pixels 20 30 40] [--max-background 0.5 0.6]
        [--settings JSON] [--workers 2] [--json sweep.json]

The forward pass runs once (``--cache`` keeps it); each setting then clusters every
scene and is scored by ``shapesgen evaluate``'s metrics (AP, AP50, AR100, AR heavy).
Prints one row per setting, best AP first, and writes them as JSON: the file that
docs/results.md cites as each model's ``*_val_sweep.json``. ``--settings`` holds the
settings every row shares (default: both merges, as the shipped models use); the grid's
own keys win over it. The default grid (24 settings) is the one the N = 6 sweeps used
(bandwidth 1.25 to 1.75, 18 settings) with bandwidth 2.0 added from `pp6x2` on; the N = 12
sweeps used other min pixels (30, 45, 60), given with ``--min-pixels``.
Settings are scored in parallel, one per process; figures are metrics, not timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diagnose_model import forward_outputs, metrics, records_for  # noqa: E402

from amodal_model.config import InferenceConfig  # noqa: E402
from amodal_model.inference import image_instances  # noqa: E402
from shapesgen.evaluate import GroundTruth, ground_truth_from_hdf5  # noqa: E402

SHARED = {"small_clusters": "merge", "hidden_clusters": "merge"}

_outputs: dict[str, np.ndarray] = {}
_gt: GroundTruth | None = None


def _start(outputs: dict[str, np.ndarray], gt: GroundTruth) -> None:
    global _gt
    _outputs.update(outputs)
    _gt = gt


def score(setting: dict[str, Any], base: InferenceConfig) -> dict[str, Any]:
    """The metrics of one setting over every scene of the forward pass."""
    settings = base.with_overrides(**setting)
    semantic, embedding = _outputs["semantic"], _outputs["embedding"]
    records = records_for(len(semantic), lambda s: image_instances(semantic[s], embedding[s], s, settings))
    return {"setting": setting, **metrics(_gt, records)}


def _truth(data: str, count: int) -> GroundTruth:
    gt = ground_truth_from_hdf5(data)
    keep = set(range(1, count + 1))
    return dataclasses.replace(
        gt,
        images=[i for i in gt.images if i["id"] in keep],
        annotations=[a for a in gt.annotations if a["image_id"] in keep],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a run folder, .keras file or shipped model name")
    parser.add_argument("--data", required=True, help="validation HDF5 file")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="npz of the forward pass (written if missing)")
    parser.add_argument("--bandwidth", type=float, nargs="+", default=[1.25, 1.5, 1.75, 2.0])
    parser.add_argument("--min-pixels", type=int, nargs="+", default=[20, 30, 40])
    parser.add_argument("--max-background", type=float, nargs="+", default=[0.5, 0.6])
    parser.add_argument("--settings", default=json.dumps(SHARED), help="settings every row shares, as JSON")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from amodal_model.predict import load_run

    outputs = forward_outputs(args.model, args.data, args.limit, args.cache)
    _, config, _ = load_run(args.model)
    shared = json.loads(args.settings)
    grid = [
        {**shared, "bandwidth": b, "min_pixels": p, "max_background": m}
        for b, p, m in itertools.product(args.bandwidth, args.min_pixels, args.max_background)
    ]
    gt = _truth(args.data, len(outputs["semantic"]))
    context = multiprocessing.get_context("spawn")  # no fork of a process that runs TensorFlow's threads
    with ProcessPoolExecutor(args.workers, context, initializer=_start, initargs=(outputs, gt)) as pool:
        rows = list(pool.map(score, grid, itertools.repeat(config.inference)))
    rows.sort(key=lambda row: -row["AP"])
    print(f"{len(outputs['semantic'])} scenes, {len(rows)} settings (shared: {shared})")
    print("bandwidth | min pixels | max background | AP | AP50 | AR100 | AR heavy | detections")
    for row in rows:
        s = row["setting"]
        print(
            f"{s['bandwidth']} | {s['min_pixels']} | {s['max_background']} | {row['AP']:.4f} | {row['AP50']:.4f} | "
            f"{row['AR100']:.4f} | {row['AR_heavy']:.4f} | {row['detections']}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
