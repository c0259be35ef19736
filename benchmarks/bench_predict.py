"""End-to-end prediction speed (images/s): forward pass + clustering + RLE, as `shapesgen predict`.

    python benchmarks/bench_predict.py [--model NAME_OR_RUN] [--scenes 200] [--workers 1 2]

Uses a shipped trained model by default (clustering untrained embeddings is not
representative) on freshly rendered scenes of the model's own scene config.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from amodal_model.predict import load_run, predict_hdf5
from amodal_model.pretrained import shipped_models
from shapesgen.build import render_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="run folder, .keras file or shipped name")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()
    name = args.model or (shipped_models() or [None])[0]
    if name is None:
        raise SystemExit("no shipped model: pass --model RUN_FOLDER")
    model, config, scene = load_run(name)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "scenes.h5"
        render_dataset(scene.replace(seed=12345), data, num_scenes=args.scenes, workers=2)
        predict_hdf5(model, config, scene, data, limit=16)  # warm-up: trace the forward pass
        for workers in args.workers:
            start = time.perf_counter()
            records = predict_hdf5(model, config, scene, data, workers=workers)
            seconds = time.perf_counter() - start
            print(
                f"predict {name}: {args.scenes} scenes, {workers} clustering worker(s): "
                f"{args.scenes / seconds:6.2f} images/s ({len(records) / args.scenes:.1f} instances per image)"
            )


if __name__ == "__main__":
    main()
