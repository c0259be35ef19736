"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

from pathlib import Path

from shapesgen.errors import DatasetError


def partial_path(path: Path) -> Path:
    """Where ``path`` is built before it is renamed into place."""
    return path.with_name(path.name + ".partial")


def write_atomically(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``<path>.partial``, then rename it to ``path`` (parents are created).

    On failure nothing is left at either path and a :class:`DatasetError` names the file.
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path
