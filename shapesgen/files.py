"""Writing files so that a reader never sees half of one, and nothing is lost.

Three rules every writer in shapesgen follows:

* build at a temporary path (``<path>.partial``) and rename on success;
* hold an exclusive lock (``<path>.lock``, an advisory ``flock``) from the first
  check of the target until the rename, so two processes never build or replace the
  same output at once;
* replace or delete a folder only if it is provably ours (see
  :func:`is_export_folder`) and never one that holds an input.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shapesgen.errors import ConfigError, DatasetError, ResourceError, one_line, shown

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def partial_path(path: Path) -> Path:
    """Where ``path`` is built before it is renamed into place."""
    return path.with_name(path.name + ".partial")


def lock_path(path: Path) -> Path:
    """The lock file that guards building ``path``."""
    return path.with_name(path.name + ".lock")


def locked_elsewhere(path: Path) -> bool:
    """Whether another process now holds ``<path>.lock`` (is building ``path``), found
    without writing anything: a missing or unreadable lock file, or a free one, is no."""
    lock = lock_path(path)
    if fcntl is None or lock.is_symlink() or not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


NAME_MAX = 255  # bytes in one path component on Linux and macOS file systems
SIDE_SUFFIX = len(".partial.lock")  # the longest name we add beside an output
RESERVED_SUFFIXES = (".partial", ".lock")  # what we add beside an output: never an output's own name


# A training run's folder (amodal_model.train), declared here, where outputs are checked: no
# command writes over a run's own files.
MODEL_FILE = "model.keras"
BEST_MODEL_FILE = "best.keras"
TRAIN_CONFIG_FILE = "train_config.json"  # marks a run folder
SCENE_CONFIG_FILE = "scene_config.json"
RUN_OWNED = (
    MODEL_FILE,
    BEST_MODEL_FILE,
    TRAIN_CONFIG_FILE,
    SCENE_CONFIG_FILE,
    "metrics.csv",
    "checkpoints",
    "tensorboard",
    "MODEL_CARD.md",
)
# Folders shapesgen writes as a whole, declared here for the same reason: a sharded dataset
# (shapesgen.shards; its manifest names it) and a COCO export (shapesgen.coco; its checksum
# list and annotations name it). A file written into one would be taken for part of it.
SHARDED_MARKER = "manifest.json"
SHARDED_FORMAT = "shapesgen-shards"  # the manifest's format name: a user's manifest.json is not one
EXPORT_CHECKSUMS = "SHA256SUMS"  # an export lists its annotations.json in it


def resolved(path: Path) -> Path:
    """``path`` with symbolic links resolved; a link loop is a :class:`DatasetError`."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError("Symlink loop") before Python 3.13
        raise DatasetError(f"{path}: cannot resolve it ({one_line(exc)}): a symbolic link loop?") from None


def check_output_path(path: str | Path, param: str) -> Path:
    """Refuse output paths that can never be a file of ours: empty, ``.``, ``/``, ``..``,
    a link loop, names too long for the file system once ``.partial`` or ``.lock`` is added,
    or names ending in one of them (a render started over deletes ``<out>.partial``)."""
    text = str(path)
    if not text.strip():
        raise ConfigError(f"{param}='' is invalid: give a path", param=param)
    candidate = Path(path)
    if candidate.name in ("", ".", "..") or resolved(candidate) == Path(resolved(candidate).anchor):
        raise ConfigError(f"{param}={text!r} is invalid: give a path that names a new file or folder", param=param)
    if candidate.name.endswith(RESERVED_SUFFIXES):
        raise ConfigError(
            f"{param}={shown(text)} is invalid: names ending in {' or '.join(RESERVED_SUFFIXES)} are kept for the "
            "files made beside an output (an interrupted render, a lock), which a later command may delete",
            param=param,
        )
    for part in candidate.parts:
        limit = NAME_MAX - (SIDE_SUFFIX if part == candidate.name else 0)
        if len(os.fsencode(part)) > limit:
            raise ConfigError(
                f"{param}={shown(text)} is invalid: the name {shown(part, 30)} is longer than {limit} bytes "
                f"(the file system allows {NAME_MAX}, and .partial/.lock files are made beside an output)",
                param=param,
            )
    for folder in candidate.absolute().parents:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ConfigError(
                    f"{param}={shown(text)} is invalid: {folder} is {_what_is(folder)}, not a folder: "
                    "give a path under a folder",
                    param=param,
                )
            break
    return candidate


