"""Render a whole dataset to HDF5: parallel, ordered, atomic and resumable.

The file is written to ``<out>.partial`` and renamed to ``<out>`` only once every
scene and the checksums are in. An interrupted render keeps its ``.partial`` file,
which ``resume=True`` continues (after Ctrl-C, a crash or SIGKILL) to the bytes an
uninterrupted render with the same recorded start time (``created``) writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import signal
import sys
import threading
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import h5py

from shapesgen.config import MAX_SEED, SceneConfig, StorageConfig
from shapesgen.engines import INTERRUPTS, die_with_parent, interrupts_held
from shapesgen.errors import ConfigError, DatasetError, FailedWrite, ResourceError, ShapesgenError, ShapesgenNote
from shapesgen.files import (
    check_output_path,
    check_replaceable,
    exclusive_lock,
    make_parents,
    partial_path,
    refuse_overwriting_inputs,
    refuse_run_files,
    remove_empty,
    write_refusal,
)
from shapesgen.limits import batch_scenes_for, check_disk, check_scene_fits
from shapesgen.renderer import render_scenes
from shapesgen.splits import Split, split_from_json
from shapesgen.storage.encode import EncodedBatch, encode_scenes
from shapesgen.storage.reader import not_ours
from shapesgen.storage.writer import DatasetWriter, NoSpace

ProgressCallback = Callable[[int, int], None]
Verifier = Callable[[dict[str, str]], None]


class RenderInterrupted(ShapesgenError):
    """The render was stopped (Ctrl-C); its partial file can be resumed."""

    exit_code = 130


class RenderNote(ShapesgenNote):
    """The render adjusted something (e.g. lowered the worker count); the data is unchanged."""


def empty_layers_note(config: SceneConfig) -> str | None:
    """The note for layers that no pixel can fill (more layers than instances), or ``None``."""
    if config.layers <= config.num_instances:
        return None
    return (
        f"layers={config.layers} is more than the {config.num_instances} instances a scene holds: layers "
        f"{config.num_instances + 1} to {config.layers} are always empty (and stored all the same)"
    )


MAX_SCENES = 10**8  # one file; the reader holds 8 bytes of offsets per scene in memory


def resolve_seed(config: SceneConfig) -> SceneConfig:
    """``seed=None`` means draw one now; the drawn seed is then recorded."""
    if config.seed is not None:
        return config
    return config.replace(seed=secrets.randbelow(MAX_SEED + 1))


def render_batch(config: SceneConfig, start: int, stop: int, compression_level: int) -> EncodedBatch:
    """Scenes ``start..stop-1``, compressed and hashed, ready for one write."""
    return encode_scenes(render_scenes(config, range(start, stop)), compression_level)


def fresh_digests(config: SceneConfig, start: int, stop: int) -> dict[str, list[bytes]]:
    """The per-scene digests a fresh render gives scenes ``start..stop-1``: the writer's
    ``verify``, which checks a killed render's file against them when resuming it."""
    return render_batch(config, start, stop, 0).digests


