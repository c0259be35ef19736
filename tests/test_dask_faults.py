"""The Dask engine under faults, with real processes: Ctrl-C on a LocalCluster and on an
external cluster, and the scheduler killed mid-render. Each ends in one line, leaves only
whole shards (and resumable ``.partial`` files), no worker behind, and the same command
resumes to the bytes of an uninterrupted render."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shapesgen import SceneConfig, StorageConfig
from shapesgen.shards import read_shard, render_sharded
from shapesgen.storage.manifest import plan_shards

distributed = pytest.importorskip("dask.distributed")
psutil = pytest.importorskip("psutil")

NUM, SIZE = 600, 20  # 30 shards: long enough to stop mid-render, about a CPU-second of work
CONFIG = SceneConfig(image_size=64, mask_size=32, instances_per_class=2, layers=3, seed=5)
SMALL = ["--image-size", "64", "--mask-size", "32", "--instances", "2", "--layers", "3", "--seed", "5"]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
LEFT_BEHIND = re.compile(r"shard-\d{5}\.h5(\.partial|\.lock)?")


def command(out: Path, *extra: str) -> list[str]:
    args = ["render", "--out", str(out), "--num", str(NUM), "--shard-size", str(SIZE), "-q", *SMALL, *extra]
    return [sys.executable, "-m", "shapesgen", *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ["SOURCE_DATE_EPOCH"], previous = "1700000000", os.environ.get("SOURCE_DATE_EPOCH")
    try:
        return render_sharded(CONFIG, tmp_path_factory.mktemp("ref") / "ds", num_scenes=NUM, shard_size=SIZE)
    finally:
        os.environ.pop("SOURCE_DATE_EPOCH") if previous is None else os.environ.update(SOURCE_DATE_EPOCH=previous)


def start_when_a_shard_exists(args: list[str], out: Path) -> subprocess.Popen[str]:
    """The command in a process group of its own (as a terminal runs it), once a shard is written."""
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(p.suffix == ".h5" for p in out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    return proc


def wait_for_no_partial(out: Path) -> None:
    """Until no shard is being written (a task the client cancelled may still be running)."""
    deadline = time.monotonic() + 60
    while any(out.glob("*.partial")):
        assert time.monotonic() < deadline, sorted(p.name for p in out.iterdir())
        time.sleep(0.01)


def one_line(proc: subprocess.Popen[str], code: int) -> str:
    _, stderr = proc.communicate(timeout=60)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def assert_only_whole_shards(out: Path) -> None:
    """No manifest, no virtual file: shard files that verify, and resumable parts of others."""
    names = sorted(p.name for p in out.iterdir())
    assert all(LEFT_BEHIND.fullmatch(name) for name in names), names
    shards = {s.file: s for s in plan_shards(NUM, SIZE)}
    for name in names:
        if name.endswith(".h5"):
            read_shard(out / name, CONFIG, shards[name], json.loads(StorageConfig().to_json()))


def assert_same_as(out: Path, reference: Path) -> None:
    """Every file byte for byte: the manifest, dataset.h5 and each shard."""
    from test_shards import same_files

    same_files(out, reference)


def test_ctrl_c_on_a_local_cluster_stops_its_workers_and_the_rerun_resumes(tmp_path: Path, reference: Path) -> None:
    """A terminal's Ctrl-C reaches the client and the LocalCluster's workers (one process group):
    before, each worker printed a KeyboardInterrupt traceback of its own."""
    out = tmp_path / "ds"
    proc = start_when_a_shard_exists(command(out, "--engine", "dask", "--workers", "2"), out)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    line = one_line(proc, 130)
    assert line.startswith("error: interrupted;") and "rerun the same command to finish it" in line, line
    assert_only_whole_shards(out)
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    rerun = subprocess.run(command(out, "--engine", "dask", "--workers", "2"), capture_output=True, text=True, env=ENV)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr
    assert_same_as(out, reference)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_external_cluster_interrupted_then_its_scheduler_lost(tmp_path: Path, reference: Path) -> None:
    """Ctrl-C with --scheduler: one line, exit 130. The scheduler killed mid-render: before, an
    internal error (exit 70) after a logged traceback; now one line, exit 1. Both keep a folder
    that the same command (here on the local engine, the scheduler being gone) finishes."""
    address = f"tcp://127.0.0.1:{free_port()}"
    dask = [str(Path(sys.executable).parent / "dask")]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    scheduler = subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                  "--no-dashboard"], **quiet)  # type: ignore[call-overload]  # fmt: skip
    worker: subprocess.Popen[bytes] | None = None
    try:
        with distributed.Client(address, timeout="60s") as client:  # the scheduler is up: on a busy machine it took
            # over the worker's 5 s to connect (its death timeout, which ends it once the scheduler is killed)
            worker = subprocess.Popen([*dask, "worker", address, "--nworkers", "1", "--nthreads", "1",
                                       "--no-dashboard", "--death-timeout", "5"], **quiet)  # type: ignore[call-overload]  # fmt: skip
            client.wait_for_workers(1, timeout=60)
        out = tmp_path / "ds"
        proc = start_when_a_shard_exists(command(out, "--engine", "dask", "--scheduler", address), out)
        os.killpg(proc.pid, signal.SIGINT)
        assert "rerun the same command to finish it" in one_line(proc, 130)
        wait_for_no_partial(out)  # Dask cannot stop a running task: the worker finishes its shard, atomically
        assert_only_whole_shards(out)
        kept = {p.name: p.stat().st_ino for p in out.glob("*.h5")}
        proc = start_when_a_shard_exists(command(out, "--engine", "dask", "--scheduler", address), out)
        while len(list(out.glob("*.h5"))) <= len(kept):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        scheduler.kill()
        line = one_line(proc, 1)
        assert "lost the connection to the Dask scheduler" in line and "rerun the same command" in line, line
        assert_only_whole_shards(out)
        assert all((out / name).stat().st_ino == inode for name, inode in kept.items())  # verified, kept
    finally:
        for process in (scheduler, worker):
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    rerun = subprocess.run(command(out), capture_output=True, text=True, env=ENV)
    assert rerun.returncode == 0 and rerun.stderr == "", rerun.stderr
    assert_same_as(out, reference)
