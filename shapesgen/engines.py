"""Run independent tasks in this process, in a local process pool, or on Dask, with one
progress count over scenes.

A :class:`Task` is ``function(*args, report=report)``; the function calls ``report(n)``
as its scenes get done (``n`` of the task's ``scenes``, rising). Results reach the
client through ``accept(task, result)`` in the order tasks finish, which may differ
from the task order: callers that need order buffer them.

Under Dask, workers publish their counts as Dask events (``Worker.log_event`` on a topic
of the run, at most every :data:`REPORT_EVERY_S` seconds per task) and the client
subscribes to the topic, so the progress bar moves scene by scene, not shard by shard.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from shapesgen.config import Engine
from shapesgen.errors import ConfigError, ResourceError, ShapesgenError, one_line

T = TypeVar("T")
Report = Callable[[int], None]
ProgressCallback = Callable[[int, int], None]
Accept = Callable[["Task", Any], None]
ENGINES: tuple[str, ...] = get_args(Engine)
DASK_HINT = "pip install 'shapesgen[dask]'"
REPORT_EVERY_S = 0.25  # the most often one task publishes its count under Dask
CONNECT_TIMEOUT_S = 5  # a scheduler that does not answer a client within this fails the run
SCHEDULER_EXAMPLE = "tcp://host:8786"
LOST_SCHEDULER = "lost the connection to the Dask scheduler mid-run (it stopped, or the network failed)"
# A LocalCluster's workers as shapesgen starts them: glibc's own malloc tuning (Dask's default
# MALLOC_TRIM_THRESHOLD_=65536 also turns off glibc's adaptive mmap threshold, so every array
# over 128 KiB is mmapped and page-faulted afresh: +15% CPU per scene at N = 6, +40% at N = 12)
# and no statistical profiler (a thread that samples the rendering thread's stack every 10 ms);
# the event loop's responsiveness check every second, not every 20 ms: each check takes the GIL
# from the rendering thread, which made a scene 13% slower on a worker than in a local process.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
}
# Its workers are forked from one fork server (a single-threaded Python started by the first
# nanny with Dask's pre-spawn environment) that imported Dask and the tasks' modules once, not
# spawned Pythons that each import them again; it serves this process's later clusters too.
FORKSERVER = "forkserver"


class MissingExtra(ShapesgenError):
    """An optional dependency is not installed (exit 1: the environment, not the input)."""

    exit_code = 1


@dataclass(frozen=True)
class Task:
    """One unit of work: ``function(*args, report=report)`` over ``scenes`` scenes;
    ``label`` names it in errors (``shard shard-00003.h5``)."""

    index: int
    label: str
    scenes: int
    function: Callable[..., Any]
    args: tuple[Any, ...]


class Throttled:
    """``report`` called at most every ``seconds`` (the first call always goes through)."""

    def __init__(self, report: Report, seconds: float = REPORT_EVERY_S) -> None:
        self.report = report
        self.seconds = seconds
        self.last = -float("inf")

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            self.report(done)


class Tally:
    """Scenes done per task, summed for the progress callback; a count never goes back
    (a task run again after its worker died counts from where the first run got)."""

    def __init__(self, tasks: Sequence[Task], progress: ProgressCallback | None) -> None:
        self.scenes = {task.index: task.scenes for task in tasks}
        self.done = dict.fromkeys(self.scenes, 0)
        self.total = sum(self.scenes.values())
        self.sum = 0
        self.progress = progress

    def set(self, index: int, done: int) -> None:
        done = min(done, self.scenes[index])
        if done > self.done[index]:
            self.sum += done - self.done[index]
            self.done[index] = done

    def show(self) -> None:
        if self.progress:
            self.progress(self.sum, self.total)


def run_here(tasks: Sequence[Task], accept: Accept, progress: ProgressCallback | None) -> None:
    """Every task in this process, in order."""
    tally = Tally(tasks, progress)
    tally.show()
    for task in tasks:

        def report(done: int, index: int = task.index) -> None:
            tally.set(index, done)
            tally.show()

        result = task.function(*task.args, report=report)
        tally.set(task.index, task.scenes)
        accept(task, result)
        tally.show()


_COUNTS: Any = None  # in a pool worker: the shared array its tasks write their counts into (see run_in_pool)
_STOP: Any = None  # in a pool worker: the shared flag the parent raises on Ctrl-C
STOP_GRACE_S = 10.0  # how long stopped tasks may take to end before their workers are killed
KILLED_POOLS: list[int] = []
"""Workers killed by :func:`run_in_pool` (tasks that did not stop in time): the pool's manager
thread may then wait for ever on a result a killed worker was sending, and with it Python's
exit; the command line's entry point then ends the process at once, its outputs settled."""


