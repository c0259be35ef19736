"""Training throughput (images/s) per backbone, and the HDF5 input pipeline's rate.

    python benchmarks/bench_train.py [--backbones tiny mobilenetv2] [--steps 10]

On a GPU machine add ``xception`` for the paper configuration.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from amodal_model.config import TRAIN_PRESETS
from amodal_model.data import hdf5_batches, tf_dataset, to_model_input
from amodal_model.loss import total_loss
from amodal_model.model import DataSpec, build_model
from shapesgen import preset
from shapesgen.render import render_dataset

PRESET_OF = {"tiny": "tiny", "cpu": "cpu", "mobilenetv2": "light", "xception": "paper"}


def input_rate(path: Path, batch_size: int, seconds: float = 5.0) -> float:
    """Images/s delivered by the tf.data pipeline alone (decode, shuffle, batch)."""
    config = preset("paper")
    images, start, epoch = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for batch in tf_dataset(hdf5_batches(path, batch_size, 0, epoch, True), config.replace(layers=2)):
            images += int(batch["image"].shape[0])
        epoch += 1
    return images / (time.perf_counter() - start)


def train_rate(backbone: str, path: Path, steps: int) -> tuple[float, int]:
    config = TRAIN_PRESETS[PRESET_OF[backbone]]
    model = build_model(config, DataSpec(256, 1, 64, 2, 3))
    optimizer = keras.optimizers.Adam(config.learning_rate)

    @tf.function
    def step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            terms = total_loss(model(to_model_input(batch["image"]), training=True), batch, config)
        grads = tape.gradient(terms["loss"], model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return terms["loss"]

    batches = [
        {k: tf.constant(v) for k, v in b.items() if k != "index"}
        for _, b in zip(range(steps + 2), hdf5_batches(path, config.batch_size, 0, 0, True), strict=False)
    ]
    step(batches[0])
    step(batches[1])
    start = time.perf_counter()
    for batch in batches[2:]:
        step(batch).numpy()
    seconds = time.perf_counter() - start
    return (len(batches) - 2) * config.batch_size / seconds, model.count_params()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbones", nargs="+", default=["tiny", "cpu", "mobilenetv2"])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    print(f"devices: {devices}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        render_dataset(preset("paper").replace(seed=0), path, num_scenes=1024, workers=2)
        print(f"tf.data input from HDF5 (batch 8): {input_rate(path, 8):,.0f} images/s")
        for backbone in args.backbones:
            rate, params = train_rate(backbone, path, args.steps)
            batch = TRAIN_PRESETS[PRESET_OF[backbone]].batch_size
            print(f"train {backbone:<12} {params / 1e6:6.1f} M params, batch {batch}: {rate:7.2f} images/s")


if __name__ == "__main__":
    main()
