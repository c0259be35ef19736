"""Training with Keras ``Model.fit`` on whichever backend Keras runs: the route to an
accelerator where TensorFlow is not installed (JAX on a GPU).

``shapesgen train`` is the full trainer (TensorFlow: checkpoints, ``--resume``, validation
AP per epoch, TensorBoard). This one is lean, for a run bounded by wall-clock time:
scenes are rendered on the fly in worker processes, in scene order (fresh images, as the
paper trained; the TensorFlow backend reads one batch ahead per chunk and skips it), and
the learning rate warms up, then follows a cosine over what is left of the budget: the
time or, if it ends first, the image count. The rate is set between chunks of steps, so
the compiled step is built once. There are no checkpoints: a run of minutes is cheaper to
repeat than to resume.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np

from amodal_model.config import _invalid, _is_int, _is_number
from amodal_model.data import live_batches, visible_targets
from shapesgen.config import SceneConfig
from shapesgen.engines import interrupts_held, leave_interrupts_to_parent
from shapesgen.errors import ConfigError, ResourceError, shown

TARGET_KEYS = ("layers", "class_layers", "instance_classes")
"""What :meth:`~amodal_model.model.LayeredEmbeddingModel.compute_loss` reads from ``y``."""


@dataclass(frozen=True)
class FitBudget:
    """How long to train and how the learning rate moves: ``warmup_chunks`` chunks rising
    linearly to the base rate, then a cosine from it down to ``final_fraction`` of it that
    ends when ``seconds`` of training (compilation included) are spent or ``max_images``
    images are trained, whichever comes first."""

    seconds: float
    chunk_steps: int = 100
    warmup_chunks: int = 2
    final_fraction: float = 0.01
    max_images: int | None = None

    def __post_init__(self) -> None:
        checks = (
            ("seconds", _is_number(self.seconds) and self.seconds > 0, "a finite number > 0"),
            ("chunk_steps", _is_int(self.chunk_steps) and self.chunk_steps >= 1, "an integer >= 1"),
            ("warmup_chunks", _is_int(self.warmup_chunks) and self.warmup_chunks >= 0, "an integer >= 0"),
            ("final_fraction", _is_number(self.final_fraction) and 0 <= self.final_fraction <= 1, "a number in [0, 1]"),
            (
                "max_images",
                self.max_images is None or _is_int(self.max_images) and self.max_images >= 1,
                "an integer >= 1",
            ),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise _invalid(name, getattr(self, name), allowed)

    def progress(self, elapsed: float, images: int, decay_start: float, decay_images: int) -> float:
        """How far the decay has come, from 0 to 1: by time or by images, whichever is further."""
        by_time = (elapsed - decay_start) / max(self.seconds - decay_start, 1e-9)
        by_images = 0.0
        if self.max_images is not None:
            by_images = (images - decay_images) / max(self.max_images - decay_images, 1)
        return min(max(by_time, by_images, 0.0), 1.0)


def learning_rate_at(budget: FitBudget, base: float, chunk: int, progress: float) -> float:
    """The rate for chunk ``chunk`` (from 0): the warm-up's step, or the cosine at
    ``progress`` (:meth:`FitBudget.progress`) of the decay."""
    if chunk < budget.warmup_chunks:
        return base * (chunk + 1) / (budget.warmup_chunks + 1)
    floor = budget.final_fraction
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


_WORKER_CONFIG: tuple[SceneConfig, bool] | None = None


def _start_worker(config_json: str, visible: bool) -> None:
    global _WORKER_CONFIG
    leave_interrupts_to_parent()
    _WORKER_CONFIG = (SceneConfig.from_json(config_json), visible)


def _render_batch(start: int, size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    assert _WORKER_CONFIG is not None
    config, visible = _WORKER_CONFIG
    batch = next(live_batches(config, size, start, 1))
    if visible:
        batch = visible_targets(batch)
    return batch["image"], {key: batch[key] for key in TARGET_KEYS}


class RenderedBatches:
    """Training batches ``(images float32, targets)`` of scenes ``first_index, first_index + 1,
    ...`` rendered by ``workers`` processes, at most ``ahead`` batches in flight (spawned
    processes: the backend's threads in this one are never forked). A worker that dies
    (killed, out of memory) ends the iteration with a :class:`ResourceError`, not a hang."""

    def __init__(
        self, config: SceneConfig, batch_size: int, visible: bool, workers: int, first_index: int = 0, ahead: int = 64
    ) -> None:
        for name, value in (("workers", workers), ("batch_size", batch_size), ("ahead", ahead)):
            if not _is_int(value) or value < 1:
                raise _invalid(name, value, "an integer >= 1")
        self.batch_size, self.next_start, self.ahead = batch_size, first_index, ahead
        self.images = 0
        self.pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(config.to_json(), visible),
        )
        self.pending: deque[Future[tuple[np.ndarray, dict[str, np.ndarray]]]] = deque()

    def __iter__(self) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        while True:
            try:
                while len(self.pending) < self.ahead:
                    with interrupts_held():  # a worker the submit spawns starts with Ctrl-C held
                        self.pending.append(self.pool.submit(_render_batch, self.next_start, self.batch_size))
                    self.next_start += self.batch_size
                images, targets = self.pending.popleft().result()
            except BrokenProcessPool:
                raise ResourceError(
                    "a rendering worker died (out of memory?): use fewer render workers or a smaller batch"
                ) from None
            self.images += len(images)
            yield images.astype(np.float32), targets

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RenderedBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fit_for(
    model: Any,
    batches: Iterator[tuple[np.ndarray, dict[str, np.ndarray]]],
    base_learning_rate: float,
    budget: FitBudget,
    batch_size: int,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` (a :class:`~amodal_model.model.LayeredEmbeddingModel`) on ``batches``
    within ``budget``; returns one row per chunk (rate, mean loss, images, seconds,
    images/s; the first chunk's time includes compiling the step)."""
    import keras

    if not _is_number(base_learning_rate) or base_learning_rate < 0:
        raise _invalid("learning_rate", base_learning_rate, "a finite number >= 0")
    optimizer = keras.optimizers.Adam(learning_rate=base_learning_rate)
    model.compile(optimizer=optimizer, jit_compile=keras.backend.backend() == "jax")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    decay_start, decay_images = 0.0, 0
    images = 0
    chunk = 0
    while True:
        elapsed = time.perf_counter() - started
        if chunk == budget.warmup_chunks:
            decay_start, decay_images = elapsed, images
        if elapsed >= budget.seconds or (budget.max_images is not None and images >= budget.max_images):
            return rows
        steps = budget.chunk_steps
        if budget.max_images is not None:
            steps = min(steps, math.ceil((budget.max_images - images) / batch_size))
        progress = budget.progress(elapsed, images, decay_start, decay_images)
        rate = learning_rate_at(budget, base_learning_rate, chunk, progress)
        optimizer.learning_rate = rate
        tick = time.perf_counter()
        history = model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        seconds = time.perf_counter() - tick
        loss = float(history.history["loss"][-1])
        if not math.isfinite(loss):
            raise ConfigError(
                f"learning_rate={shown(base_learning_rate)} is invalid here: the loss became {loss} in chunk "
                f"{chunk + 1}; use a smaller one",
                param="learning_rate",
            )
        images += steps * batch_size
        row = {
            "chunk": chunk + 1,
            "learning_rate": float(f"{rate:.6g}"),
            "loss": round(loss, 6),
            "images": images,
            "seconds": round(time.perf_counter() - started, 2),
            "images_per_s": round(steps * batch_size / seconds, 2),
        }
        rows.append(row)
        if log:
            log(row)
        chunk += 1