def _pool_context() -> BaseContext:
    """``fork`` on Linux (fast start, works from notebooks, stdin and unguarded
    scripts; rendering starts no threads); ``spawn`` elsewhere."""
    return get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _worker_init() -> None:
    """Workers leave Ctrl-C and SIGTERM to the parent, and die with it: on Linux the
    kernel sends them SIGKILL when the parent dies (even by ``kill -9``), so no orphan
    keeps rendering or holds the output's files open."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # held by the parent while it forked this worker
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)
    die_with_parent()


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored for the block (in the main thread; elsewhere they are not ours)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = [signal.signal(number, signal.SIG_IGN) for number in INTERRUPTS]
    try:
        yield
    finally:
        for number, handler in zip(INTERRUPTS, previous, strict=True):
            signal.signal(number, handler)


def _batches(
    config: SceneConfig, start: int, total: int, size: int, level: int, workers: int, first: int = 0
) -> Iterator[EncodedBatch]:
    """Rendered batches of ``size`` scenes in index order, from scene ``first + start`` to
    ``first + total``; with workers > 1 a bounded window runs ahead."""
    bounds = [(first + lo, first + min(lo + size, total)) for lo in range(start, total, size)]
    if workers == 1:
        for lo, hi in bounds:
            yield render_batch(config, lo, hi, level)
        return
    pending: deque[Future[EncodedBatch]] = deque()
    todo = iter(bounds)
    pool = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_worker_init)
    try:
        with interrupts_held():  # the workers the first submit forks start with Ctrl-C held, then ignore it
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
    except BaseException:
        # Ctrl-C, SIGTERM, a failure, or the consumer gone: the batches not started are cancelled
        # and the running ones (under a second each) end. Not killed: a worker killed while it
        # sends its batch leaves the pool's reader waiting for the rest of it for ever. Nor cut
        # short: a second Ctrl-C during the shutdown left the workers waiting for work and this
        # process waiting for them at exit, for ever.
        with _interrupts_ignored():
            pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _check_own_partial(path: Path) -> None:
    """Refuse a ``<out>.partial`` that no render of ours began: neither resumed nor, with
    force=True, deleted. Ours is a plain HDF5 file that records the shapesgen format (or no
    longer reads, as a killed render can leave it)."""
    foreign = not_ours(path, empty_is_ours=True)
    if foreign is not None:
        raise DatasetError(
            f"{path} exists and {foreign}, not an interrupted render: move it away or write elsewhere", param="out"
        )


def _read_partial_header(path: Path) -> tuple[SceneConfig, int, StorageConfig, Split | None, int]:
    try:
        with h5py.File(path, "r") as file:
            storage = StorageConfig(**json.loads(str(file.attrs["storage"])))
            split = split_from_json(str(file.attrs.get("split", "null")))
            first = int(file.attrs.get("first_scene", 0))
            config = SceneConfig.from_json(str(file.attrs["config"]))
            return config, int(file.attrs["num_scenes"]), storage, split, first
    except (OSError, KeyError, ConfigError, ValueError, TypeError, RecursionError) as exc:
        raise DatasetError(
            f"{path}: the interrupted render cannot be read ({exc}); delete it or pass force=True", param="out"
        ) from None


def _split_request(split: Split | str | None) -> Split | None:
    return Split(name=split) if isinstance(split, str) else split


def _resolve_as_file(
    config: SceneConfig, split: Split | None, file_config: SceneConfig, file_split: Split | None
) -> tuple[SceneConfig, Split | None]:
    """The config (and split) asked for, with ``seed=None`` taken from an existing file:
    its split's base seed for a split, else its seed."""
    if config.seed is None:
        base = file_split.base_seed if split is not None and file_split is not None else file_config.seed
        config = config.replace(seed=base)
    return split.apply(config) if split is not None else (config, None)


def _split_label(split: Split | None) -> str:
    return "no split" if split is None else f"split {split.reference or split.name!r} of base seed {split.base_seed}"


def _config_difference(ours: SceneConfig, theirs: SceneConfig) -> str:
    a, b = ours.to_dict(), theirs.to_dict()
    return ", ".join(f"{key}: {b[key]!r} in file vs {a[key]!r} asked" for key in sorted(a) if a[key] != b[key])


