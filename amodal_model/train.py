"""Training: checkpoints every epoch, resumable, CSV + TensorBoard logs, periodic evaluation."""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from amodal_model.coco_source import is_coco_export
from amodal_model.config import RESUME_MAY_CHANGE, OptimiserConfig, TrainConfig
from amodal_model.data import (
    Source,
    check_compatible,
    dataset_file,
    file_batches,
    live_batches,
    open_source,
    reading,
    source_text,
    to_model_input,
    visible_targets,
)
from amodal_model.loss import total_loss
from amodal_model.model import DataSpec, build_model
from amodal_model.predict import (
    BEST_MODEL_FILE,
    MODEL_FILE,
    SCENE_CONFIG_FILE,
    TRAIN_CONFIG_FILE,
    check_writable,
    load_scene_config,
    load_train_config,
    predict_hdf5,
)
from amodal_model.pretrained import make_reproducible
from shapesgen import open_dataset
from shapesgen.errors import ConfigError, DatasetError, ShapesgenError, ShapesgenNote, one_line, shown
from shapesgen.evaluate import GroundTruth, evaluate, load_ground_truth, paper_columns
from shapesgen.files import (
    check_output_path,
    contains,
    exclusive_lock,
    make_parents,
    partial_path,
    refusal_kind,
    refuse_run_files,
    regular_input,
    remove_empty,
    write_atomically,
    write_refusal,
)

LOSS_TERMS = ("loss", "variance", "distance", "regularisation", "cross_entropy", "pixel_push")
EVAL_COLUMNS = ("AP", "AP50", "AP75", "AR100", "AR_none", "AR_partial", "AR_heavy")
COLUMNS = ("epoch", "steps", "seconds", "images_per_s", *LOSS_TERMS, *EVAL_COLUMNS)
LIVE_STEPS_DEFAULT_IMAGES = 1000
RUN_MARKER = TRAIN_CONFIG_FILE
"""The file every run folder has from its start: ``force=True`` only replaces folders holding it."""


class TrainingInterrupted(ShapesgenError):
    """Ctrl-C during training; the last completed epoch is checkpointed."""

    exit_code = 130


class TrainingDiverged(ShapesgenError):
    """The loss stopped being finite: the diverged epoch is neither checkpointed nor saved."""

    exit_code = 1


@dataclass
class Callbacks:
    """Hooks the CLI uses for progress; all optional."""

    on_step: Callable[[int, int, int, float], None] | None = None  # epoch, step, steps, loss
    on_epoch: Callable[[dict[str, Any]], None] | None = None


