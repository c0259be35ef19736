"""Same config, seed and start time => the same file bytes, not only the same data: whatever
the worker count or pace, and after a render killed (SIGKILL) or stopped (Ctrl-C) at any point
and resumed. Before, HDF5's metadata layout followed timed flushes and a resumed file kept its
truncated tail's layout: a resumed file differed in about 100 kB of 180 kB."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shapesgen import SceneConfig
from shapesgen.build import ProgressCallback, RenderInterrupted, render_dataset
from shapesgen.config import StorageConfig
from shapesgen.files import partial_path
from shapesgen.storage.writer import rebuild_path

CONFIG = SceneConfig(image_size=64, mask_size=32, instances_per_class=2, layers=3, seed=5)
STORAGE = StorageConfig(batch_scenes=4)
NUM = 22  # 6 batches, the last one short
CREATED = "2020-01-01T00:00:00+00:00"


def render(out: Path, *, workers: int = 1, resume: bool = False, progress: ProgressCallback | None = None) -> bytes:
    path = render_dataset(
        CONFIG, out, num_scenes=NUM, storage=STORAGE, created=CREATED, workers=workers, resume=resume, progress=progress
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return render(tmp_path_factory.mktemp("ref") / "ref.h5")


def test_the_bytes_do_not_depend_on_pace_or_workers(
    tmp_path: Path, reference: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow render (the clock jumps 10 s per reading: flushes once fell due every batch) and
    one with 2 workers write the reference bytes."""
    clock = iter(range(0, 10**6, 10))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    assert render(tmp_path / "slow.h5") == reference
    monkeypatch.undo()
    assert render(tmp_path / "two.h5", workers=2) == reference


CHILD = """
import os, signal, sys
from shapesgen import SceneConfig
from shapesgen.build import render_dataset
from shapesgen.config import StorageConfig
from shapesgen.storage import writer

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point, after, resume = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
calls = [0]
append = writer.DatasetWriter.append

def counted(self, batch):
    calls[0] += 1
    if point == "before-flush" and calls[0] == after:
        self.file.flush = die  # the batch's chunks and rows are written, its metadata is not
    append(self, batch)
    if point == "after-batch" and calls[0] == after:
        die()

writer.DatasetWriter.append = counted
if point == "before-close":
    writer.DatasetWriter.close = die
config = SceneConfig(image_size=64, mask_size=32, instances_per_class=2, layers=3, seed=5)
render_dataset(config, sys.argv[1], num_scenes=22, storage=StorageConfig(batch_scenes=4),
               created="2020-01-01T00:00:00+00:00", resume=resume)
"""


def killed(out: Path, point: str, after: int = 0, resume: bool = False) -> None:
    args = [sys.executable, "-c", textwrap.dedent(CHILD), str(out), point, str(after), "1" if resume else "0"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr


@pytest.mark.parametrize(
    ("point", "after"),
    [("after-batch", 1), ("after-batch", 6), ("before-flush", 3), ("before-close", 0)],
    ids=["after-batch-1", "after-last-batch", "torn-batch-3", "finished-not-closed"],
)
def test_a_render_killed_and_resumed_writes_the_uninterrupted_bytes(
    tmp_path: Path, reference: bytes, point: str, after: int
) -> None:
    out = tmp_path / "out.h5"
    killed(out, point, after)
    assert partial_path(out).exists() and not out.exists()
    assert render(out, resume=True) == reference


def test_a_resume_killed_while_rebuilding_resumes_again(tmp_path: Path, reference: bytes) -> None:
    """The rebuild is written beside the partial file and replaces it once whole: killed midway,
    it is dropped and the partial file, untouched, is resumed again."""
    out = tmp_path / "out.h5"
    killed(out, "after-batch", 4)
    killed(out, "after-batch", 2, resume=True)  # the second of the 4 batches copied
    assert rebuild_path(partial_path(out)).exists()
    assert render(out, resume=True) == reference and not rebuild_path(partial_path(out)).exists()


def test_ctrl_c_mid_batch_then_resume_writes_the_uninterrupted_bytes(tmp_path: Path, reference: bytes) -> None:
    """Stopped between two progress reports, with 2 workers rendering ahead; resumed with 1."""
    out = tmp_path / "out.h5"

    def stop(done: int, _total: int) -> None:
        if done >= 9:
            raise KeyboardInterrupt

    with pytest.raises(RenderInterrupted):
        render(out, workers=2, progress=stop)
    assert render(out, resume=True) == reference
