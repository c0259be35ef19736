"""The task runners' progress bookkeeping: throttled reports and a tally that never goes back."""

from __future__ import annotations

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
    run = run_here if workers == 1 else lambda *a: run_in_pool(*a, workers, "test")
    run(tasks, lambda task, result: results.__setitem__(task.index, result), lambda done, total: shown.append(done))
    assert results == {k: k * k for k in range(5)}
    assert shown[-1] == 5 and shown == sorted(shown)


def test_a_local_cluster_never_starts_more_workers_than_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    from shapesgen import engines

    started: list[int] = []

    def record(scheduler: str | None, workers: int) -> tuple[object, object]:
        started.append(workers)
        raise RuntimeError("stop here")

    monkeypatch.setattr(engines, "start_client", record)
    tasks = [Task(k, f"task {k}", 1, _square, (k,)) for k in range(3)]
    for workers in (2, 4096):
        with pytest.raises(RuntimeError, match="stop here"):
            engines.run_on_dask(tasks, lambda task, result: None, None, scheduler=None, workers=workers, name="t")
    assert started == [2, 3]
