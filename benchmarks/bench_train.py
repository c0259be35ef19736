"""Training throughput (images/s) per preset and layer count, and the HDF5 input rate.

    python benchmarks/bench_train.py [--presets cpu cpu-fast cpu-deep] [--layers 2 3] [--steps 30]

Each figure times ``--steps`` training steps of the real training step (loss, visible
targets, optimiser) after five warm-up steps, its batches prepared beforehand (training
prepares them in tf.data threads, beside the step) and synchronised once at the end. On a GPU machine add ``paper``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from amodal_model.config import TRAIN_PRESETS
from amodal_model.data import hdf5_batches, tf_dataset, to_model_input, visible_targets
from amodal_model.loss import total_loss
from amodal_model.model import DataSpec, build_model, compute_policy
from amodal_model.train import learning_rate_schedule
from shapesgen import preset
from shapesgen.build import render_dataset


def input_rate(path: Path, layers: int, batch_size: int, seconds: float = 5.0) -> float:
    """Images/s delivered by the tf.data pipeline alone (decode, shuffle, batch)."""
    config = preset("paper").replace(layers=layers)
    images, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for batch in tf_dataset(hdf5_batches(path, batch_size, 0, epoch, True), config):
            images += int(batch["image"].shape[0])
        epoch += 1
    return images / (time.perf_counter() - start)


WARM_UP = 5
"""Untimed steps first: tracing and the first executions of each kernel."""


def train_rate(name: str, path: Path, layers: int, steps: int) -> tuple[float, int]:
    config = TRAIN_PRESETS[name]
    model = build_model(config, DataSpec(256, 1, 64, layers, 3))
    optimizer = keras.optimizers.Adam(learning_rate_schedule(config.optimiser, steps))

    @tf.function
    def step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            terms = total_loss(model(to_model_input(batch["image"]), training=True), batch, config.loss)
        grads = tape.gradient(terms["loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return terms["loss"]

    read = hdf5_batches(path, config.optimiser.batch_size, 0, 0, True)
    prepared = (
        visible_targets(b) if config.loss.visible_targets else b
        for _, b in zip(range(steps + WARM_UP), read, strict=False)
    )
    batches = [{k: tf.constant(v) for k, v in b.items() if k != "index"} for b in prepared]
    for batch in batches[:WARM_UP]:
        step(batch).numpy()
    start = time.perf_counter()
    for batch in batches[WARM_UP:]:
        loss = step(batch)
    loss.numpy()
    seconds = time.perf_counter() - start
    return (len(batches) - WARM_UP) * config.optimiser.batch_size / seconds, model.count_params()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "cpu", "cpu-fast", "cpu-deep", "light"], choices=TRAIN_PRESETS
    )
    parser.add_argument("--layers", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    print(f"devices: {devices}, threads: intra {tf.config.threading.get_intra_op_parallelism_threads() or 'all'}")
    with tempfile.TemporaryDirectory() as tmp:
        path = {}
        for layers in args.layers:
            path[layers] = Path(tmp) / f"bench{layers}.h5"
            config = preset("paper").replace(seed=0, layers=layers)
            render_dataset(config, path[layers], num_scenes=(args.steps + WARM_UP) * 16, workers=2)
        print(f"tf.data input from HDF5 (batch 8): {input_rate(path[args.layers[0]], args.layers[0], 8):,.0f} images/s")
        for name in args.presets:
            for layers in args.layers:
                rate, params = train_rate(name, path[layers], layers, args.steps)
                config = TRAIN_PRESETS[name]
                batch, policy = config.optimiser.batch_size, compute_policy(config.model)
                print(
                    f"train {name:<9} {layers} layers {params / 1e6:6.2f} M params, batch {batch}, "
                    f"{policy}: {rate:7.2f} images/s"
                )


if __name__ == "__main__":
    main()