class TaskStopped(Exception):
    """Raised in a pool task at its next progress report once the parent asked to stop."""


def _pool_worker_init(counts: Any, pids: Any, slots: Any, stop: Any) -> None:
    """A pool worker's start: the renderer's worker set-up (signals, death with the parent),
    its pid recorded in the next free slot of ``pids``."""
    from shapesgen.build import _worker_init

    global _COUNTS, _STOP
    _worker_init()
    _COUNTS, _STOP = counts, stop
    with slots.get_lock():
        pids[slots.value] = os.getpid()
        slots.value += 1


def _in_pool(function: Callable[..., Any], args: tuple[Any, ...], position: int) -> Any:
    counts, stop = _COUNTS, _STOP

    def report(done: int) -> None:
        counts[position] = done
        if stop.value:
            raise TaskStopped("stopped by the parent")

    return function(*args, report=report)


def run_in_pool(
    tasks: Sequence[Task], accept: Accept, progress: ProgressCallback | None, workers: int, what: str
) -> None:
    """The tasks on ``workers`` local processes (the renderer's pool: forked on Linux,
    workers ignore Ctrl-C and die with this process); progress moves scene by scene (each
    task writes its count into shared memory, read every :data:`REPORT_EVERY_S` seconds: a
    worker never waits on this process). The first failure cancels the tasks not started,
    stops the running ones as below, and is raised once they end. Ctrl-C (or SIGTERM) cancels the tasks not
    started and raises a shared flag that makes each running task stop at its next progress
    report (a batch of scenes, or one exported scene), so a long task (a shard of 10,000
    scenes) does not hold the interrupt up; their outputs are what a failed task leaves (a
    render's ``.partial`` shard, rendered again by the next run). Workers are killed only if
    their tasks have not ended within :data:`STOP_GRACE_S`: a worker killed while it sends a
    result can leave the pool waiting for the rest of it for ever (see :data:`KILLED_POOLS`)."""
    from shapesgen.build import _pool_context

    context = _pool_context()
    processes = min(workers, len(tasks))
    counts = context.Array("q", len(tasks), lock=False)
    pids = context.Array("q", processes, lock=False)
    slots = context.Value("i", 0)
    stop = context.Value("b", 0, lock=False)
    tally = Tally(tasks, progress)

    def read_counts() -> None:
        for position, task in enumerate(tasks):
            tally.set(task.index, counts[position])

    tally.show()
    pool = ProcessPoolExecutor(
        processes, mp_context=context, initializer=_pool_worker_init, initargs=(counts, pids, slots, stop)
    )
    futures: dict[Future[Any], Task] = {}
    pending: set[Future[Any]] = set()
    killed: list[int] = []
    try:
        with interrupts_held():  # the workers the first submit forks start with Ctrl-C held, then ignore it
            for position, task in enumerate(tasks):
                futures[pool.submit(_in_pool, task.function, task.args, position)] = task
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=REPORT_EVERY_S, return_when=FIRST_COMPLETED)
            read_counts()
            for future in sorted(finished, key=lambda f: futures[f].index):
                task = futures[future]
                accept(task, future.result())
                tally.set(task.index, task.scenes)
            tally.show()
    except BrokenProcessPool:
        raise ResourceError(f"a {what} worker died (killed, or out of memory)", param="workers") from None
    except KeyboardInterrupt:
        stop.value = 1
        for future in pending:
            future.cancel()
        running = {future for future in pending if not future.done()}
        if running and wait(running, timeout=STOP_GRACE_S).not_done:
            killed = list(pids)[: slots.value]
            KILLED_POOLS.extend(killed)
            _kill(killed)
        raise
    except Exception:
        stop.value = 1  # the run fails: the running tasks need not finish
        raise
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=not killed, cancel_futures=True)


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM blocked in this thread for the block (and in what it forks meanwhile),
    delivered after; a no-op where there are no signal masks."""
    mask = getattr(signal, "pthread_sigmask", None)
    held = mask(signal.SIG_BLOCK, INTERRUPTS) if mask else None
    try:
        yield
    finally:
        if mask:
            mask(signal.SIG_SETMASK, held)


def leave_interrupts_to_parent() -> None:
    """A spawned pool worker's first act: Ctrl-C is the parent's to handle (one line, no
    worker tracebacks), and the interrupts the parent held while it started this worker
    (:func:`interrupts_held`, inherited through exec) are let through, a pending Ctrl-C
    dropped. Without the hold, a Ctrl-C during a spawned Python's start-up printed its
    import traceback ("Fatal Python error: init_import_site")."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, INTERRUPTS)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """A pool worker's request to be killed when its parent dies: on Linux the kernel
    sends it SIGKILL then (even when the parent was killed by ``kill -9``), so no orphan
    keeps working or holds files open. The thread that started the worker must live as
    long as the pool: call it only in pools that the main thread fills."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(1)


