"""Training: checkpoints every epoch, resumable, CSV + TensorBoard logs, periodic evaluation."""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from amodal_model.config import TrainConfig
from amodal_model.data import Source, hdf5_batches, live_batches, open_source, to_model_input
from amodal_model.loss import total_loss
from amodal_model.model import DataSpec, build_model
from amodal_model.predict import MODEL_FILE, SCENE_CONFIG_FILE, TRAIN_CONFIG_FILE, predict_hdf5
from shapesgen.config import SceneConfig
from shapesgen.errors import ConfigError, DatasetError, ShapesgenError
from shapesgen.evaluate import GroundTruth, evaluate, load_ground_truth
from shapesgen.hdf5 import open_dataset

LOSS_TERMS = ("loss", "variance", "distance", "regularisation", "cross_entropy")
EVAL_COLUMNS = ("AP", "AP50", "AP75", "AR100", "AR_none", "AR_partial", "AR_heavy")
COLUMNS = ("epoch", "steps", "seconds", "images_per_s", *LOSS_TERMS, *EVAL_COLUMNS)
LIVE_STEPS_DEFAULT_IMAGES = 1000


class TrainingInterrupted(ShapesgenError):
    """Ctrl-C during training; the last completed epoch is checkpointed."""

    exit_code = 130


@dataclass
class Callbacks:
    """Hooks the CLI uses for progress; all optional."""

    on_step: Callable[[int, int, int, float], None] | None = None  # epoch, step, steps, loss
    on_epoch: Callable[[dict[str, Any]], None] | None = None


def steps_per_epoch(config: TrainConfig, source: Source) -> int:
    """Configured steps, else one pass over a file or 1000 live images per epoch."""
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    if source.live:
        return max(1, LIVE_STEPS_DEFAULT_IMAGES // config.batch_size)
    assert source.num_scenes is not None
    return max(1, source.num_scenes // config.batch_size)


def _prepare_run_dir(out: Path, config: TrainConfig, source: Source, resume: bool, force: bool) -> None:
    marker = out / TRAIN_CONFIG_FILE
    if out.exists() and any(out.iterdir()):
        if resume:
            if not marker.exists():
                raise DatasetError(f"--out {out}: nothing to resume (no {TRAIN_CONFIG_FILE})")
            saved = json.loads(TrainConfig.from_dict(json.loads(marker.read_text())).to_json())
            asked = json.loads(config.to_json())
            diff = {k: v for k, v in asked.items() if saved[k] != v and k != "epochs"}
            if diff:
                raise ConfigError(f"--resume: {out} was trained with other settings (now asked: {diff})")
            trained_on = DataSpec.from_scene(SceneConfig.from_json((out / SCENE_CONFIG_FILE).read_text()))
            if trained_on != DataSpec.from_scene(source.scene_config):
                raise ConfigError(
                    f"--resume: the training data's shapes {DataSpec.from_scene(source.scene_config)} differ "
                    f"from the run's {trained_on}"
                )
            marker.write_text(json.dumps(asked, indent=2) + "\n")
            return
        if not force:
            raise DatasetError(f"--out {out} exists and is not empty: pass --resume to continue or --force to replace")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(json.loads(config.to_json()), indent=2) + "\n")
    (out / SCENE_CONFIG_FILE).write_text(source.scene_config.to_json() + "\n")


def _validation(val: Path | None, source: Source, config: TrainConfig) -> GroundTruth | None:
    """Ground truth of the first ``eval_scenes`` validation scenes, checked against the data."""
    if val is None:
        return None
    with open_dataset(val) as ds:
        shape = (ds.config.image_size, ds.config.channels)
    if shape != (source.scene_config.image_size, source.scene_config.channels):
        raise ConfigError(f"--val {val}: image size/channels {shape} differ from the training data's")
    gt = load_ground_truth(val)
    keep = {image["id"] for image in gt.images[: config.eval_scenes]}
    return GroundTruth(
        [image for image in gt.images if image["id"] in keep],
        [a for a in gt.annotations if a["image_id"] in keep],
        gt.categories,
        gt.source,
    )


class Trainer:
    """One training run: model, optimiser, checkpoint and logs in ``out``."""

    def __init__(self, source: Source, out: Path, config: TrainConfig, resume: bool) -> None:
        self.source, self.out, self.config = source, out, config
        keras.utils.set_random_seed(config.seed)
        self.model = build_model(config, DataSpec.from_scene(source.scene_config))
        self.optimizer = keras.optimizers.Adam(config.learning_rate)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch=self.epoch)
        self.manager = tf.train.CheckpointManager(checkpoint, out / "checkpoints", max_to_keep=2)
        if resume and self.manager.latest_checkpoint:
            checkpoint.restore(self.manager.latest_checkpoint).expect_partial()
        _trim_log(out / "metrics.csv", self.completed_epochs)
        self.writer = tf.summary.create_file_writer(str(out / "tensorboard"))
        self.steps = steps_per_epoch(config, source)
        self.step = tf.function(self._step, reduce_retracing=True)

    @property
    def completed_epochs(self) -> int:
        return int(self.epoch.numpy())

    def _step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        model = self.model
        with tf.GradientTape() as tape:
            terms = total_loss(model(to_model_input(batch["image"]), training=True), batch, self.config)
            objective = terms["loss"] + tf.add_n(model.losses) if model.losses else terms["loss"]
        grads = tape.gradient(objective, model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return terms

    def batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        config, source = self.config, self.source
        if source.live:
            return live_batches(
                source.scene_config, config.batch_size, epoch * self.steps * config.batch_size, self.steps
            )
        assert source.path is not None
        return _repeat(source.path, config, epoch, self.steps)

    def run_epoch(self, epoch: int, callbacks: Callbacks) -> dict[str, Any]:
        """Train one epoch; returns its log row (losses averaged over steps)."""
        started = time.perf_counter()
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        for step, batch in enumerate(self.batches(epoch), start=1):
            terms = self.step({k: tf.constant(v) for k, v in batch.items() if k != "index"})
            for key in LOSS_TERMS:
                sums[key] += float(terms[key])
            if callbacks.on_step:
                callbacks.on_step(epoch + 1, step, self.steps, float(terms["loss"]))
        seconds = time.perf_counter() - started
        return {
            "epoch": epoch + 1,
            "steps": self.steps,
            "seconds": round(seconds, 2),
            "images_per_s": round(self.steps * self.config.batch_size / seconds, 2),
            **{key: round(value / self.steps, 6) for key, value in sums.items()},
        }

    def evaluate(self, val: Path, gt: GroundTruth) -> dict[str, float]:
        """The same metrics as ``shapesgen evaluate``, on the first ``eval_scenes`` scenes."""
        records = predict_hdf5(self.model, self.config, self.source.scene_config, val, limit=self.config.eval_scenes)
        metrics = evaluate(gt, records)
        row = {k: round(metrics["all"][k], 4) for k in ("AP", "AP50", "AP75", "AR100")}
        row.update({f"AR_{b}": round(metrics["bands"][b]["AR100"], 4) for b in ("none", "partial", "heavy")})
        return row

    def fit(self, val: Path | None, val_gt: GroundTruth | None, callbacks: Callbacks) -> None:
        config = self.config
        for epoch in range(self.completed_epochs, config.epochs):
            row = self.run_epoch(epoch, callbacks)
            due = config.eval_every and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs)
            if val is not None and val_gt is not None and due:
                row.update(self.evaluate(val, val_gt))
            _log(self.out, self.writer, row)
            self.epoch.assign(epoch + 1)
            self.manager.save()
            if callbacks.on_epoch:
                callbacks.on_epoch(row)


