"""Ctrl-C during ``predict`` (a hostile test, 2026-11-27): an interrupt that TensorFlow turned
into a TypeError was reported as a bug (exit 70), spawned clustering workers printed their
start-up tracebacks, and ``python -m shapesgen`` stopped while importing printed one too."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperCommand

from shapesgen.engines import interrupts_held, leave_interrupts_to_parent


def _worker_signals() -> tuple[object, bool]:
    """This worker's Ctrl-C handler, and whether Ctrl-C is blocked in it."""
    return signal.getsignal(signal.SIGINT), signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_spawned_worker_starts_with_ctrl_c_held_then_ignores_it() -> None:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context, initializer=leave_interrupts_to_parent) as pool:
        with interrupts_held():
            held_in_parent = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            future = pool.submit(_worker_signals)
        handler, blocked = future.result(timeout=60)
    assert held_in_parent and signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert handler == signal.SIG_IGN and not blocked


def test_a_failure_after_ctrl_c_is_reported_as_the_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    from shapesgen_cli import common, entry

    def interrupted_conversion() -> None:
        raise TypeError("Failed to convert elements of (2, 32, 128) to Tensor")

    monkeypatch.setattr(entry, "STOPPED_BY", [signal.SIGINT])
    monkeypatch.setattr(common, "STOPPED_BY", entry.STOPPED_BY)
    with pytest.raises(typer.Exit) as stopped:
        common.run(typer.Context(TyperCommand("predict")), interrupted_conversion)
    assert stopped.value.exit_code == 130 and common.REPORTED[-1] == "interrupted"
    monkeypatch.setattr(common, "STOPPED_BY", [])
    with pytest.raises(typer.Exit) as failed:
        common.run(typer.Context(TyperCommand("predict")), interrupted_conversion)
    assert failed.value.exit_code == common.EXIT_INTERNAL and "internal error" in common.REPORTED[-1]


def test_importing_the_package_loads_nothing_heavy() -> None:
    """``python -m shapesgen`` imports the package before the CLI installs its Ctrl-C handling."""
    code = "import sys, shapesgen; print(sorted({'numpy', 'h5py', 'shapely'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


@pytest.mark.parametrize("delay", [0.05, 0.2])
def test_ctrl_c_while_python_m_shapesgen_starts_is_one_line(tmp_path: Path, delay: float) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "shapesgen", "presets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        start_new_session=True,
    )
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert (process.returncode, lines) in ((130, ["error: interrupted"]), (0, [])), err.decode()


def test_predict_killed_leaves_no_clustering_worker_behind(run_dir: Path, tmp_path: Path) -> None:
    """``kill -9`` of predict left its spawned clustering workers (and their resource tracker)
    running for good, parented to init."""
    from conftest import TINY

    from shapesgen.build import render_dataset

    psutil = pytest.importorskip("psutil")
    data = render_dataset(TINY, tmp_path / "d.h5", num_scenes=400)
    args = ["predict", "--model", str(run_dir), "--data", str(data), "--out", str(tmp_path / "r.json")]
    proc = subprocess.Popen([sys.executable, "-m", "shapesgen", *args, "--workers", "2", "--batch-size", "1", "-q"])
    parent, deadline = psutil.Process(proc.pid), time.monotonic() + 120

    def spawned() -> list[Any]:
        found = []
        for child in parent.children():
            with contextlib.suppress(psutil.Error):  # one ended while listed
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
        return found

    while len(workers := spawned()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "predict ended before its workers were seen"
        time.sleep(0.01)
    family = parent.children(recursive=True)
    proc.kill()
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=20)
    for orphan in alive:  # not to outlive a failed test
        with contextlib.suppress(psutil.Error):
            orphan.kill()
    assert workers and not alive, [orphan.pid for orphan in alive]