def _kill(pids: Sequence[int]) -> None:
    """Kill these processes, a second Ctrl-C or SIGTERM held back meanwhile."""
    kill = getattr(signal, "SIGKILL", signal.SIGTERM)  # Windows has no SIGKILL
    with interrupts_held():
        for pid in pids:
            try:
                os.kill(pid, kill)
            except ProcessLookupError:
                pass


def import_dask() -> Any:
    """``dask.distributed``, or :class:`MissingExtra` saying how to install it."""
    try:
        import dask.distributed as distributed
    except ImportError:
        raise MissingExtra(
            f"engine='dask' needs Dask's distributed scheduler, which is not installed: {DASK_HINT}",
            param="engine",
        ) from None
    return distributed


def check_scheduler(scheduler: str) -> None:
    """A scheduler address Dask can connect to (``tcp://host:8786``, ``tls://...``), or
    :class:`ConfigError` naming it; needs Dask (see :func:`import_dask`)."""
    import_dask()
    from distributed.comm.addressing import get_address_host_port

    problem: str | None
    try:
        _host, port = get_address_host_port(scheduler)
    except (ValueError, TypeError) as exc:
        problem = one_line(exc, 120)
    else:
        problem = None if 1 <= port <= 65535 else f"port {port} is not from 1 to 65535"
    if problem is not None:
        raise ConfigError(
            f"scheduler={scheduler!r} is not a Dask scheduler address ({problem}): give one such as "
            f"{SCHEDULER_EXAMPLE}",
            param="scheduler",
        )


def local_cluster_config(preload: Sequence[str] = ()) -> dict[str, Any]:
    """The Dask configuration of a LocalCluster that shapesgen starts: :data:`LOCAL_CLUSTER_CONFIG`
    and, where this platform has a fork server, worker processes forked from it (see
    :data:`FORKSERVER`). Sets the fork server's preload to Dask and ``preload``: process-wide,
    and heeded only until the fork server first starts."""
    if not _set_forkserver_preload(preload):
        return dict(LOCAL_CLUSTER_CONFIG)
    import distributed.utils

    # Dask's own preload list would import pandas, lz4 and numpy into this process and the fork
    # server, but not the tasks' modules; the list only counts before the fork server first starts.
    distributed.utils._forkserver_preload_set = True
    return {**LOCAL_CLUSTER_CONFIG, "distributed.worker.multiprocessing-method": FORKSERVER}


def _set_forkserver_preload(preload: Sequence[str]) -> bool:
    """Set the fork server's preload to Dask and ``preload`` (without importing Dask here);
    False where this platform has no fork server."""
    import multiprocessing

    if FORKSERVER not in multiprocessing.get_all_start_methods():
        return False
    modules = dict.fromkeys(["distributed", *(name for name in preload if name != "__main__")])
    multiprocessing.get_context(FORKSERVER).set_forkserver_preload(list(modules))
    return True


