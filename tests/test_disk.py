"""Disk trouble: the queue or the runs folder on a full or read-only file system, a limited
file size, a queue file that is damaged or not a queue at all. Users get one clear line, and
nothing already stored is damaged.

Full and read-only file systems are small tmpfs mounts, which need root (CI runs as root);
the file-size limit (RLIMIT_FSIZE) needs no privileges.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from caliber.errors import QueueError, WorkspaceError
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue.registry import open_backend
from caliber.queue.sqlite.backend import SQLiteBackend
from caliber.queue.target import local_target
from tests.pinion_helpers import make_folder, workflow
from tests.reliability_figures import record
from tests.test_fuzz import run_cli

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file systems and limits")


def _can_mount() -> bool:
    return os.name == "posix" and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards (root only: skipped otherwise)."""
    if not _can_mount():
        pytest.skip("mounting a small file system needs root")
    where = tmp_path / "fs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def fill(where: Path) -> Path:
    """Fill the file system at ``where`` to the last byte; returns the filler file."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def one_line(code: int, err: str, expected: tuple[int, ...] = (1,)) -> str:
    assert code in expected, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("caliber: error: "), err
    return lines[-1]


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"


def big_workflow_file(folder: Path, size: int) -> Path:
    make_folder(folder)
    (folder / "big.txt").write_text("x" * size)
    path = folder / "big.json"
    path.write_text(json.dumps({
        "caliber": 1, "name": "big", "attachments": ["pinfuncs.py", "big.txt"],
        "process": {"type": "process", "tasks": [
            {"type": "task", "name": "add", "function": "pinfuncs:add", "args": [1]}]},
    }))
    return path


def drain(name: str = "p", **config: object) -> Pinion:
    with open_backend(local_target()) as backend:
        pinion = Pinion(PinionConfig(name=name, attempts=1, wait=0, **config),  # type: ignore[arg-type]
                        backend)
        pinion.run()
    return pinion


@posix_only
def test_queue_on_a_full_disk(small_fs: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_HOME", str(small_fs / "home"))
    folder = make_folder(tmp_path / "wf")
    ids = [workflow(folder, [("add", [i])]).queue(pinion="p") for i in range(3)]
    filler = fill(small_fs)
    code, out, err = run_cli("workflow", "queue", str(big_workflow_file(tmp_path / "big", 600_000)),
                             "-p", "p")
    line = one_line(code, err)
    assert "full" in line and out == ""
    code, out, err = run_cli("queue", "list", "--json")
    if code:  # SQLite cannot even make its shared-memory file: it says why
        assert "disk is full" in one_line(code, err)
    else:
        assert [w["id"] for w in json.loads(out)] == ids
    with pytest.raises((QueueError, WorkspaceError)), open_backend(local_target()) as backend:
        Pinion(PinionConfig(name="p", attempts=1, wait=0, lease=0.2), backend).run_once()
    filler.unlink()
    assert integrity(small_fs / "home" / "caliber.db") == "ok"
    drain(lease=0.2)
    with open_backend(local_target()) as backend:
        assert [w.status.value for w in backend.list_workloads()] == ["completed"] * 3
        assert [w.attempts for w in backend.list_workloads()] in ([1, 1, 1], [2, 1, 1])
    record("disk.full_queue", refused_with="one line", stored_entries_intact=3)


@posix_only
def test_runs_folder_on_a_full_or_read_only_disk(small_fs: Path, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    wid = workflow(folder, [("add", [1])]).queue(pinion="p")
    filler = fill(small_fs)
    outcomes = []
    for trouble in ("full", "read-only"):
        if trouble == "read-only":
            filler.unlink()
            remount(small_fs, "ro")
        with open_backend(local_target()) as backend:
            pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0, runs_dir=small_fs),
                            backend)
            with pytest.raises(WorkspaceError) as caught:
                pinion.run_once()
            outcomes.append(str(caught.value))
            workload = backend.get(wid)
        # Not the workload's fault: back in the queue, the attempt not counted.
        assert workload.status == "queued" and workload.attempts == 0
        assert "runs folder" in workload.history[-1].message
    assert "No space left" in outcomes[0] and "Read-only" in outcomes[1]
    remount(small_fs, "rw")
    drain(runs_dir=small_fs)
    with open_backend(local_target()) as backend:
        assert backend.get(wid).status == "completed"
    record("disk.runs_folder", troubles=["full", "read-only"], workloads_lost=0)


@posix_only
def test_queue_on_a_read_only_file_system(small_fs: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_HOME", str(small_fs / "home"))
    folder = make_folder(tmp_path / "wf")
    ids = [workflow(folder, [("add", [i])]).queue(pinion="p") for i in range(2)]
    db = small_fs / "home" / "caliber.db"
    before = digest(db)
    remount(small_fs, "ro")
    try:
        path = big_workflow_file(tmp_path / "big", 10)
        for argv in (["queue", "list"], ["queue", "list", "--json"], ["results", "list"],
                     ["workflow", "queue", str(path), "-p", "p"],
                     ["pinion", "init", "p", "-a", "1", "-w", "0"]):
            code, _out, err = run_cli(*argv)
            assert "read-only" in one_line(code, err)
    finally:
        remount(small_fs, "rw")
    assert digest(db) == before and integrity(db) == "ok"
    with open_backend(local_target()) as backend:
        assert [w.id for w in backend.list_workloads()] == ids
    record("disk.read_only_queue", commands_refused=5, stored_entries_intact=2)


LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["caliber", *sys.argv[2:]]
runpy.run_module("caliber", run_name="__main__")
"""