def _prepare_output(out: Path) -> list[Path]:
    """Check ``out`` can be written; create its missing parent folders and return them."""
    out = check_output_path(out, "out")
    if out.is_symlink():
        raise DatasetError(
            f"out={str(out)!r} is a symbolic link: give the path of a file (a link is never replaced)", param="out"
        )
    if out.is_dir():
        raise DatasetError(f"out={str(out)!r} is a folder: give a file path such as {out / 'shapes.h5'}", param="out")
    if out.exists() and not out.is_file():
        raise DatasetError(f"out={str(out)!r} exists and is not a regular file", param="out")
    try:
        created = make_parents(out.parent)
    except OSError as exc:
        raise write_refusal(f"out={str(out)!r}: cannot create folder {out.parent}", exc, "out") from None
    if not os.access(out.parent, os.W_OK):
        raise DatasetError(f"out={str(out)!r}: folder {out.parent} is not writable", param="out")
    return created


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def effective_workers(workers: int, num_scenes: int, batch: int) -> tuple[int, str | None]:
    """Workers actually started: at most one per batch and per usable core.

    Returns the count and a note when it was lowered (the output is identical for
    any count, so lowering it only avoids idle processes)."""
    cores = usable_cores()
    batches = -(-num_scenes // batch)
    used = max(1, min(workers, batches, cores))
    if used == workers:
        return used, None
    why = f"{batches} batch(es) of {batch} scenes" if used == batches else f"{cores} usable core(s)"
    return used, lowered_note(workers, used, why)


def lowered_note(workers: int, used: int, why: str) -> str:
    """The note of a worker count lowered to ``used`` because of ``why``."""
    return f"workers={workers} lowered to {used} ({why}); the output is identical for any count"


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
    inputs: dict[str, str | Path | None] | None = None,
    split: Split | str | None = None,
    verify: Verifier | None = None,
    first_scene: int = 0,
    created: str | None = None,
    on_batch: Callable[[EncodedBatch], None] | None = None,
    shard_task: bool = False,
) -> Path:
    """Render ``num_scenes`` scenes of ``config`` into the HDF5 file ``out``.

    Returns the final path. Raises :class:`ShapesgenError` subclasses for bad input
    (checked before any scene is rendered) and :class:`RenderInterrupted` on Ctrl-C
    (the partial file is kept for resume). The render holds ``<out>.lock`` from its
    first check to the final rename: another process cannot resume, force over or
    publish the same output meanwhile. Lowered worker counts are reported with
    :mod:`warnings` (``RenderNote``). ``inputs`` names files the caller read (e.g.
    ``{"config": path}``): ``out`` may not overwrite them, even with ``force=True``.

    ``split`` (a name or a :class:`~shapesgen.splits.Split`) renders that split of
    ``config`` (whose seed is the base seed; ``None`` draws one) and records it.
    ``verify(checksums)`` is called with the finished file's checksums before it is
    published; if it raises, the file is removed and the error propagates.

    ``first_scene`` renders scenes ``first_scene .. first_scene + num_scenes - 1`` (a shard of
    a sharded dataset, :mod:`shapesgen.shards`): each is the scene of that index, byte for
    byte. ``created`` (ISO 8601) is recorded as the start time instead of now. The file's
    bytes depend only on the config, seed, ``num_scenes``, ``first_scene``, storage and
    ``created``: not on the worker count, timing, or an interruption resumed (see
    :class:`DatasetWriter`).
    ``shard_task=True`` is a sharded render's task writing its shard (:mod:`shapesgen.shards`):
    only it may write into a sharded dataset's folder.
    ``on_batch(batch)`` sees each encoded batch once it is written (its per-scene digests,
    e.g.); a resumed render does not show it the scenes an earlier run wrote.
    """
    if not isinstance(num_scenes, int) or isinstance(num_scenes, bool) or num_scenes < 1:
        raise ConfigError(f"num_scenes={num_scenes!r} is invalid: must be an integer >= 1", param="num_scenes")
    if num_scenes > MAX_SCENES:
        raise ConfigError(
            f"num_scenes={num_scenes} is invalid: one file holds at most {MAX_SCENES:,} scenes", param="num_scenes"
        )
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers={workers!r} is invalid: must be an integer >= 1", param="workers")
    if not isinstance(first_scene, int) or isinstance(first_scene, bool) or first_scene < 0:
        raise ConfigError(f"first_scene={first_scene!r} is invalid: must be an integer >= 0", param="first_scene")
    if resume and force:
        raise ConfigError(
            "resume=True and force=True conflict: resume continues an interrupted render, force starts over; "
            "pass one of them",
            param="resume",
            related=("force",),
        )
    if isinstance(out, str) and out.endswith(("/", os.sep)) and out.strip("/" + os.sep):
        raise ConfigError(
            f"out={out!r} ends with {out[-1]!r}, a folder: one file is written there; drop the {out[-1]!r}, or "
            "write a sharded folder with shard_size=N",
            param="out",
            related=("shard_size",),
        )
    storage = storage or StorageConfig()
    out = check_output_path(out, "out")
    refuse_overwriting_inputs(out, "out", inputs or {})
    refuse_run_files(out, "out", in_datasets=not shard_task)
    partial = partial_path(out)
    parents = _prepare_output(out)
    try:
        with exclusive_lock(out, "out"):
            return _render_locked(
                config,
                _split_request(split),
                out,
                num_scenes,
                workers,
                storage,
                resume,
                force,
                progress,
                verify,
                first_scene,
                created,
                on_batch,
            )
    except BaseException:
        if not partial.exists():
            remove_empty(parents)
        raise


