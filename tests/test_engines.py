"""The task runners' progress bookkeeping: throttled reports and a tally that never goes back;
the LocalCluster that the Dask engine starts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shapesgen.engines import Tally, Task, Throttled, run_here, run_in_pool


def test_throttled_passes_the_first_report_then_at_most_one_per_period() -> None:
    sent: list[int] = []
    report = Throttled(sent.append, seconds=3600)
    for done in range(1, 6):
        report(done)
    assert sent == [1]
    every = Throttled(sent.append, seconds=0)
    every(7)
    every(8)
    assert sent == [1, 7, 8]


def test_tally_sums_tasks_caps_them_and_never_goes_back() -> None:
    shown: list[tuple[int, int]] = []
    tasks = [Task(0, "a", 5, print, ()), Task(1, "b", 3, print, ())]
    tally = Tally(tasks, lambda done, total: shown.append((done, total)))
    tally.set(0, 4)
    tally.set(1, 9)  # capped at the task's 3 scenes
    tally.set(0, 2)  # a task run again after its worker died: the count stays
    tally.show()
    assert shown == [(7, 8)]


def _square(value: int, *, report: object) -> int:
    report(1)  # type: ignore[operator]
    return value * value


@pytest.mark.parametrize("workers", [1, 2])
def test_runners_deliver_every_result_and_reach_the_total(workers: int) -> None:
    tasks = [Task(k, f"task {k}", 1, _square, (k,)) for k in range(5)]
    results: dict[int, int] = {}
    shown: list[int] = []
    run = run_here if workers == 1 else lambda tasks, accept, shown: run_in_pool(tasks, accept, shown, workers, "test")
    run(tasks, lambda task, result: results.__setitem__(task.index, result), lambda done, total: shown.append(done))
    assert results == {k: k * k for k in range(5)}
    assert shown[-1] == 5 and shown == sorted(shown)


def _slow_count(scenes: int, *, report: object) -> int:
    for done in range(1, scenes + 1):
        time.sleep(0.3)  # longer than the reports' period
        report(done)  # type: ignore[operator]
    return scenes


def test_the_local_pool_reports_each_task_scene_by_scene() -> None:
    """Counts within a running task reach the bar (before, it moved only as whole tasks ended)."""
    tasks = [Task(k, f"task {k}", 3, _slow_count, (3,)) for k in range(2)]
    shown: list[int] = []
    run_in_pool(tasks, lambda task, result: None, lambda done, total: shown.append(done), 2, "test")
    assert shown[-1] == 6 and shown == sorted(shown)
    assert any(done % 3 for done in shown), shown


def _fail_or_chatter(index: int, *, report: object) -> int:
    if index == 0:
        raise ValueError("task 0 is bad input")
    for done in range(200_000):  # far more counts than a pipe holds, had they been messages
        report(done % 2)  # type: ignore[operator]
    return index


def test_a_failed_task_fails_the_run_while_others_keep_reporting() -> None:
    """The first failure is raised once the running tasks end; their counts never wait on the
    parent (counts sent through a pipe that the parent stopped reading had blocked them)."""
    tasks = [Task(k, f"task {k}", 1, _fail_or_chatter, (k,)) for k in range(3)]
    with pytest.raises(ValueError, match="task 0 is bad input"):
        run_in_pool(tasks, lambda task, result: None, None, 2, "test")


def _long_count(scenes: int, *, report: object) -> int:
    for done in range(1, scenes + 1):
        time.sleep(0.05)
        report(done)  # type: ignore[operator]
    return scenes


def _silent(seconds: float, *, report: object) -> float:
    time.sleep(seconds)  # never reports, so never sees the stop
    return seconds


def _interrupt_at_first_result(task: Task, result: Any) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_stops_running_tasks_at_their_next_report_without_killing_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C killed the workers: one killed while it sent an export's result left the pool,
    and the command, waiting for ever. Now the tasks stop themselves: 1,000 reports of 0.05 s
    would outlast the grace period, so a kill would show in KILLED_POOLS."""
    import shapesgen.engines as engines

    monkeypatch.setattr(engines, "KILLED_POOLS", [])
    tasks = [Task(0, "quick", 1, _square, (3,)), *(Task(k, f"long {k}", 1000, _long_count, (1000,)) for k in (1, 2))]
    with pytest.raises(KeyboardInterrupt):
        run_in_pool(tasks, _interrupt_at_first_result, None, 2, "test")
    assert engines.KILLED_POOLS == []


def test_tasks_that_never_report_are_killed_after_the_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    import shapesgen.engines as engines

    monkeypatch.setattr(engines, "KILLED_POOLS", [])
    monkeypatch.setattr(engines, "STOP_GRACE_S", 0.5)
    tasks = [Task(0, "quick", 1, _square, (3,)), Task(1, "silent", 1, _silent, (60.0,))]
    with pytest.raises(KeyboardInterrupt):
        run_in_pool(tasks, _interrupt_at_first_result, None, 2, "test")
    assert len(engines.KILLED_POOLS) == 2