def _what_is(path: Path) -> str:
    """What ``path`` (not a folder) is, for a message."""
    if path.is_file():
        return "a file"
    return file_kind(path.stat().st_mode) if path.exists() else "a dangling link"


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, for a message (from its ``st_mode``)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_input(path: str | Path, param: str | None) -> Path:
    """``path`` if it is an existing regular file, judged from its metadata alone: FIFOs,
    devices and folders are refused without opening them (opening a FIFO blocks until a
    writer appears). Messages start with ``param=path``, or the path alone without a param."""
    path = Path(path)
    where = f"{param}={str(path)!r}" if param else str(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DatasetError(f"{where}: no such file", param=param) from None
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read ({exc.strerror})", param=param) from None
    if stat.S_ISDIR(mode) and (path / "manifest.json").is_file():
        raise DatasetError(
            f"{where} is a sharded dataset (a folder with manifest.json): pass its single-file view "
            f"{path / 'dataset.h5'}",
            param=param,
        )
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{where} is {file_kind(mode)}, not a file", param=param)
    return path


def contains(folder: Path, path: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symlinks resolved)."""
    folder, path = resolved(folder), resolved(path)
    return path == folder or folder in path.parents


LOCK_MARKER = b"shapesgen lock"
LOCK_ATTEMPTS = 100  # lock files replaced under us this often mean something else is at work
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a lock is never reached through a link


def refuse_overwriting_inputs(out: Path, param: str, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output path that is, or holds, one of the command's inputs (``force``
    replaces outputs, never inputs); ``inputs`` maps parameter names to paths."""
    for name, path in inputs.items():
        if path is not None and Path(path).exists() and contains(out, Path(path)):
            raise ConfigError(
                f"{param}={str(out)!r} would overwrite the input {name}={str(path)!r}: choose another output",
                param=param,
                related=(name,),
            )


class LockHeld(ResourceError):
    """Another live process holds the lock of an output."""


REFUSED_BY_PERMISSIONS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
REFUSED_BY_THE_PATH = frozenset({errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST})
USER_REFUSALS = REFUSED_BY_PERMISSIONS | REFUSED_BY_THE_PATH
"""Errors of a write that the user's choice of place causes: bad input, exit 2."""


def refusal_kind(number: int | None) -> type[DatasetError] | type[ResourceError]:
    """The error class for a write refused with errno ``number`` (``None``: none known), as
    :func:`write_refusal` classifies it."""
    return DatasetError if number in USER_REFUSALS else ResourceError


def write_refusal(message: str, exc: OSError, param: str) -> DatasetError | ResourceError:
    """The one-line error for a write (a file or a folder) the system refused, ``message`` plus
    its reason. A place the user may not write (permissions, an immutable folder, a read-only
    file system) or a path that cannot be one (a file where a folder must be, a name too
    long, a link loop) is bad input (:class:`DatasetError`, exit 2), as a render's own check
    finds; anything else (a full disk, an I/O error) is the system's (:class:`ResourceError`,
    exit 1)."""
    return refusal_kind(exc.errno)(f"{message} ({exc.strerror or exc})", param=param)


@contextmanager
def exclusive_lock(target: Path, param: str) -> Iterator[Path]:
    """Hold ``<target>.lock`` exclusively for the block; refuse at once if another process holds it.

    The lock file is removed on exit if it is ours (it starts with ``LOCK_MARKER``,
    written only into a file this call created or found empty, and the path still
    names it; a user's file with content that happens to have the name is left
    alone). A lock file left by a killed process holds no lock (the kernel drops
    ``flock`` locks with their process) and is simply reused; an empty one (its
    process was killed before marking it) is marked and removed like our own.
    """
    lock = lock_path(target)
    if fcntl is None:  # pragma: no cover - Windows: no advisory locks, no protection
        yield lock
        return
    for _attempt in range(LOCK_ATTEMPTS):
        if lock.is_symlink():
            raise ResourceError(
                f"{param}={str(target)!r}: {lock} is a symbolic link, not a lock file of ours: remove it",
                param=param,
            )
        created = True
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
        except FileExistsError:
            created = False
            try:
                fd = os.open(lock, os.O_RDWR | NOFOLLOW)
            except FileNotFoundError:  # its holder removed it meanwhile: try again
                continue
            except OSError as exc:
                raise write_refusal(f"{param}={str(target)!r}: cannot open {lock}", exc, param) from None
        except OSError as exc:
            raise write_refusal(f"{param}={str(target)!r}: cannot create {lock}", exc, param) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise LockHeld(
                    f"{param}={str(target)!r} is being written by another process (it holds {lock}); "
                    "wait for it to finish or stop it",
                    param=param,
                ) from None
            raise ResourceError(f"{param}={str(target)!r}: cannot lock {lock} ({exc.strerror})", param=param) from None
        if _names(fd, lock):  # not a lock file that its holder removed while we waited to open it
            # an empty one was left by a process killed between creating it and marking it: ours to mark
            created = created or os.fstat(fd).st_size == 0
            break
        os.close(fd)
    else:
        raise ResourceError(f"{param}={str(target)!r}: {lock} keeps changing; is another program using it?")
    try:
        if created:
            try:
                os.write(fd, LOCK_MARKER + f" pid {os.getpid()}\n".encode())
            except OSError as exc:
                os.unlink(lock)  # empty and ours: nothing to keep
                raise ResourceError(
                    f"{param}={str(target)!r}: cannot write {lock} ({exc.strerror})", param=param
                ) from None
        yield lock
    finally:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            if os.read(fd, len(LOCK_MARKER)) == LOCK_MARKER and _names(fd, lock):
                os.unlink(lock)
        except OSError:
            pass
        finally:
            os.close(fd)


def _names(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def check_file_output(path: str | Path, param: str, force: bool, kind: str | None = None) -> Path:
    """Refuse, before any work, a single-file output :func:`write_atomically` would refuse,
    or one that is a training run's own file."""
    path = check_output_path(path, param)
    refuse_run_files(path, param)
    check_replaceable(path, param, force, kind)
    return path


def refuse_run_files(path: Path, param: str, *, in_datasets: bool = True) -> None:
    """Refuse an output that is, or is inside, one of the entries ``train`` writes in a run
    folder (:data:`RUN_OWNED`; a run folder holds :data:`TRAIN_CONFIG_FILE`): ``--force``
    there would destroy a trained model. Results beside them are fine.

    With ``in_datasets``, also an output in a sharded dataset's folder or in a COCO export's
    folder (or its ``images/``): ``--force`` there replaces one of their files, and any new
    file breaks the folder's checksums or its next render. Each is known by its contents (a
    manifest naming shapesgen's format, a checksum list naming ``annotations.json``), not by
    its file names alone: a web app's ``manifest.json`` is not a dataset."""
    target = resolved(path.absolute())
    if in_datasets:
        refuse_dataset_folders(path, param)
    for folder in target.parents:
        if (folder / TRAIN_CONFIG_FILE).is_file():
            entry = target.relative_to(folder).parts[0]
            if entry in RUN_OWNED:
                raise ConfigError(
                    f"{param}={str(path)!r} is the {entry} of the training run {folder}: give another path "
                    "(results may sit beside it)",
                    param=param,
                )
            return


def refuse_dataset_folders(path: Path, param: str) -> None:
    """Refuse an output (a file, or a folder a command fills) directly in a sharded
    dataset's folder, or in a COCO export's folder or its ``images/``: ``--force`` there
    replaces one of their files, and any new file breaks the folder's checksums or its
    next render."""
    target = resolved(path.absolute())
    if holds_shards(target.parent):
        raise ConfigError(
            f"{param}={str(path)!r} is inside the sharded dataset {target.parent}: give a path outside it",
            param=param,
        )
    refuse_export_folders(path, param)


def refuse_export_folders(path: Path, param: str) -> None:
    """Refuse an output directly in a COCO export's folder or in its ``images/`` (an export
    may itself go in a sharded dataset's folder, not in another export)."""
    target = resolved(path.absolute())
    for folder in target.parents[:2]:
        if _is_export_folder(folder):
            raise ConfigError(
                f"{param}={str(path)!r} is inside the export {folder}: give a path outside it", param=param
            )


def _head(path: Path, size: int = 1 << 20) -> bytes:
    """The first ``size`` bytes of a regular file (nothing for anything else)."""
    try:
        if not path.is_file():
            return b""
        with path.open("rb") as file:
            return file.read(size)
    except OSError:
        return b""


def is_sharded_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a manifest naming shapesgen's sharded format (even a damaged one)."""
    return f'"format": "{SHARDED_FORMAT}"'.encode() in _head(folder / SHARDED_MARKER)


def holds_shards(folder: Path) -> bool:
    """Whether ``folder`` is a sharded dataset: finished (its manifest) or not yet (a shard
    file shapesgen wrote, its format name in the file's first bytes, and no manifest yet:
    a render stopped part-way, which its next run resumes)."""
    if is_sharded_folder(folder):
        return True
    from shapesgen.storage.layout import FORMAT_NAME, SHARD_FILE  # layout imports this module

    try:
        with os.scandir(folder) as entries:
            shards = [entry.name for entry in entries if SHARD_FILE.fullmatch(entry.name)]
    except OSError:
        return False
    return any(FORMAT_NAME.encode() in _head(folder / name) for name in sorted(shards)[:4])


def _is_export_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a checksum list naming an ``annotations.json``, as an export's does."""
    return any(line.endswith(b"  annotations.json") for line in _head(folder / EXPORT_CHECKSUMS).splitlines())


# The kinds of file named in --force's refusals: their signatures, and how a message names them.
SIGNATURES = {b"\x89HDF\r\n\x1a\n": "HDF5", b"PK\x03\x04": "zip", b"\x89PNG\r\n\x1a\n": "PNG"}
DESCRIBED = {
    "HDF5": "an HDF5 file (a dataset?)",
    "zip": "a zip file (a .keras model?)",
    "PNG": "a PNG image",
    "results": "a COCO results list",
    "metrics": "a metrics file",
    "JSON": "a JSON file",
    None: "another kind of file",
}
# JSON outputs by what they hold: predictions (a list of records naming their image, or an
# empty list) and evaluate's metrics (an object whose first key is "all", or an empty one).
RESULTS_HEAD = re.compile(rb'\s*\[\s*(\]|\{.*?"image_id"\s*:)', re.DOTALL)
METRICS_HEAD = re.compile(rb'\s*\{\s*(\}|"all"\s*:)')


WANTED = {
    "HDF5": "an HDF5 file",
    "PNG": "a PNG file",
    "results": "a COCO results list",
    "metrics": "a metrics file",
    "JSON": "a JSON file",
}


def _kind_of(head: bytes) -> str | None:
    """The kind of a file starting with ``head`` (a JSON file starts with ``[`` or ``{`` after
    blanks), or None for any other."""
    for signature, kind in SIGNATURES.items():
        if head.startswith(signature):
            return kind
    if RESULTS_HEAD.match(head):
        return "results"
    if METRICS_HEAD.match(head):
        return "metrics"
    return "JSON" if head.lstrip()[:1] in (b"[", b"{") else None


def check_replaceable(path: Path, param: str, force: bool, kind: str | None = None) -> None:
    """Refuse what ``path`` holds unless it may be replaced: nothing but a regular file,
    only with ``force``, and (``kind`` given: ``"HDF5"``, ``"results"``, ``"metrics"``, ``"JSON"``
    or ``"PNG"``) only a file of that kind or an empty one, since ``--force`` is meant for an
    earlier output of the same command, not for a dataset, a model, notes or another
    command's output that happens to sit at the path."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ConfigError(
            f"{param}={str(path)!r} exists and is not a regular file (a folder, link, FIFO or device): "
            "give a file path",
            param=param,
        )
    if path.exists() and not force:
        raise DatasetError(f"{param}={str(path)!r} exists: pass force=True to replace it", param=param)
    if kind is not None and path.exists():
        head = _head(path, 4096)
        found = _kind_of(head)
        if head and found != kind:
            raise ConfigError(
                f"{param}={str(path)!r} exists and is {DESCRIBED[found]}, not {WANTED[kind]}: force=True replaces "
                "only an earlier output of this command; give another path (or delete the file yourself)",
                param=param,
            )


def write_atomically(
    path: str | Path, data: bytes, *, param: str = "out", force: bool = False, kind: str | None = None
) -> Path:
    """Write ``data`` to ``path`` all at once: to a new temporary file beside it, then
    renamed into place (parents are created), under ``<path>.lock``.

    An existing file is replaced only with ``force=True``, and with ``kind`` only a file
    of that kind (:func:`check_replaceable`); a symbolic link, FIFO, device or folder at
    ``path`` is never replaced. The temporary name is unique, so
    nothing another program writes is touched. On failure nothing is left behind.
    """
    path = check_output_path(path, param)
    check_replaceable(path, param, force, kind)
    created: list[Path] = []
    tmp: Path | None = None
    try:
        created = make_parents(path.parent)
        with exclusive_lock(path, param):
            check_replaceable(path, param, force, kind)  # again, now that no other shapesgen writer can change it
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=".shapesgen-", suffix=".partial")
            tmp = Path(name)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.chmod(tmp, 0o644)
            tmp.replace(path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        remove_empty(created)
        raise write_refusal(f"{param}={str(path)!r}: cannot write", exc, param) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        remove_empty(created)
        raise
    return path


def existing_ancestor(path: Path) -> Path:
    """``path`` if it exists, else its nearest parent that does (where it would be created)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first,
    so that a failed write can remove exactly them (:func:`remove_empty`)."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove folders this process created, if still empty (deepest first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