def _render_locked(
    config: SceneConfig,
    split: Split | None,
    out: Path,
    num_scenes: int,
    workers: int,
    storage: StorageConfig,
    resume: bool,
    force: bool,
    progress: ProgressCallback | None,
    verify: Verifier | None,
    first_scene: int = 0,
    created: str | None = None,
    on_batch: Callable[[EncodedBatch], None] | None = None,
) -> Path:
    """:func:`render_dataset` once ``<out>.lock`` is held."""
    partial = partial_path(out)
    if partial.exists() or partial.is_symlink():
        _check_own_partial(partial)
    resuming = resume and partial.exists()
    if resuming:
        file_config, file_scenes, storage, file_split, file_first = _read_partial_header(partial)  # its filters
        config, split = _resolve_as_file(config, split, file_config, file_split)
        if file_split != split:
            raise ConfigError(
                f"resume=True: {partial} was started as {_split_label(file_split)}, not {_split_label(split)}",
                param="resume",
            )
        if file_config != config:
            raise ConfigError(
                f"resume=True: {partial} was started with another config ({_config_difference(config, file_config)})",
                param="resume",
            )
        if file_scenes != num_scenes:
            raise ConfigError(
                f"num_scenes={num_scenes} differs from the interrupted render's {file_scenes} (resume=True)",
                param="num_scenes",
            )
        if file_first != first_scene:
            raise ConfigError(
                f"first_scene={first_scene} differs from the interrupted render's {file_first} (resume=True)",
                param="first_scene",
            )
    elif partial.exists() and not force:
        raise DatasetError(
            f"{partial}: an interrupted render exists; pass resume=True to continue it or force=True to start over",
            param="out",
        )
    else:
        if out.exists() and not force:
            if resume and _is_complete_match(out, config, split, num_scenes, verify, first_scene):
                return out
            raise DatasetError(f"out={str(out)!r} exists: pass force=True to overwrite it", param="out")
        check_replaceable(out, "out", force, "HDF5")  # force replaces an earlier dataset, not any file
        if out.exists() and (why := not_ours(out, empty_is_ours=True)):
            raise ConfigError(
                f"out={str(out)!r} {why}: force=True replaces only an earlier shapesgen dataset; give another path "
                "(or delete the file yourself)",
                param="out",
            )
        config = resolve_seed(config)
        if split is not None:
            config, split = split.apply(config)
    batch = batch_scenes_for(config, storage.batch_scenes)
    workers, note = effective_workers(workers, num_scenes, batch)
    check_scene_fits(config, workers)
    if (empty := empty_layers_note(config)) is not None:
        warnings.warn(empty, RenderNote, stacklevel=3)
    if not resuming:
        check_disk_for(config, storage, out.parent, num_scenes, first_scene)
        partial.unlink(missing_ok=True)
    if note:
        warnings.warn(note, RenderNote, stacklevel=3)

    try:
        with _quiet_h5py_failures() if resuming else contextlib.nullcontext():  # a rebuild's write may fail
            writer = DatasetWriter(
                partial,
                config,
                storage,
                num_scenes,
                progress,
                split,
                first_scene,
                created,
                verify=functools.partial(fresh_digests, config),
            )
    except KeyboardInterrupt:  # while checking a killed render's scenes: nothing was changed
        raise RenderInterrupted(f"interrupted while checking {partial}; it is kept: rerun with resume=True") from None
    except (OSError, RuntimeError) as exc:
        if not resuming:
            partial.unlink(missing_ok=True)
            raise ResourceError(f"out={str(out)!r}: cannot create {partial} ({_reason(exc)})", param="out") from None
        kind = ResourceError if isinstance(exc, NoSpace) else FailedWrite  # NoSpace: refused before any write
        message = f"resuming {partial.name} failed ({_reason(exc)}); it is kept: rerun with resume=True"
        raise kind(message, param="out") from None
    identity = _identity(partial)
    try:
        done = writer.scenes_written
        if progress:
            progress(done, num_scenes)
        level = storage.compression_level
        for encoded in _batches(config, done, num_scenes, batch, level, workers, first_scene):
            with _stopped_by_system(writer, partial, num_scenes, "writing", resuming):
                writer.append(encoded)
            if on_batch is not None:
                on_batch(encoded)
            done += encoded.count
            if progress:
                progress(done, num_scenes)
        with _stopped_by_system(writer, partial, num_scenes, "writing", resuming):
            writer.finish()
    except KeyboardInterrupt:
        written = writer.scenes_written
        writer.close()
        raise RenderInterrupted(
            f"interrupted after {written} of {num_scenes} scenes; {partial} is kept: "
            "rerun with resume=True to finish it, or delete it"
        ) from None
    except BrokenProcessPool:
        reason = "a render worker died (killed, or out of memory)"
        raise _system_failure(writer, partial, num_scenes, "rendering", reason, resuming) from None
    except BaseException:
        writer.close()
        raise
    writer.close()
    try:
        replaced = _identity(partial) != identity
    except FileNotFoundError:
        replaced = True
    if replaced:
        raise ResourceError(
            f"out={str(out)!r}: {partial} was removed or replaced by another program while rendering; "
            "nothing was published",
            param="out",
        )
    if verify is not None:
        try:
            verify(_stored_checksums(partial))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, out)
    return out