def prepare_local_cluster(preload: Sequence[str]) -> None:
    """Start the fork server of a LocalCluster to come (see :func:`local_cluster_config`)
    before this process imports Dask, so that the two import Dask at once: the cluster's
    workers are forked from a server that has finished its imports about 0.4 s sooner
    (0.5 to 0.8 s of imports each, on 2 cores). A no-op without a fork server or Dask."""
    import importlib.util

    if importlib.util.find_spec("distributed") is not None and _set_forkserver_preload(preload):
        start_fork_server()


def start_fork_server() -> None:
    """Start this process's fork server (see :func:`local_cluster_config`) if it is not running,
    with SIGINT blocked, as multiprocessing starts its resource tracker. CPython's fork server
    ignores SIGINT only once it has imported its preload, so a Ctrl-C in that second printed its
    KeyboardInterrupt traceback; it inherits the blocked signal instead (and passes it to the workers
    it forks, whose Dask preload ignores SIGINT). A SIGINT meanwhile reaches this process after."""
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()  # first: it unblocks SIGINT after starting its own process
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _uninterrupted(start: Callable[[], T], undo: Callable[[T], Any]) -> T:
    """``start()`` run in a thread of its own; Ctrl-C meanwhile (raised in this thread) lets it
    finish, gives its result to ``undo`` and is raised then. Dask's LocalCluster and Client left
    half-started were closed at exit with Dask's tracebacks (a nanny not yet started)."""
    with ThreadPoolExecutor(1, thread_name_prefix="shapesgen-dask-start") as starter:
        future = starter.submit(start)
        try:
            return future.result()
        except KeyboardInterrupt:
            while not future.done():
                try:
                    wait([future])
                except KeyboardInterrupt:  # pressed again, or SIGTERM: it is being stopped already
                    pass
            if future.exception() is None:
                undo(future.result())
            raise


def start_client(scheduler: str | None, workers: int, *, preload: Sequence[str] = ()) -> tuple[Any, Any]:
    """``(client, cluster)``: a client of the scheduler at ``scheduler``, or of a new
    ``LocalCluster`` of ``workers`` single-threaded processes (``cluster`` is then not ``None``)
    with the modules ``preload`` imported before their first task (see :func:`local_cluster_config`).
    Ctrl-C while they start ends with them closed (see :func:`_uninterrupted`)."""
    import dask

    distributed = import_dask()
    if scheduler is not None:
        check_scheduler(scheduler)
    cluster = None
    try:
        if scheduler is None:
            config = local_cluster_config(preload)
            if config.get("distributed.worker.multiprocessing-method") == FORKSERVER:
                start_fork_server()
            with dask.config.set(config):
                cluster = _uninterrupted(
                    lambda: distributed.LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                        silence_logs=logging.CRITICAL,  # a failed task is reported once, by the client
                    ),
                    lambda started: started.close(),
                )
            return _uninterrupted(lambda: distributed.Client(cluster), lambda client: client.close()), cluster
        return distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"), None
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        if scheduler is None:
            raise ResourceError(f"cannot start a Dask LocalCluster ({one_line(exc, 200)})", param="scheduler") from None
        raise ResourceError(
            f"cannot connect to scheduler={scheduler!r} ({one_line(exc, 200)}): is a Dask scheduler running there?",
            param="scheduler",
        ) from None
    except (MemoryError, ValueError, TypeError) as exc:  # a server that is not a Dask scheduler (a web page)
        if scheduler is None:
            raise
        raise ResourceError(
            f"cannot connect to scheduler={scheduler!r}: what answers there is not a Dask scheduler "
            f"({type(exc).__name__} reading its reply; a dashboard's port, perhaps)",
            param="scheduler",
        ) from None
    except BaseException:  # Ctrl-C while the client connects
        if cluster is not None:
            cluster.close()
        raise