def steps_per_epoch(config: OptimiserConfig, source: Source) -> int:
    """Configured steps, else one pass over a file or 1000 live images per epoch."""
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    if source.live:
        return max(1, LIVE_STEPS_DEFAULT_IMAGES // config.batch_size)
    assert source.num_scenes is not None
    return max(1, source.num_scenes // config.batch_size)


def learning_rate_schedule(
    config: OptimiserConfig, steps: int
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """Constant, or cosine decay from ``learning_rate`` to 0 over all ``epochs`` (resuming
    continues the same curve; a resume with more epochs stretches what is left of it)."""
    if config.schedule == "constant":
        return config.learning_rate
    return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=config.epochs * steps)


@contextmanager
def saving(out: Path) -> Iterator[None]:
    """Turn a failure to write into the run folder into one line: a place the user may not
    write or a path that cannot be one is bad input (DatasetError, exit 2), anything else, a
    full disk above all, the system's (ResourceError, exit 1): ``files.refusal_kind``."""
    try:
        yield
    except ShapesgenError:
        raise
    except (OSError, RuntimeError, tf.errors.OpError) as exc:
        text = str(getattr(exc, "message", "") or exc)
        number = getattr(exc, "errno", None)
        if number == errno.ENOSPC or "No space left" in text:
            reason = "no space left on device"
        else:
            reason = getattr(exc, "strerror", None) or one_line(text) or type(exc).__name__
        raise refusal_kind(number)(f"out={str(out)!r}: cannot save the run ({reason})", param="out") from None


STEP_LOG_EVERY = 10
"""Training steps between two per-step loss points in TensorBoard."""


def _partial_model(name: str) -> str:
    """Where :meth:`Trainer._save` writes model file ``name`` before renaming it into place."""
    return f"{Path(name).stem}.partial.keras"


RUN_ENTRIES = frozenset(
    {MODEL_FILE, BEST_MODEL_FILE, TRAIN_CONFIG_FILE, SCENE_CONFIG_FILE, "metrics.csv", "checkpoints", "tensorboard"}
    | {_partial_model(MODEL_FILE), _partial_model(BEST_MODEL_FILE)}  # left by a run killed while saving
)
"""Everything :func:`train` writes at the top of a run folder."""


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a run :func:`train` made (it holds the run marker); it may
    also hold the user's files, such as predictions written beside the model."""
    return folder.is_dir() and not folder.is_symlink() and (folder / RUN_MARKER).is_file()


RUN_SUBFOLDER_ENTRIES = {
    "checkpoints": re.compile(r"checkpoint(\.tmp[0-9a-f]+)?|ckpt-\d+(\.index|\.data-\d+-of-\d+|_temp)"),
    "tensorboard": re.compile(r"events\.out\.tfevents\..+"),
}
"""What TensorFlow writes in a run's subfolders: the checkpoint manager's state file (and the
temporary one it renames), checkpoints, the ``_temp`` folder of a save that was cut short,
and TensorBoard event files."""
# inside a ``ckpt-N_temp`` folder; a ``.tempstate`` file is one whose write was cut short
CHECKPOINT_PART = re.compile(r"part-\d+-of-\d+(\.index|\.data-\d+-of-\d+)(\.tempstate\d+)?")


def _foreign_entry(folder: Path) -> str | None:
    """The first entry of a run folder, at any depth, that :func:`train` did not write
    (``None`` if none): ``force=True`` deletes the whole folder."""
    try:
        for entry in sorted(folder.iterdir()):
            if entry.name not in RUN_ENTRIES or entry.is_symlink():
                return entry.name
            pattern = RUN_SUBFOLDER_ENTRIES.get(entry.name)
            if pattern is None:
                continue
            if not entry.is_dir():
                return entry.name
            for inner in sorted(entry.iterdir()):
                if inner.is_symlink() or not pattern.fullmatch(inner.name):
                    return f"{entry.name}/{inner.name}"
                if inner.is_dir() != inner.name.endswith("_temp"):
                    return f"{entry.name}/{inner.name}"
                for part in sorted(inner.iterdir()) if inner.is_dir() else ():
                    if part.is_symlink() or not part.is_file() or not CHECKPOINT_PART.fullmatch(part.name):
                        return f"{entry.name}/{inner.name}/{part.name}"
    except OSError as exc:
        return f"<unlistable: {exc.strerror}>"
    return None


def _check_replaceable(folder: Path, inputs: list[Path], cwd: Path) -> None:
    """``force=True`` removes ``folder``: only a run folder, never one holding an input or the cwd."""
    if not is_run_folder(folder):
        raise DatasetError(
            f"out={str(folder)!r} exists and is not a training run (no {RUN_MARKER}): "
            "force=True only replaces a previous run; give another path",
            param="out",
        )
    foreign = _foreign_entry(folder)
    if foreign is not None:
        raise DatasetError(
            f"out={str(folder)!r} holds {foreign!r}, which a run does not write: force=True would delete it; "
            "move it out of the run folder first",
            param="out",
        )
    for path in inputs:
        if contains(folder, path):
            raise ConfigError(f"out={str(folder)!r} holds the input {path}: force=True would delete it", param="out")
    if contains(folder, cwd):
        raise ConfigError(f"out={str(folder)!r} holds the working folder: force=True would delete it", param="out")


def _plan(out: Path, resume: bool, force: bool, inputs: list[Path]) -> str:
    """What to do with ``out``: ``"new"``, ``"resume"`` (train in place) or ``"replace"``.

    Nothing is written; every refusal comes before any work.
    """
    if out.is_symlink() and not out.exists():
        raise DatasetError(f"out={str(out)!r} is a broken symbolic link: remove it or give another path", param="out")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"out={str(out)!r} is a file, not a run folder: give another path", param="out")
    refuse_run_files(out, "out")
    for path in inputs:
        if contains(out, path) and not resume:
            raise ConfigError(f"out={str(out)!r} holds the input {path}: give another path", param="out")
    try:
        empty = not out.exists() or not any(out.iterdir())
    except OSError as exc:
        raise DatasetError(f"out={str(out)!r}: cannot list it ({exc.strerror})", param="out") from None
    if empty:
        if out.is_symlink():
            raise DatasetError(f"out={str(out)!r} is a symbolic link: give the folder it points to", param="out")
        return "new"
    if resume:
        if not is_run_folder(out):
            raise DatasetError(f"out={str(out)!r}: nothing to resume (no {RUN_MARKER} inside)", param="out")
        return "resume"
    if not force:
        if not is_run_folder(out):
            raise DatasetError(
                f"out={str(out)!r} exists, is not empty and is not a training run: give a new or empty folder",
                param="out",
            )
        raise DatasetError(
            f"out={str(out)!r} exists and is not empty: pass resume=True to continue it or force=True to replace it",
            param="out",
        )
    _check_replaceable(out, inputs, Path.cwd())
    return "replace"


def _check_resume(out: Path, config: TrainConfig, source: Source) -> None:
    """The run in ``out`` must have been trained with ``config``'s training settings (those
    in :data:`~amodal_model.config.RESUME_MAY_CHANGE` may differ) on data of the same shapes."""
    saved = load_train_config(out / TRAIN_CONFIG_FILE, "out").settings()  # a flat file of an older run too
    asked = config.settings()
    changed = [k for k in asked if saved[k] != asked[k] and k not in RESUME_MAY_CHANGE]
    names = list(dict.fromkeys(k.split(".")[1] for k in changed))  # flat names, as the CLI flags (one seed)
    if changed:
        key, name = changed[0], names[0]
        more = f" (and {len(names) - 1} more setting(s))" if len(names) > 1 else ""
        now = f"{name}={shown(asked[key])}" if asked[key] is not None else f"{name} not given"
        raise ConfigError(
            f"resume=True: {out} was trained with {name}={shown(saved[key])}, now {now}{more}: "
            "a resumed run keeps the settings that change training (only inference and evaluation settings and "
            "epochs may change)",
            param="resume",
            related=tuple(names),
        )
    scene = load_scene_config(out / SCENE_CONFIG_FILE, "out")
    trained_on = dataclasses.asdict(DataSpec.from_scene(scene))
    given = dataclasses.asdict(DataSpec.from_scene(source.scene_config))
    differ = [k for k in given if given[k] != trained_on[k]]
    if differ:
        raise ConfigError(
            "resume=True: the training data has "
            + ", ".join(f"{k}={given[k]}" for k in differ)
            + f" but {out} was trained on "
            + ", ".join(f"{k}={trained_on[k]}" for k in differ)
            + ": a resumed run needs data of the same shapes (the same layers, sizes and classes)",
            param="train_source",
        )
    # The same shapes but another dataset (another seed, split or generator setting): the run's
    # scene_config.json would then misstate what it was trained on.
    trained_dict, given_dict = scene.to_dict(), source.scene_config.to_dict()
    other = [k for k in given_dict if given_dict[k] != trained_dict.get(k)]
    if other:
        key = other[0]
        more = f" (and {len(other) - 1} more setting(s))" if len(other) > 1 else ""
        raise ConfigError(
            f"resume=True: the training data is another dataset than {out} was trained on: its {key}="
            f"{shown(given_dict[key])}, the run's {key}={shown(trained_dict.get(key))}{more}; resume with the "
            "same data (more scenes of it are fine), or train a new run",
            param="train_source",
        )


def validation_file(val: str | Path) -> Path:
    """The validation HDF5 file: a file, or a sharded dataset folder's ``dataset.h5``."""
    text = source_text(val, "val")
    path = regular_input(dataset_file(Path(text), "val"), "val")
    if is_coco_export(path):
        raise ConfigError(
            f"val={text!r} is a COCO export: validation scores against the HDF5 ground truth at mask size; "
            "give the HDF5 file or sharded dataset folder it was exported from",
            param="val",
        )
    return path


def _validation(val: Path | None, source: Source, config: TrainConfig) -> GroundTruth | None:
    """Ground truth of the first ``eval_scenes`` validation scenes, checked against the data."""
    if val is None:
        return None
    with reading(val, "val"), open_dataset(val) as ds:
        scene, scenes = ds.config, len(ds)
        used = min(config.evaluation.eval_scenes, scenes)
        ds.images[:used]  # the images evaluation predicts: a damaged chunk fails now, not after an epoch
    if scenes == 0:
        raise DatasetError(f"val={str(val)!r} has no scenes", param="val")
    check_compatible(val, scene, source.scene_config, "val")
    with reading(val, "val"):
        gt = load_ground_truth(val)
    keep = {image["id"] for image in gt.images[: config.evaluation.eval_scenes]}
    return GroundTruth(
        [image for image in gt.images if image["id"] in keep],
        [a for a in gt.annotations if a["image_id"] in keep],
        gt.categories,
        gt.source,
    )


class Trainer:
    """One training run: model, optimiser, checkpoint and logs in ``out``.

    ``target`` is the run folder the caller asked for, named in errors (``out`` may
    be its staging folder until the first checkpoint).
    """

    def __init__(
        self,
        model: keras.Model,
        source: Source,
        out: Path,
        config: TrainConfig,
        resume: bool,
        target: Path | None = None,
        validating: bool = False,
    ) -> None:
        self.source, self.out, self.config, self.model = source, out, config, model
        self.target = target or out
        self.steps = steps_per_epoch(config.optimiser, source)
        self.optimizer = keras.optimizers.Adam(learning_rate_schedule(config.optimiser, self.steps))
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, epoch=self.epoch)
        if resume:
            try:
                with _tf_warnings_hidden():  # a damaged index logs ParseErrors before the one line below
                    manager = tf.train.CheckpointManager(self.checkpoint, out / "checkpoints", max_to_keep=2)
                latest = manager.latest_checkpoint
                if latest is None:  # missing or unreadable index: resuming would silently start over
                    raise ValueError(f"no readable checkpoint in {out / 'checkpoints'}")
                self.checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
            except Exception as exc:  # a damaged checkpoint fails in TF, protobuf or h5py
                reason = one_line(str(exc)) or type(exc).__name__
                raise DatasetError(
                    f"out={str(out)!r}: its checkpoint cannot be restored ({reason}); "
                    "remove the folder or pass force=True to start again",
                    param="out",
                ) from None
            self._keep_best_model(out, validating)
            _trim_log(out / "metrics.csv", self.completed_epochs)
        with saving(self.target):
            self.manager = tf.train.CheckpointManager(self.checkpoint, out / "checkpoints", max_to_keep=2)
            self.writer = tf.summary.create_file_writer(str(out / "tensorboard"))
        self.step = tf.function(self._step, reduce_retracing=True)
        self.best_ap = _best_ap(out / "metrics.csv") if resume else -1.0

    def _keep_best_model(self, out: Path, validating: bool) -> None:
        """Refuse a resume whose validations would replace ``best.keras`` whatever its AP: its log
        (metrics.csv, removed or edited) records no validation AP while the file is kept."""
        due = (
            validating
            and self.config.evaluation.eval_every > 0
            and self.completed_epochs < self.config.optimiser.epochs
        )
        if due and (out / BEST_MODEL_FILE).exists() and _best_ap(out / "metrics.csv") < 0:
            raise DatasetError(
                f"out={str(out)!r}: {BEST_MODEL_FILE} is kept but metrics.csv records no validation AP (it was removed "
                "or edited), so the next validation would replace the best model whatever its AP: restore "
                f"metrics.csv, or move {BEST_MODEL_FILE} out of the folder, to resume",
                param="out",
            )

    @property
    def completed_epochs(self) -> int:
        return int(self.epoch.numpy())

    def relocate(self, out: Path) -> None:
        """Point checkpoints and logs at ``out``, where the run folder has just been renamed."""
        self.out = out
        with saving(out):
            self.manager = tf.train.CheckpointManager(self.checkpoint, out / "checkpoints", max_to_keep=2)
            self.writer = tf.summary.create_file_writer(str(out / "tensorboard"))

    def _step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        model = self.model
        with tf.GradientTape() as tape:
            terms = total_loss(model(to_model_input(batch["image"]), training=True), batch, self.config.loss)
            objective = terms["loss"] + tf.add_n(model.losses) if model.losses else terms["loss"]
        grads = tape.gradient(objective, model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return terms

    def batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        config, source = self.config.optimiser, self.source
        if source.live:
            return live_batches(
                source.scene_config, config.batch_size, epoch * self.steps * config.batch_size, self.steps
            )
        assert source.path is not None
        return _repeat(source.path, config, epoch, self.steps)

    def run_epoch(self, epoch: int, callbacks: Callbacks) -> dict[str, Any]:
        """Train one epoch; returns its log row (losses averaged over steps).

        Stops with :class:`TrainingDiverged` at the first step whose loss is not finite,
        and at the end if the weights the epoch ends with are not finite or give a loss
        that is not (the last step's loss is computed before its update).
        """
        started = time.perf_counter()
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        targets: dict[str, tf.Tensor] = {}
        for step, batch in enumerate(self.batches(epoch), start=1):
            try:
                if self.config.loss.visible_targets:
                    batch = visible_targets(batch)
                targets = {k: tf.constant(v) for k, v in batch.items() if k != "index"}
                terms = self.step(targets)
            except tf.errors.ResourceExhaustedError:
                raise ConfigError(
                    f"batch_size={self.config.optimiser.batch_size} is invalid: out of memory in a training step, "
                    "use a smaller one",
                    param="batch_size",
                ) from None
            values = {key: float(terms[key]) for key in LOSS_TERMS}
            if not math.isfinite(values["loss"]):
                raise self._diverged(epoch + 1, step, f"the loss is {values['loss']}")
            for key in LOSS_TERMS:
                sums[key] += values[key]
            if step % STEP_LOG_EVERY == 0:
                with self.writer.as_default():
                    for key in LOSS_TERMS:
                        tf.summary.scalar(f"step/{key}", values[key], step=int(self.optimizer.iterations))
            if callbacks.on_step:
                callbacks.on_step(epoch + 1, step, self.steps, values["loss"])
        self._check_finite(epoch + 1, targets)
        seconds = time.perf_counter() - started
        return {
            "epoch": epoch + 1,
            "steps": self.steps,
            "seconds": round(seconds, 2),
            "images_per_s": round(self.steps * self.config.optimiser.batch_size / seconds, 2),
            **{key: round(value / self.steps, 6) for key, value in sums.items()},
        }

    def _check_finite(self, epoch: int, targets: dict[str, tf.Tensor]) -> None:
        """Refuse weights that are not finite, or whose loss on the epoch's last batch is not."""
        if not all(bool(tf.reduce_all(tf.math.is_finite(w))) for w in self.model.trainable_variables):
            raise self._diverged(epoch, self.steps, "its weights are no longer finite")
        if targets:
            outputs = self.model(to_model_input(targets["image"]), training=False)
            loss = float(total_loss(outputs, targets, self.config.loss)["loss"])
            if not math.isfinite(loss):
                raise self._diverged(epoch, self.steps, f"the loss with the weights it gave is {loss}")

    def _diverged(self, epoch: int, step: int, what: str) -> TrainingDiverged:
        rate = self.config.optimiser.learning_rate
        kept = (
            f"the checkpoint of epoch {self.completed_epochs} is kept, nothing of the diverged one is saved"
            if self.completed_epochs
            else "nothing of it is saved"
        )
        return TrainingDiverged(
            f"learning_rate={rate:g}: training diverged in epoch {epoch}, step {step} ({what}); {kept}; "
            f"try learning_rate={rate / 10:g} or lower",
            param="learning_rate",
        )

    def evaluate(self, val: Path, gt: GroundTruth) -> dict[str, float]:
        """The same metrics as ``shapesgen evaluate``, on the first ``eval_scenes`` scenes."""
        records = predict_hdf5(
            self.model,
            self.config,
            self.source.scene_config,
            val,
            limit=self.config.evaluation.eval_scenes,
            param="val",
            check_images=False,  # training does not check its inputs' checksums (the README says so)
        )
        return paper_columns(evaluate(gt, records))

    def fit(
        self,
        val: Path | None,
        val_gt: GroundTruth | None,
        callbacks: Callbacks,
        after_checkpoint: Callable[[], None] | None = None,
    ) -> None:
        """Train the remaining epochs, checkpointing each; ``after_checkpoint`` runs after every save."""
        config = self.config
        for note in self.source.notes:  # said once training starts: a refused run prints its error alone
            warnings.warn(note, ShapesgenNote, stacklevel=2)
        epochs, every = config.optimiser.epochs, config.evaluation.eval_every
        for epoch in range(self.completed_epochs, epochs):
            row = self.run_epoch(epoch, callbacks)  # raises TrainingDiverged before anything is saved
            if not math.isfinite(float(row["loss"])):
                raise self._diverged(epoch + 1, self.steps, f"the epoch's mean loss is {row['loss']}")
            due = every and ((epoch + 1) % every == 0 or epoch + 1 == epochs)
            if val is not None and val_gt is not None and due:
                row.update(self.evaluate(val, val_gt))
            self.epoch.assign(epoch + 1)
            with saving(self.target):
                _log(self.out, self.writer, row)
                self.manager.save()
                if "AP" in row and row["AP"] > self.best_ap:
                    self.best_ap = float(row["AP"])
                    self._save(BEST_MODEL_FILE)
            if after_checkpoint:
                after_checkpoint()
            if callbacks.on_epoch:
                callbacks.on_epoch(row)

    def _save(self, name: str) -> None:
        """Save the model as ``name`` in the run folder, renamed into place once complete."""
        tmp = self.out / _partial_model(name)
        try:
            self.model.save(tmp)
            make_reproducible(tmp)  # the same weights and configs give the same bytes
            tmp.replace(self.out / name)
        finally:
            tmp.unlink(missing_ok=True)

    def save_model(self) -> None:
        """``model.keras``, renamed into place once complete (``_save`` removes a partial file
        on any failure, Ctrl-C included: the checkpoints are what resume needs)."""
        try:
            with saving(self.target):
                self._save(MODEL_FILE)
        except DatasetError as exc:
            raise DatasetError(
                f"{exc}; the checkpoints are kept: pass resume=True once it can be written", param="out"
            ) from None


@contextmanager
def _tf_warnings_hidden() -> Iterator[None]:
    """TensorFlow's Python warnings (its ``tensorflow`` logger) held back for the block."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


class _Staging:
    """A new run is built in ``<out>.partial`` and renamed to ``out`` at its first checkpoint.

    So a run that fails before it has anything worth keeping (a bad input found while
    reading, a full disk, Ctrl-C) leaves nothing behind, and ``force=True`` replaces
    an old run only once the new one has a checkpoint. The caller holds the lock on
    ``out``, so the two side folders are this process's alone.
    """

    def __init__(self, out: Path, replace: bool) -> None:
        self.out, self.replace = out, replace
        self.folder = partial_path(out)
        self.old = out.with_name(out.name + ".replaced")
        self.created = self.published = False

    def create(self, config: TrainConfig, scene_json: str) -> None:
        """Clear what a killed run left, then make the staging folder with both configs."""
        if self.old.exists() or self.old.is_symlink():  # a replacement killed between its two renames
            raise DatasetError(
                f"out={str(self.out)!r}: {self.old} holds a run moved aside by a replacement that was stopped; "
                f"rename it back to {self.out.name} (or delete it) and rerun",
                param="out",
            )
        if self.folder.exists() or self.folder.is_symlink():
            if not is_run_folder(self.folder):
                raise DatasetError(
                    f"out={str(self.out)!r}: {self.folder} is in the way and is not a training run; move it away",
                    param="out",
                )
            shutil.rmtree(self.folder)  # the staging folder of a run that was killed
        self.folder.mkdir()
        self.created = True
        (self.folder / TRAIN_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
        (self.folder / SCENE_CONFIG_FILE).write_text(scene_json + "\n")

    def publish(self, trainer: Trainer) -> None:
        """Rename the staged run to ``out`` (moving an old run aside first), once."""
        if self.published:
            return
        trainer.writer.close()
        with saving(self.out):
            emptied = False
            if self.replace:
                self.out.rename(self.old)
            elif self.out.is_dir():
                self.out.rmdir()  # the empty folder the caller made for the run
                emptied = True
            try:
                self.folder.rename(self.out)
            except OSError:
                if self.replace:
                    self.old.rename(self.out)
                elif emptied:
                    self.out.mkdir()
                raise
        self.published = True
        trainer.relocate(self.out)
        if self.replace:
            shutil.rmtree(self.old, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staging folder if this process made it and never published it."""
        if self.created and not self.published:
            shutil.rmtree(self.folder, ignore_errors=True)


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

    Every argument is checked before anything is written. A new run appears at ``out``
    only with its first checkpoint: a failure before that leaves no folder behind.
    ``force=True`` replaces only a previous run folder, never one holding an input.
    Only one process trains into ``out`` at a time (``<out>.lock``).
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config={shown(config)} is invalid: must be a TrainConfig", param="config")
    for name, flag in (("resume", resume), ("force", force)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{name}={shown(flag)} is invalid: must be True or False", param=name)
    out = check_output_path(source_text(out, "out"), "out")
    source = open_source(train_source)
    batch_size, weights_file = config.optimiser.batch_size, config.model.backbone_weights
    if source.path is not None and source.num_scenes is not None and source.num_scenes < batch_size:
        raise ConfigError(
            f"batch_size={batch_size} is invalid: train_source={str(source.path)!r} has only "
            f"{source.num_scenes} scene(s)",
            param="batch_size",
            related=("train_source",),
        )
    scene = source.scene_config
    if scene.layers > scene.num_instances:
        raise ConfigError(
            f"train_source={shown(str(train_source))}: its scenes have {scene.layers} layers but "
            f"{scene.num_instances} instances, so layers past the {scene.num_instances}th are always empty: "
            f"train on data with at most {scene.num_instances} layers",
            param="train_source",
        )
    val_path = validation_file(val) if val is not None else None
    val_gt = _validation(val_path, source, config)
    if weights_file is not None:
        regular_input(weights_file, "backbone_weights")
    weights = Path(weights_file) if weights_file is not None else None
    inputs = [path for path in (source.path, val_path, weights) if path is not None]
    if _plan(out, resume, force, inputs) == "resume":  # refuse early, before the model is built
        _check_resume(out, config, source)
        check_writable(out / RUN_MARKER, "out")
    else:
        check_writable(out, "out")
    keras.utils.set_random_seed(config.optimiser.seed)
    model = build_model(config, DataSpec.from_scene(source.scene_config), source.scene_config)
    try:
        created = make_parents(out.parent)
    except OSError as exc:
        raise write_refusal(f"out={str(out)!r}: cannot create its folder", exc, "out") from None
    try:
        with ExitStack() as stack:
            with saving(out):
                stack.enter_context(exclusive_lock(out, "out"))
            plan = _plan(out, resume, force, inputs)  # again, now that no other trainer can change it
            if resume and plan == "new":
                warnings.warn(
                    f"resume=True: nothing to resume in {out} (no run there yet): starting a new run",
                    ShapesgenNote,
                    stacklevel=2,
                )
            if plan == "resume":
                _resume(model, source, out, config, val_path, val_gt, callbacks or Callbacks())
            else:
                _train_new(model, source, out, config, val_path, val_gt, callbacks or Callbacks(), plan == "replace")
    finally:
        remove_empty(created)
    return out


def _resume(
    model: keras.Model,
    source: Source,
    out: Path,
    config: TrainConfig,
    val: Path | None,
    val_gt: GroundTruth | None,
    callbacks: Callbacks,
) -> None:
    _check_resume(out, config, source)
    trainer = Trainer(model, source, out, config, resume=True, validating=val is not None)
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomically(out / TRAIN_CONFIG_FILE, text.encode(), force=True)  # the run's own file, under its lock
    epochs = config.optimiser.epochs
    if trainer.completed_epochs >= epochs:
        warnings.warn(
            f"epochs={epochs}: {out} has already trained {trainer.completed_epochs} epoch(s), so resume=True "
            "has nothing to train; pass a larger one to train more",
            ShapesgenNote,
            stacklevel=2,
        )
    try:
        trainer.fit(val, val_gt, callbacks)
        trainer.save_model()
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted; {trainer.completed_epochs} epoch(s) are checkpointed in {out}: pass resume=True to continue",
        ) from None


def _train_new(
    model: keras.Model,
    source: Source,
    out: Path,
    config: TrainConfig,
    val: Path | None,
    val_gt: GroundTruth | None,
    callbacks: Callbacks,
    replace: bool,
) -> None:
    staging = _Staging(out, replace)
    trainer: Trainer | None = None
    try:
        with saving(out):
            staging.create(config, source.scene_config.to_json())
        trainer = current = Trainer(model, source, staging.folder, config, resume=False, target=out)
        trainer.fit(val, val_gt, callbacks, after_checkpoint=lambda: staging.publish(current))
        staging.publish(trainer)  # a no-op unless fit had no epoch left to run
        trainer.save_model()
    except KeyboardInterrupt:
        staging.discard()
        if trainer is None or not staging.published:
            raise TrainingInterrupted("interrupted before the first epoch was checkpointed; nothing was kept") from None
        raise TrainingInterrupted(
            f"interrupted; {trainer.completed_epochs} epoch(s) are checkpointed in {out}: pass resume=True to continue"
        ) from None
    except BaseException:
        staging.discard()
        raise


def _repeat(path: Path, config: OptimiserConfig, epoch: int, steps: int) -> Iterator[dict[str, Any]]:
    """Exactly ``steps`` full batches, wrapping around the file as needed."""
    produced, sweep = 0, 0
    while produced < steps:
        before = produced
        for batch in file_batches(path, config.batch_size, config.seed, epoch * 1000 + sweep, shuffle=True):
            if len(batch["index"]) < config.batch_size:
                continue
            yield batch
            produced += 1
            if produced == steps:
                return
        if produced == before:  # a file whose scene count lies would loop for ever
            raise DatasetError(
                f"train_source={str(path)!r}: a pass over the file gave no full batch of {config.batch_size}; "
                f"check it with `shapesgen validate {path}`",
                param="train_source",
            )
        sweep += 1


def _trim_log(path: Path, epochs: int) -> None:
    """Keep the log rows of the epochs a resumed run restored, drop later ones (atomically)."""
    if not path.exists():
        return
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epochs]
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as exc:
        raise DatasetError(
            f"{path}: not a training log ({one_line(str(exc), 80) or type(exc).__name__}); fix or remove it to resume",
            param="out",
        ) from None
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue().encode(), param="out", force=True)


def _best_ap(path: Path) -> float:
    """The highest validation AP a run's log records (-1 if none)."""
    try:
        with path.open(newline="") as f:
            return max((float(r["AP"]) for r in csv.DictReader(f) if r.get("AP")), default=-1.0)
    except (OSError, ValueError, csv.Error):
        return -1.0


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
