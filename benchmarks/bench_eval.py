"""Evaluation speed and the oracle table: what K ground-truth layers allow.

    python benchmarks/bench_eval.py [--scenes 1000]

Renders the paper preset (N = 6 and 12, 4 layers stored), then for K = 1..4 scores
the oracle (each visible instance = union of its pixels in the first K layers) with
the full band evaluation, printing seconds per step and the metric table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from shapesgen import preset
from shapesgen.evaluate import evaluate, load_ground_truth, oracle_predictions
from shapesgen.render import render_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for instances in (6, 12):
            config = preset("paper").replace(instances_per_class=instances, layers=4, seed=2019)
            path = Path(tmp) / f"paper{instances}.h5"
            render_dataset(config, path, num_scenes=args.scenes, workers=args.workers)
            start = time.perf_counter()
            gt = load_ground_truth(path, keep_layers=True)
            load_s = time.perf_counter() - start
            for k in (1, 2, 3, 4):
                start = time.perf_counter()
                detections = oracle_predictions(gt, k)
                predict_s = time.perf_counter() - start
                start = time.perf_counter()
                metrics = evaluate(gt, detections)
                eval_s = time.perf_counter() - start
                rows.append((instances, k, metrics, load_s, predict_s, eval_s))
                print(
                    f"N={instances:>2} K={k}: load GT {load_s:.2f}s, oracle {predict_s:.2f}s, "
                    f"evaluate (overall + 3 bands) {eval_s:.2f}s on {args.scenes} scenes",
                    flush=True,
                )
    print(f"\noracle, paper preset, {args.scenes} scenes, seed 2019")
    print("| N/class | K | AP | AP50 | AP75 | AR100 | AR none | AR partial | AR heavy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for instances, k, m, *_ in rows:
        overall, bands = m["all"], m["bands"]
        cells = [overall[key] for key in ("AP", "AP50", "AP75", "AR100")]
        cells += [bands[b]["AR100"] for b in ("none", "partial", "heavy")]
        print(f"| {instances} | {k} | " + " | ".join(f"{v:.4f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