def train(
    train_source: str | Path,
    out: str | Path,
    config: TrainConfig,
    *,
    val: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    callbacks: Callbacks | None = None,
) -> Path:
    """Train the layered-embedding model; returns the run directory.

    Every epoch is checkpointed; ``resume=True`` continues from the last one (the
    schedule may be extended with a larger ``epochs``). The finished model is saved
    as ``model.keras`` next to its train and scene configs.
    """
    source = open_source(train_source)
    out = Path(out)
    val_path = Path(val) if val is not None else None
    val_gt = _validation(val_path, source, config)
    _prepare_run_dir(out, config, source, resume, force)
    trainer = Trainer(source, out, config, resume)
    try:
        trainer.fit(val_path, val_gt, callbacks or Callbacks())
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted; {trainer.completed_epochs} epoch(s) are checkpointed in {out}: rerun with --resume"
        ) from None
    _save_model(trainer.model, out)
    return out


def _repeat(path: Path, config: TrainConfig, epoch: int, steps: int) -> Iterator[dict[str, Any]]:
    """Exactly ``steps`` full batches, wrapping around the file as needed."""
    produced, sweep = 0, 0
    while produced < steps:
        for batch in hdf5_batches(path, config.batch_size, config.seed, epoch * 1000 + sweep, shuffle=True):
            if len(batch["index"]) < config.batch_size:
                continue
            yield batch
            produced += 1
            if produced == steps:
                return
        sweep += 1


def _trim_log(path: Path, epochs: int) -> None:
    """Keep the log rows of the epochs a resumed run restored, drop later ones."""
    if not path.exists():
        return
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epochs]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _log(out: Path, writer: Any, row: dict[str, Any]) -> None:
    path = out / "metrics.csv"
    new = not path.exists()
    with path.open("a", newline="") as f:
        log = csv.DictWriter(f, COLUMNS)
        if new:
            log.writeheader()
        log.writerow(row)
    with writer.as_default():
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(value):
                tf.summary.scalar(key, value, step=row["epoch"])
    writer.flush()


def _save_model(model: keras.Model, out: Path) -> None:
    tmp = out / "model.partial.keras"
    model.save(tmp)
    tmp.replace(out / MODEL_FILE)