def test_a_local_cluster_never_starts_more_workers_than_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    from shapesgen import engines

    started: list[int] = []

    def record(scheduler: str | None, workers: int, *, preload: list[str]) -> tuple[object, object]:
        started.append(workers)
        assert preload == [_square.__module__]  # the tasks' modules, imported in the workers up front
        raise RuntimeError("stop here")

    monkeypatch.setattr(engines, "start_client", record)
    tasks = [Task(k, f"task {k}", 1, _square, (k,)) for k in range(3)]
    for workers in (2, 4096):
        with pytest.raises(RuntimeError, match="stop here"):
            engines.run_on_dask(tasks, lambda task, result: None, None, scheduler=None, workers=workers, name="t")
    assert started == [2, 3]


IMPORTED_BY = os.getpid()  # the process that imported this module: a fork server preloads it for its workers


def _where(marker: str, index: int, *, report: object) -> tuple[int, int, int, tuple[object, ...]]:
    """On a worker: its pid, its parent's, the pid that imported this module and the worker's
    Dask settings that shapesgen sets; task 0 kills its worker the first time it runs
    (``marker`` records that it did)."""
    import dask

    if index == 0 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    report(1)  # type: ignore[operator]
    settings = ("distributed.admin.tick.interval", "distributed.worker.profile.enabled")
    return os.getpid(), os.getppid(), IMPORTED_BY, tuple(dask.config.get(key) for key in settings)


def test_local_cluster_workers_fork_from_a_preloaded_server_and_survive_a_killed_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LocalCluster that ``run_on_dask`` starts: worker processes, restarted ones too, forked
    from a fork server that imported the tasks' module (not spawned Pythons importing it again);
    a worker killed mid-task has its task run again, and every result arrives once."""
    pytest.importorskip("distributed")
    import multiprocessing

    from shapesgen import engines

    if engines.FORKSERVER not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform")
    # the fork server imports with its own sys.path (Python 3.11 ignores the client's there): this module's folder
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    )
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # type: ignore[attr-defined]  # one an earlier test started lacks our preload
    marker = str(tmp_path / "killed-once")
    tasks = [Task(k, f"task {k}", 1, _where, (marker, k)) for k in range(3)]
    results: dict[int, tuple[int, int, int, tuple[object, ...]]] = {}
    shown: list[int] = []
    engines.run_on_dask(
        tasks,
        lambda task, result: results.__setitem__(task.index, result),
        lambda done, total: shown.append(done),
        scheduler=None,
        workers=2,
        name="fork-server test",
    )
    assert os.path.exists(marker) and sorted(results) == [0, 1, 2] and shown[-1] == 3
    for _pid, parent, imported_by, settings in results.values():  # a restarted worker's too
        assert parent != os.getpid(), "a worker is a child of the client: spawned, not forked by the fork server"
        assert imported_by == parent, "the fork server did not import the tasks' module (started earlier?)"
        assert settings == ("1s", False), "the worker runs with Dask's event-loop checks or profiler"


def importing_fork_server(client: Any) -> list[Any]:
    """The client's processes once one is a fork server importing its preload (past Python's own
    start-up: over 30 MiB resident), else none."""
    import psutil

    try:
        family = client.children(recursive=True)
        server = [p for p in family if "multiprocessing.forkserver" in " ".join(p.cmdline())]
        return family if server and server[0].memory_info().rss > 30 << 20 else []
    except psutil.Error:  # one ended while listed
        return []


def test_ctrl_c_while_a_local_cluster_starts_ends_in_one_line_and_stops_every_process(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (the whole process group) while the fork server imports its preload:
    before, it printed the fork server's KeyboardInterrupt traceback and Dask's from closing a
    half-started LocalCluster at exit. Now one line, exit 130, no process left, no folder."""
    pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "ds"
    args = ["render", "--out", str(out), "--num", "40", "--shard-size", "20", "-q", "--engine", "dask"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "shapesgen", *args], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    client, deadline = psutil.Process(proc.pid), time.monotonic() + 120
    while not (family := importing_fork_server(client)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr == "error: interrupted before any shard was written\n", stderr
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert not out.exists()


def test_a_local_cluster_fork_server_starts_before_this_process_imports_dask() -> None:
    """``prepare_local_cluster`` starts the fork server, preloading Dask and the given modules,
    without importing Dask here: the server's imports and this process's then run at once."""
    pytest.importorskip("distributed")
    import multiprocessing

    from shapesgen import engines

    if engines.FORKSERVER not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform")
    script = (
        "import sys\n"
        "from multiprocessing import forkserver\n"
        "from shapesgen.engines import prepare_local_cluster\n"
        "prepare_local_cluster(['shapesgen.shards'])\n"
        "server = forkserver._forkserver\n"
        "print('distributed' in sys.modules, server._forkserver_pid is not None, server._preload_modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.split(maxsplit=2) == ["False", "True", "['distributed', 'shapesgen.shards']\n"], run.stdout
