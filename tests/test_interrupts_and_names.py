"""A hostile review's findings (2026-11-26): names kept for side files, links as outputs, a
source replaced while it is exported, the lock files of killed shard tasks, and the entry
point's one line when a Ctrl-C lands outside a command's own handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from shapesgen import open_dataset
from shapesgen.coco import ExportConfig, ExportPart, export_part
from shapesgen.errors import ConfigError, DatasetError
from shapesgen.files import check_output_path, exclusive_lock
from shapesgen.shards import _remove_stale_locks
from shapesgen.storage.manifest import plan_shards

SMALL = ("--instances", 1, "--layers", 2, "--image-size", 64, "--mask-size", 32, "--seed", 3)
ENTRY = "import sys; from shapesgen_cli.entry import main; sys.argv[0] = 'shapesgen'; main()"
SHAPESGEN = [sys.executable, "-c", ENTRY]


@pytest.mark.parametrize("name", ["data.h5.partial", "data.h5.lock", "folder.partial"])
def test_an_output_may_not_take_a_side_file_name(tmp_path: Path, name: str) -> None:
    """`render --out data.h5 --force` deletes data.h5.partial: a dataset saved under that name was lost."""
    with pytest.raises(ConfigError, match="kept for the files made beside an output"):
        check_output_path(tmp_path / name, "out")
    result = run_cli("render", "--out", tmp_path / name, "--num", 2, "-q", *SMALL)
    assert result.exit_code == 2 and "--out" in result.stderr and not (tmp_path / name).exists()


@pytest.mark.parametrize("force", [False, True])
def test_render_never_replaces_a_link(tmp_path: Path, force: bool) -> None:
    target = tmp_path / "target.h5"
    target.write_bytes(b"a user's bytes")
    for link, points_to in ((tmp_path / "link.h5", target), (tmp_path / "dangling.h5", tmp_path / "none.h5")):
        link.symlink_to(points_to)
        result = run_cli("render", "--out", link, "--num", 2, "-q", *SMALL, *(["--force"] if force else []))
        assert result.exit_code == 2 and "symbolic link" in result.stderr, result.output
        assert link.is_symlink() and target.read_bytes() == b"a user's bytes"


def test_an_export_task_refuses_a_source_replaced_meanwhile(tmp_path: Path) -> None:
    """Tasks reopen the source by path: one replaced mid-export gave an export of two datasets, exit 0."""
    source = tmp_path / "a.h5"
    assert run_cli("render", "--out", source, "--num", 3, "-q", *SMALL).exit_code == 0
    with open_dataset(source) as ds:
        config, checksums = ds.config, json.dumps(ds.checksums, sort_keys=True)
    staging = tmp_path / "task"
    (staging / "images").mkdir(parents=True)
    part = ExportPart(index=0, file=str(source), start=0, stop=3, checksums=checksums)
    export_part(part, config, str(staging), ExportConfig(), report=lambda done: None)  # the file it was given
    assert run_cli("render", "--out", source, "--num", 3, "-q", "--force", *SMALL[:-1], "4").exit_code == 0
    with pytest.raises(DatasetError, match="replaced by another dataset while it was exported"):
        export_part(part, config, str(staging), ExportConfig(), report=lambda done: None)


def test_locks_of_killed_shard_tasks_are_removed_and_held_ones_kept(tmp_path: Path) -> None:
    shards = plan_shards(30, 10)
    (tmp_path / f"{shards[0].file}.lock").write_bytes(b"shapesgen lock pid 999999\n")  # its task was killed
    (tmp_path / f"{shards[1].file}.lock").write_bytes(b"")  # killed before it marked the file
    with exclusive_lock(tmp_path / shards[2].file, "out"):  # a task still running (a Dask worker elsewhere)
        _remove_stale_locks(tmp_path, shards)
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{shards[2].file}.lock"]
    assert list(tmp_path.iterdir()) == []


def test_the_entry_point_says_what_typer_leaves_unsaid(tmp_path: Path) -> None:
    """No arguments: the help and exit 2, no empty `error:` line. Standard output closed: no
    crash. A Ctrl-C while the command line is parsed: typer exits 130 without a word."""
    bare = subprocess.run(SHAPESGEN, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "render" in bare.stdout and bare.stderr == "", bare.stderr
    source = tmp_path / "a.h5"
    assert run_cli("render", "--out", source, "--num", 2, "-q", *SMALL).exit_code == 0
    closed_stdout = subprocess.run(
        ["bash", "-c", '"$@" >&-', "-", *SHAPESGEN, "info", str(source)], capture_output=True, text=True, timeout=120
    )
    assert closed_stdout.returncode == 0 and closed_stdout.stderr == "", closed_stdout.stderr
    interrupted_parse = (
        "import sys, typer.core\n"
        "def parse(*args, **kwargs): raise KeyboardInterrupt\n"
        "typer.core.TyperCommand.parse_args = parse\n"
        "from shapesgen_cli.entry import main\n"
        "sys.argv[0] = 'shapesgen'\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", interrupted_parse, "info", str(source)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 130 and result.stderr == "error: interrupted\n", (result.returncode, result.stderr)


def test_a_second_interrupt_is_ignored_while_the_first_is_handled() -> None:
    """The first Ctrl-C or SIGTERM stops the command; the rest cannot cut its clean-up short
    (a second one during a worker pool's shutdown left the command waiting at exit for ever)."""
    script = (
        "import os, signal, sys\n"
        "from shapesgen_cli import entry\n"
        "signal.signal(signal.SIGINT, entry._interrupt)\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    signal.pause()\n"
        "except KeyboardInterrupt:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('cleaned up', flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "cleaned up\n", (result.returncode, result.stderr)


def test_evaluate_warns_when_the_predictions_stop_early(tmp_path: Path) -> None:
    """`predict --limit 3` scored against 300 scenes gave AP 0.0099 without a word."""
    from shapesgen.evaluate import evaluate_files, load_ground_truth, oracle_predictions

    gt = tmp_path / "gt.h5"
    assert run_cli("render", "--out", gt, "--num", 10, "-q", *SMALL).exit_code == 0
    records = oracle_predictions(load_ground_truth(gt, keep_layers=True, band_rate="pixel"), 2)
    (tmp_path / "none.json").write_text("[]")
    _, warnings = evaluate_files(gt, dt=tmp_path / "none.json")
    assert warnings == [
        f"{tmp_path / 'none.json'} holds no predictions: every ground-truth instance counts as missed (AP and AR are 0)"
    ]
    for name, kept in (("all.json", records), ("first3.json", [r for r in records if r["image_id"] <= 3])):
        (tmp_path / name).write_text(json.dumps(kept, default=lambda v: v.decode() if isinstance(v, bytes) else v))
        _, warnings = evaluate_files(gt, dt=tmp_path / name)
        early = [w for w in warnings if "stop at image id" in w]
        if kept is records:
            assert early == []
        else:
            assert len(early) == 1 and "image id 3: the 7 ground-truth images after it" in early[0], early


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_after_the_output_is_written_does_not_fail_the_command(tmp_path: Path, sig: str) -> None:
    """A Ctrl-C or SIGTERM once 'wrote ...' is printed (while pools shut down and TensorFlow
    tears down, about 2 s): the output is complete, so the command ends as it would have (exit 0,
    no message). Before, exit 130 with 'error: interrupted', or a bare SIGTERM death (143)."""
    import signal

    data = tmp_path / "two.h5"
    assert run_cli("render", "--instances", 1, "--num", 2, "--seed", 5, "--out", data).exit_code == 0
    out = tmp_path / "two.json"
    args = ["predict", "--model", "paper6-2layers", "--data", str(data), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen([*SHAPESGEN, *args], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("wrote"):
            proc.send_signal(getattr(signal, sig))
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and rest == "", rest
    assert json.loads(out.read_text())


def test_a_file_name_that_is_not_utf8_is_shown_as_its_own_bytes(tmp_path: Path) -> None:
    """Before, 'wrote q\\udcff.h5': Python's escape of the byte 0xff, not the name on disk."""
    out = os.fsencode(tmp_path) + b"/q\xff.h5"
    args = [b"render", b"--instances", b"1", b"--num", b"2", b"--out", out]
    result = subprocess.run([*map(os.fsencode, SHAPESGEN), *args], capture_output=True, timeout=120)
    assert result.returncode == 0 and result.stderr == b"wrote " + out + b"\n", result.stderr
    assert os.path.exists(out)


def test_render_coco_stopped_while_exporting_says_the_dataset_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said only "interrupted"; rerunning the command then asked for --force, a render again."""
    import shapesgen.coco

    def stopped(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(shapesgen.coco, "export_coco", stopped)
    out, coco = tmp_path / "d.h5", tmp_path / "export"
    result = run_cli("render", "--num", 2, "--image-size", 64, "--out", out, "--coco", coco, "-q")
    assert result.exit_code == 130
    assert result.stderr.count("\n") == 1 and f"{out} is complete" in result.stderr
    assert f"shapesgen export coco {out} --out {coco}" in result.stderr
    assert run_cli("validate", out).exit_code == 0 and not coco.exists()
    monkeypatch.undo()
    assert run_cli("export", "coco", out, "--out", coco, "-q").exit_code == 0
    before = (coco / "annotations.json").read_bytes()
    monkeypatch.setattr(shapesgen.coco, "export_coco", stopped)
    again = run_cli("render", "--num", 2, "--image-size", 64, "--out", out, "--coco", coco, "--force", "-q")
    assert again.exit_code == 130 and "the earlier export there is kept as it was" in again.stderr
    assert f"--out {coco} --force`" in again.stderr and (coco / "annotations.json").read_bytes() == before


def test_predict_shows_nothing_of_tensorflows_start_up(tiny_dataset: Path, run_dir: Path, tmp_path: Path) -> None:
    """TensorFlow's native logging wrote two notices (absl's, oneDNN's) twice at import, whatever
    TF_CPP_MIN_LOG_LEVEL said: a quiet, successful predict now writes nothing to stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SHAPESGEN_TRACEBACK")}
    command = [*SHAPESGEN, "predict", "--model", str(run_dir), "--data", str(tiny_dataset), "--out", "r.json", "-q"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads((tmp_path / "r.json").read_text()) is not None


def test_native_chatter_is_dropped_and_everything_else_kept() -> None:
    from shapesgen_cli.common import without_native_chatter

    text = (
        "a line of ours\n"
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1795744402.266827   25722 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
        "To enable the following instructions: AVX2 AVX512F, rebuild TensorFlow with the appropriate flags.\n"
        "W0000 00:00:1795744404.482690   25722 port.cc:153] oneDNN custom operations are on.\n"
        "UserWarning: a Python warning printed right after a record\n"
        "E0000 00:00:1795744404.482690   25722 cuda_dnn.cc:8] Unable to register cuDNN factory\n"
        "  its detail\n"
    )
    assert list(without_native_chatter(text.splitlines())) == [
        "a line of ours",
        "UserWarning: a Python warning printed right after a record",
        "E0000 00:00:1795744404.482690   25722 cuda_dnn.cc:8] Unable to register cuDNN factory",
        "  its detail",
    ]


def test_what_precedes_a_crash_while_hidden_is_still_shown(tmp_path: Path) -> None:
    """The filter forwards each line as it comes: a fatal record before an abort is not lost;
    with standard error closed the block is a no-op."""
    script = (
        "import os, sys, time\n"
        "from shapesgen_cli.common import native_chatter_hidden\n"
        "with native_chatter_hidden():\n"
        "    os.write(2, b'I0000 00:00:1.0   1 x.cc:1] chatter\\nF0000 00:00:1.0   1 x.cc:2] fatal\\n')\n"
        "    time.sleep(0.5)\n"
        "    os.abort()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "fatal" in done.stderr and "chatter" not in done.stderr
    program = "from shapesgen_cli.common import native_chatter_hidden\nwith native_chatter_hidden(): pass\nprint(1)"
    closed = subprocess.run(
        [sys.executable, "-c", program],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.close(2),
    )
    assert closed.returncode == 0 and closed.stdout.strip() == "1"