def run_limited(limit: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(LIMITED), str(limit), *argv],
                          capture_output=True, text=True, timeout=120)


@posix_only
def test_a_limited_file_size_refuses_cleanly_and_keeps_what_is_stored(
    tmp_path: Path, caliber_home: Path
) -> None:
    folder = make_folder(tmp_path / "wf")
    ids = [workflow(folder, [("add", [i])]).queue(pinion="p") for i in range(3)]
    db = caliber_home / "caliber.db"
    limit = db.stat().st_size + 200_000
    done = run_limited(limit, "workflow", "queue",
                       str(big_workflow_file(tmp_path / "big", 2_000_000)), "-p", "p")
    line = one_line(done.returncode, done.stderr)
    assert "ulimit -f" in line
    assert integrity(db) == "ok"
    with open_backend(local_target()) as backend:
        assert [w.id for w in backend.list_workloads()] == ids
    # A pinion under a 1 MB limit: a workload printing 2 MB fails, the next one runs.
    loud = workflow(folder, [("crash", ["print"])]).queue(pinion="loud")
    quiet = workflow(folder, [("add", [5])]).queue(pinion="loud")
    done = run_limited(1_000_000, "pinion", "init", "loud", "-a", "1", "-w", "0")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    with open_backend(local_target()) as backend:
        failed, fine = backend.get(loud), backend.get(quiet)
    assert failed.status == "failed" and "too large" in (failed.last_error or "").lower()
    assert fine.status == "completed"
    assert integrity(db) == "ok"
    record("disk.file_size_limit", refused_with="one line", stored_entries_intact=3,
           loud_workload="failed, pinion went on")


def _random(db: Path) -> None:
    db.write_bytes(os.urandom(50_000))


def _text(db: Path) -> None:
    db.write_text("this is my shopping list, not a database\n")


def _truncated(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def _other_program(db: Path) -> None:
    db.unlink()
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE photos (name TEXT)")
    conn.execute("INSERT INTO photos VALUES ('holiday.jpg')")
    conn.commit()
    conn.close()


def _folder(db: Path) -> None:
    db.unlink()
    db.mkdir()


def _damaged_page(db: Path) -> None:
    with open(db, "r+b") as f:
        f.seek(4096 * 2)
        f.write(os.urandom(4096))


BROKEN = {"random bytes": _random, "text": _text, "truncated": _truncated,
          "another program's": _other_program, "a folder": _folder,
          "a damaged page": _damaged_page}


@pytest.mark.parametrize("how", list(BROKEN))
def test_a_queue_file_that_is_not_a_queue_is_refused_untouched(
    tmp_path: Path, caliber_home: Path, how: str
) -> None:
    folder = make_folder(tmp_path / "wf")
    for i in range(40):  # enough rows for several pages
        workflow(folder, [("add", [i])], name=f"w{i}" * 20).queue(pinion="p")
    db = caliber_home / "caliber.db"
    with SQLiteBackend(db):
        pass  # the last close checkpoints: everything is in the main file
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    BROKEN[how](db)
    before = digest(db)
    wf = big_workflow_file(tmp_path / "big", 10)
    lines = []
    for argv in (["queue", "list"], ["queue", "list", "--json"], ["results", "list"],
                 ["queue", "view", "x"], ["workflow", "queue", str(wf), "-p", "p"],
                 ["pinion", "init", "p", "-a", "1", "-w", "0"]):
        code, _out, err = run_cli(*argv)
        if how == "a damaged page" and code in (0, 2):  # what it can still read, it reads
            assert "Traceback" not in err
            continue
        lines.append(one_line(code, err))
    if how != "a damaged page":
        assert digest(db) == before  # nothing written into it
        assert all(str(db) in line for line in lines)
    record(f"disk.not_a_queue.{how}", commands=6, refused_with_one_line=len(lines))
