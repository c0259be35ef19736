"""Render a whole dataset to HDF5: parallel, ordered, atomic and resumable.

The file is written to ``<out>.partial`` and renamed to ``<out>`` only once every
scene and the checksums are in. An interrupted render keeps its ``.partial`` file,
which ``resume=True`` continues to the same bytes an uninterrupted render writes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path

import h5py

from shapesgen.config import MAX_SEED, SceneConfig, StorageConfig
from shapesgen.errors import ConfigError, DatasetError, ShapesgenError
from shapesgen.files import partial_path
from shapesgen.hdf5 import DatasetWriter, EncodedBatch, encode_scenes
from shapesgen.scene import render_scenes

ProgressCallback = Callable[[int, int], None]


class RenderInterrupted(ShapesgenError):
    """The render was stopped (Ctrl-C); its partial file can be resumed."""

    exit_code = 130


def resolve_seed(config: SceneConfig) -> SceneConfig:
    """``seed=None`` means draw one now; the drawn seed is then recorded."""
    if config.seed is not None:
        return config
    return config.replace(seed=secrets.randbelow(MAX_SEED + 1))


def render_batch(config: SceneConfig, start: int, stop: int, compression_level: int) -> EncodedBatch:
    """Scenes ``start..stop-1``, compressed and hashed, ready for one write."""
    return encode_scenes(render_scenes(config, range(start, stop)), compression_level)


def _pool_context() -> BaseContext:
    """``fork`` on Linux (fast start, works from notebooks, stdin and unguarded
    scripts; rendering starts no threads); ``spawn`` elsewhere."""
    return get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _batches(
    config: SceneConfig, start: int, total: int, storage: StorageConfig, workers: int
) -> Iterator[EncodedBatch]:
    """Rendered batches in index order; with workers > 1 a bounded window runs ahead."""
    size, level = storage.batch_scenes, storage.compression_level
    bounds = [(lo, min(lo + size, total)) for lo in range(start, total, size)]
    if workers == 1:
        for lo, hi in bounds:
            yield render_batch(config, lo, hi, level)
        return
    with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_ignore_sigint) as pool:
        pending: deque[Future[EncodedBatch]] = deque()
        todo = iter(bounds)
        try:
            for lo, hi in todo:
                pending.append(pool.submit(render_batch, config, lo, hi, level))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                batch = pending.popleft().result()
                for lo, hi in todo:
                    pending.append(pool.submit(render_batch, config, lo, hi, level))
                    break
                yield batch
        finally:
            for future in pending:
                future.cancel()


def _read_partial_header(path: Path) -> tuple[SceneConfig, int, StorageConfig]:
    try:
        with h5py.File(path, "r") as file:
            storage = StorageConfig(**json.loads(str(file.attrs["storage"])))
            return SceneConfig.from_json(str(file.attrs["config"])), int(file.attrs["num_scenes"]), storage
    except (OSError, KeyError, ConfigError, json.JSONDecodeError, TypeError) as exc:
        raise DatasetError(
            f"{path}: the interrupted render cannot be read ({exc}); delete it or pass --force"
        ) from None


def _config_difference(ours: SceneConfig, theirs: SceneConfig) -> str:
    a, b = ours.to_dict(), theirs.to_dict()
    return ", ".join(f"{key}: {b[key]!r} in file vs {a[key]!r} asked" for key in sorted(a) if a[key] != b[key])


def _prepare_output(out: Path) -> None:
    if out.is_dir():
        raise DatasetError(f"--out {out} is a directory: give a file path such as {out / 'shapes.h5'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"--out {out}: cannot create directory {out.parent} ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK):
        raise DatasetError(f"--out {out}: directory {out.parent} is not writable")


def render_dataset(
    config: SceneConfig,
    out: str | Path,
    *,
    num_scenes: int,
    workers: int = 1,
    storage: StorageConfig | None = None,
    resume: bool = False,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Render ``num_scenes`` scenes of ``config`` into the HDF5 file ``out``.

    Returns the final path. Raises :class:`ShapesgenError` subclasses for bad input
    and :class:`RenderInterrupted` on Ctrl-C (the partial file is kept for resume).
    """
    if not isinstance(num_scenes, int) or num_scenes < 1:
        raise ConfigError(f"num_scenes={num_scenes!r} is invalid: must be an integer >= 1")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} is invalid: must be an integer >= 1")
    storage = storage or StorageConfig()
    out = Path(out)
    partial = partial_path(out)
    _prepare_output(out)

    if resume and partial.exists():
        file_config, file_scenes, storage = _read_partial_header(partial)  # chunks must match its filters
        if config.seed is None:
            config = config.replace(seed=file_config.seed)
        if file_config != config:
            raise ConfigError(
                f"--resume: {partial} was started with another config ({_config_difference(config, file_config)})"
            )
        if file_scenes != num_scenes:
            raise ConfigError(f"--resume: num_scenes={num_scenes} differs from the interrupted render's {file_scenes}")
    elif partial.exists() and not force:
        raise DatasetError(
            f"{partial}: an interrupted render exists; pass --resume to continue it or --force to start over"
        )
    else:
        if out.exists() and not force:
            if resume and _is_complete_match(out, config, num_scenes):
                return out
            raise DatasetError(f"--out {out} exists: pass --force to overwrite it")
        partial.unlink(missing_ok=True)
        config = resolve_seed(config)

    try:
        writer = DatasetWriter(partial, config, storage, num_scenes, progress)
    except KeyboardInterrupt:  # while checking a killed render's scenes: nothing was changed
        raise RenderInterrupted(f"interrupted while checking {partial}; it is kept: rerun with --resume") from None
    try:
        done = writer.scenes_written
        if progress:
            progress(done, num_scenes)
        for batch in _batches(config, done, num_scenes, storage, workers):
            writer.append(batch)
            done += batch.count
            if progress:
                progress(done, num_scenes)
        writer.finish()
    except KeyboardInterrupt:
        written = writer.scenes_written
        writer.close()
        raise RenderInterrupted(
            f"interrupted after {written} of {num_scenes} scenes; {partial} is kept: "
            "rerun with --resume to finish it, or delete it"
        ) from None
    except BaseException:
        writer.close()
        raise
    writer.close()
    os.replace(partial, out)
    return out


def _is_complete_match(out: Path, config: SceneConfig, num_scenes: int) -> bool:
    try:
        with h5py.File(out, "r") as file:
            file_config = SceneConfig.from_json(str(file.attrs["config"]))
            complete = bool(file.attrs["complete"]) and int(file.attrs["num_scenes"]) == num_scenes
    except (OSError, KeyError, ConfigError, json.JSONDecodeError):
        return False
    if config.seed is None:
        config = config.replace(seed=file_config.seed)
    return complete and file_config == config