def _stored_checksums(path: Path) -> dict[str, str]:
    with h5py.File(path, "r") as file:
        sums: dict[str, str] = json.loads(str(file.attrs["checksums"]))
    return sums


def _reason(exc: BaseException) -> str:
    """Why the system refused: the error number's text where there is one (h5py's own text
    for a full disk is a paragraph of HDF5 internals)."""
    if isinstance(exc, NoSpace):
        return str(exc.strerror)
    number = getattr(exc, "errno", None)
    if isinstance(exc, RuntimeError) and (found := re.search(r"\berrno = (\d+)", str(exc))):
        number = int(found.group(1))  # h5py's RuntimeError names the system error only in its text
    if isinstance(number, int) and number > 0:
        return os.strerror(number)
    return str(getattr(exc, "strerror", None) or exc)


@contextlib.contextmanager
def _stopped_by_system(
    writer: DatasetWriter, partial: Path, num_scenes: int, doing: str, resuming: bool
) -> Iterator[None]:
    """A write the system refuses (h5py reports a full disk as OSError or RuntimeError)
    becomes one :class:`ResourceError` (see :func:`_system_failure`); one that HDF5 began, a
    :class:`FailedWrite`."""
    try:
        yield
    except NoSpace as exc:  # refused before any byte was written: the file is intact
        raise _system_failure(writer, partial, num_scenes, doing, _reason(exc), resuming) from None
    except (OSError, RuntimeError) as exc:
        reason = _reason(exc)
        with _quiet_h5py_failures():
            traceback.clear_frames(exc.__traceback__)  # frees the failed write's h5py objects now
            failure = _system_failure(writer, partial, num_scenes, doing, reason, resuming)
        raise FailedWrite(str(failure), param=failure.param) from None


