"""Hostile use of the parallel export and the Dask engine: bad scheduler addresses,
servers that are not Dask schedulers, interrupted and re-run exports."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line, run_cli

from shapesgen import coco
from shapesgen.coco import ExportConfig, export_coco
from shapesgen.engines import CONNECT_TIMEOUT_S, Task, check_scheduler, start_client
from shapesgen.errors import ConfigError, ResourceError

pytest.importorskip("distributed")


@pytest.mark.parametrize(
    "address", ["bogus", "", "inproc://x", "tcp://host", "foo://host:1", "tcp://host:99999", "tcp://host:0"]
)
def test_a_bad_scheduler_address_is_a_usage_error_naming_it(address: str) -> None:
    with pytest.raises(ConfigError, match="scheduler=") as caught:
        check_scheduler(address)
    assert_one_line(caught.value)
    assert repr(address) in str(caught.value) and "tcp://host:8786" in str(caught.value)


def test_good_scheduler_addresses_pass() -> None:
    for address in ("tcp://127.0.0.1:8786", "127.0.0.1:8786", "tls://head.example:8786", "ws://[::1]:80"):
        check_scheduler(address)


def test_bad_scheduler_address_fails_the_cli_before_any_output(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("export", "coco", tiny_dataset, "--out", out, "--engine", "dask", "--scheduler", "bogus")
    assert result.exit_code == 2, result.stderr
    assert "--scheduler 'bogus'" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not any(tmp_path.iterdir())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_scheduler_fails_quickly_in_one_line() -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there: refused at once
    start = time.monotonic()
    with pytest.raises(ResourceError, match="cannot connect to scheduler=") as caught:
        start_client(address, 1)
    assert time.monotonic() - start < CONNECT_TIMEOUT_S + 5
    assert_one_line(caught.value)


@pytest.fixture
def not_dask() -> Iterator[str]:
    """A TCP server that answers like a web server (a Dask dashboard port, say)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 64)
                time.sleep(0.2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_a_server_that_is_not_a_dask_scheduler_is_named_not_out_of_memory(not_dask: str) -> None:
    with pytest.raises(ResourceError, match="cannot connect to scheduler=") as caught:
        start_client(not_dask, 1)
    assert "memory" not in str(caught.value) and "Dask scheduler" in str(caught.value)
    assert_one_line(caught.value)


def test_export_to_a_non_dask_server_keeps_the_previous_export(
    tiny_dataset: Path, tmp_path: Path, not_dask: str
) -> None:
    out = export_coco(tiny_dataset, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ResourceError):
        export_coco(tiny_dataset, out, force=True, engine="dask", scheduler=not_dask)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_stale_task_of_an_interrupted_run_cannot_write_into_the_next_one(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dask cannot stop a running task: after Ctrl-C, tasks on a cluster's workers go on
    writing. A rerun (here with other options) must not take their files."""
    clean = export_coco(tiny_dataset, tmp_path / "clean", workers=2)
    stale: list[Task] = []
    real_run_here = coco.run_here

    def interrupted(tasks: list[Task], accept: Any, progress: Any) -> None:
        stale.extend(tasks)
        raise KeyboardInterrupt

    monkeypatch.setattr(coco, "run_here", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_coco(tiny_dataset, tmp_path / "out", ExportConfig(resolution="mask", style="kins"))
    assert not coco.partial_path(tmp_path / "out").exists()

    def rerun(tasks: list[Task], accept: Any, progress: Any) -> None:
        real_run_here(tasks, accept, progress)
        for task in stale:  # the interrupted run's tasks finish late, on their workers
            with contextlib.suppress(OSError):
                task.function(*task.args, report=lambda done: None)

    monkeypatch.setattr(coco, "run_here", rerun)
    out = export_coco(tiny_dataset, tmp_path / "out")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert files == sorted(p.relative_to(clean).as_posix() for p in clean.rglob("*"))
    for name in files:
        assert (out / name).is_dir() or (out / name).read_bytes() == (clean / name).read_bytes(), name