def _on_dask_worker(topic: str, index: int, function: Callable[..., Any], args: tuple[Any, ...], period: float) -> Any:
    """Run on a Dask worker: the task, its count published as events on ``topic`` at
    most every ``period`` seconds (the client's :data:`REPORT_EVERY_S`)."""
    from distributed import get_worker

    worker = get_worker()
    return function(*args, report=Throttled(lambda done: worker.log_event(topic, [index, done]), period))


def run_on_dask(
    tasks: Sequence[Task],
    accept: Accept,
    progress: ProgressCallback | None,
    *,
    scheduler: str | None,
    workers: int,
    name: str,
) -> None:
    """The tasks on Dask (see :func:`start_client`), one Dask task each; ``name`` makes
    their keys unique to this run. The first failure cancels the rest and is raised.
    A LocalCluster's workers have the tasks' modules imported before their first task."""
    import_dask()
    import dask

    modules = sorted({task.function.__module__ for task in tasks})
    # in force until the LocalCluster closes: its nannies read it for every worker they start, restarts too
    with dask.config.set(local_cluster_config(modules) if scheduler is None else {}):
        _run_on_dask(tasks, accept, progress, scheduler, max(1, min(workers, len(tasks))), name, modules)


def _run_on_dask(
    tasks: Sequence[Task],
    accept: Accept,
    progress: ProgressCallback | None,
    scheduler: str | None,
    workers: int,
    name: str,
    preload: Sequence[str],
) -> None:
    """:func:`run_on_dask` on ``workers`` workers, its Dask configuration in force."""
    distributed = import_dask()
    from distributed.comm import CommClosedError

    client, cluster = start_client(scheduler, workers, preload=preload)  # no idle workers: at most one per task
    token = hashlib.sha256(f"{name}/{os.getpid()}/{time.time_ns()}".encode()).hexdigest()[:12]
    topic = f"shapesgen-progress-{token}"
    inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    tally = Tally(tasks, progress)
    futures: dict[Any, Task] = {}
    lost = False
    try:
        client.subscribe_topic(topic, lambda event: inbox.put(("count", event[1])))
        for task in tasks:
            future = client.submit(
                _on_dask_worker,
                topic,
                task.index,
                task.function,
                task.args,
                REPORT_EVERY_S,
                key=f"shapesgen-{token}-{task.index}",
            )
            futures[future] = task
            future.add_done_callback(lambda f: inbox.put(("done", f)))
        tally.show()
        remaining = len(futures)
        while remaining:
            kind, item = inbox.get()
            if kind == "count":
                index, done = item
                tally.set(int(index), int(done))
            else:
                task = futures[item]
                try:
                    result = item.result()
                except ShapesgenError:
                    raise
                except distributed.KilledWorker:
                    raise ResourceError(
                        f"{task.label}: the Dask workers running it died repeatedly (killed, or out of memory)",
                        param="out",
                    ) from None
                except CancelledError as exc:  # Dask's FutureCancelledError: not by us, we wait for it
                    reason = getattr(exc, "reason", "unknown")
                    if reason == "scheduler-connection-lost":
                        lost = True
                        raise ResourceError(LOST_SCHEDULER, param="scheduler") from None
                    raise ResourceError(f"{task.label} was cancelled on the Dask cluster ({reason})") from None
                except CommClosedError:  # the scheduler stopped while sending this result
                    lost = True
                    raise ResourceError(LOST_SCHEDULER, param="scheduler") from None
                except Exception as exc:  # the scheduler's no-workers-timeout: no worker left to run it
                    if type(exc).__name__ != "NoWorkerError":
                        raise
                    raise ResourceError(
                        f"{task.label}: no Dask worker was left to run it for {getattr(exc, 'timeout', '?')} s "
                        "(the workers died and none replaced them)",
                        param="workers",
                    ) from None
                accept(task, result)
                item.release()
                tally.set(task.index, task.scenes)
                remaining -= 1
            tally.show()
    except BaseException:
        if not lost:  # a lost scheduler has dropped them already
            client.cancel(list(futures), force=True)
        raise
    finally:
        try:
            client.unsubscribe_topic(topic)
        except ValueError:  # never subscribed
            pass
        client.close()
        if cluster is not None:
            cluster.close()