@contextlib.contextmanager
def _quiet_h5py_failures() -> Iterator[None]:
    """No output from h5py's failed closes of a file a write broke (it prints each through
    both hooks, a traceback apiece): the command says what failed in one line."""
    hooks = sys.unraisablehook, sys.excepthook
    sys.unraisablehook, sys.excepthook = _ignore_unraisable, _ignore_exception
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = hooks


def _ignore_unraisable(unraisable: Any) -> None:
    """Say nothing of an error raised where it cannot be (h5py closing a file a write broke)."""


def _ignore_exception(*exc_info: Any) -> None:
    """Print no traceback (h5py prints one for each failed close before the unraisable hook)."""


def _system_failure(
    writer: DatasetWriter, partial: Path, num_scenes: int, doing: str, reason: str, resuming: bool
) -> ResourceError:
    """Close the partial file after a failure the system caused. Scenes already written
    are kept for resume=True (a torn tail is checked then); a file with none is removed."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.close()
    written = None  # unknown until read: unreadable, the file is broken (kept only if an earlier run began it)
    with contextlib.suppress(OSError, RuntimeError, KeyError, ValueError), h5py.File(partial, "r") as file:
        written = int(file.attrs["scenes_written"])
    if written == 0 and not resuming:
        partial.unlink(missing_ok=True)
        kept = "nothing was kept"
    elif written is None and not resuming:  # the failed write broke the file this run began: nothing to resume
        partial.unlink(missing_ok=True)
        kept = "the file it broke was removed"
    elif written is None:
        kept = f"{partial} is kept, but the failed write broke it (it no longer reads): delete it and render again"
    else:
        kept = f"{partial} is kept with {written} of {num_scenes} scenes: rerun with resume=True to finish it"
    return ResourceError(f"{doing} {partial.name} failed ({reason}); {kept}", param="out")


def _identity(path: Path) -> tuple[int, int]:
    """Device and inode: which file ``path`` names now."""
    info = path.stat()
    return info.st_dev, info.st_ino


def check_disk_for(
    config: SceneConfig,
    storage: StorageConfig,
    folder: Path,
    num_scenes: int,
    sample: int = 0,
    asked: int | None = None,
    files: int = 1,
) -> None:
    """Refuse ``num_scenes`` scenes of ``config``, in ``files`` files, where ``folder``'s disk
    cannot hold them (:class:`ConfigError` naming ``num_scenes``, ``asked`` if given), from the
    encoded size of scene ``sample``."""
    encoded = render_batch(config, sample, sample + 1, storage.compression_level)
    check_disk(folder, num_scenes, encoded.stored_bytes / max(encoded.count, 1), asked, files)


def _is_complete_match(
    out: Path, config: SceneConfig, split: Split | None, num_scenes: int, verify: Verifier | None, first_scene: int = 0
) -> bool:
    """Whether ``out`` is already the finished render asked for (``verify`` then checks it)."""
    try:
        with h5py.File(out, "r") as file:
            file_config = SceneConfig.from_json(str(file.attrs["config"]))
            file_split = split_from_json(str(file.attrs.get("split", "null")))
            complete = (
                bool(file.attrs["complete"])
                and int(file.attrs["num_scenes"]) == num_scenes
                and int(file.attrs.get("first_scene", 0)) == first_scene
            )
    except (OSError, KeyError, ConfigError, json.JSONDecodeError):
        return False
    config, split = _resolve_as_file(config, split, file_config, file_split)
    matches = complete and file_config == config and file_split == split
    if matches and verify is not None:
        verify(_stored_checksums(out))
    return matches
