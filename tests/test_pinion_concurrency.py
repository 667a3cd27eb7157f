"""``caliber pinion init NAME --concurrency N``, with real pinion processes: up to N workloads
at once, each in its own child, run folder and lease. Overlap is proven by the tasks' own
recorded start and end times, never by how long a drain took."""

from __future__ import annotations

import collections
import io
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.pinion.progress import Reporter
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.results.model import Results
from tests.pinion_helpers import alive, start_pinion, status_of, stop, wait_for
from tests.test_pinion_lease import (
    MIB,
    SlowDrive,
    history_of,
    needs_fifo,
    slow_workflow,
    summary_of,
)
from tests.test_stop import make

FUNCTIONS = '''
import os, time
from pathlib import Path

def span(seconds, folder, name):
    start = time.time()
    (Path(folder) / f"{name}.pid").write_text(str(os.getpid()))
    print(f"{name} says hello", flush=True)
    time.sleep(seconds)
    return [start, time.time()]

def add(x):
    return x + 1
'''

WAIT = 90.0  # seconds: generous


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "wf"
    path.mkdir()
    (path / "spans.py").write_text(textwrap.dedent(FUNCTIONS))
    return path


def queue_span(folder: Path, name: str, seconds: float) -> str:
    task = caliber.Task("spans:span", name="span", args=[seconds, str(folder), name])
    return caliber.Workflow(caliber.Process([task]), name, attachments=["spans.py"],
                            base_dir=folder).queue(pinion="p")


def queue_add(folder: Path) -> str:
    task = caliber.Task("spans:add", name="add", args=[1])
    return caliber.Workflow(caliber.Process([task]), "add", attachments=["spans.py"],
                            base_dir=folder).queue(pinion="p")


def child_pid(folder: Path, name: str) -> int:
    """The pid of workload ``name``'s child, once its task has started."""
    path = folder / f"{name}.pid"
    return int(wait_for(lambda: path.exists() and path.read_text(), timeout=WAIT,
                        what=f"{name}'s task to start"))


def results_of(workload_id: str) -> Results:
    with open_backend(local_target()) as backend:
        workload = backend.get(workload_id)
        assert workload.results_id is not None, workload
        return backend.get_results(workload.results_id)


def workloads() -> dict[str, Any]:
    with open_backend(local_target()) as backend:
        return {w.id: w for w in backend.list_workloads()}


def results_per_workload() -> collections.Counter[str]:
    with open_backend(local_target()) as backend:
        rows = backend.conn.execute("SELECT workload_id FROM results").fetchall()
    return collections.Counter(r[0] for r in rows)


def caliber_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_two_run_at_once_and_three_complete_exactly_once(folder: Path, start: str) -> None:
    ids = {queue_span(folder, name, 1.5): name for name in ("one", "two", "three")}
    pinion = start_pinion("p", "--concurrency", "2", "-a", "2", "-w", "0.1",
                          env={"CALIBER_CHILD_START": start})
    out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 0, err
    assert "ran 3 (3 completed, 0 failed)" in out
    assert results_per_workload() == collections.Counter(list(ids))  # each once, none twice
    assert {(w.status.value, w.attempts) for w in workloads().values()} == {("completed", 1)}
    results = {wid: results_of(wid) for wid in ids}
    spans = sorted(r["span"] for r in results.values())
    (_, first_end), (second_start, second_end), (third_start, _) = spans
    assert second_start < first_end  # the first two ran at the same time
    assert third_start > min(first_end, second_end)  # never three: it waited for a slot
    for wid, name in ids.items():  # each its own run folder and output.log
        output = results[wid].output or ""
        assert f"{name} says hello" in output
        assert all(f"{other} says" not in output for other in ids.values() if other != name)
    assert len({r.work_dir for r in results.values()}) == 3
    assert "[slot 1] running workload" in err and "[slot 2] running workload" in err, err


def test_a_killed_child_fails_its_workload_while_the_other_runs_on(folder: Path) -> None:
    doomed = queue_span(folder, "doomed", 60)
    other = queue_span(folder, "other", 4)
    pinion = start_pinion("p", "--concurrency", "2", "-a", "1", "-w", "0.1")
    try:
        victim, survivor = child_pid(folder, "doomed"), child_pid(folder, "other")
        shown = caliber_cli("queue", "view", doomed)
        assert shown.returncode == 0, shown.stderr
        assert "[slot " in shown.stdout, shown.stdout  # which slot holds it (the lease)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: status_of(doomed) == "failed", timeout=WAIT, what="its failure")
        assert alive(survivor) and status_of(other) == "running"
        out, err = pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
    assert pinion.returncode == 0, err
    assert "ran 2 (1 completed, 1 failed)" in out
    failed = results_of(doomed)
    assert failed.error is not None and "killed by signal SIGKILL" in failed.error.message
    assert results_of(other).status.value == "completed"
    assert workloads()[doomed].attempts == 1


def test_ctrl_c_once_finishes_the_running_ones_and_claims_no_more(folder: Path) -> None:
    running = [queue_span(folder, name, 2) for name in ("left", "right")]
    waiting = queue_add(folder)
    pinion = start_pinion("p", "--concurrency", "2", "-a", "5", "-w", "0.1")
    children = [child_pid(folder, "left"), child_pid(folder, "right")]
    assert all(alive(pid) for pid in children)  # both run when the signal comes
    pinion.send_signal(signal.SIGINT)
    out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 0, err
    assert "stopping after the running workloads" in err
    assert "ran 2 (2 completed" in out
    assert [status_of(wid) for wid in running] == ["completed", "completed"]
    assert status_of(waiting) == "queued"


def test_ctrl_c_twice_puts_the_running_ones_back_uncounted(folder: Path) -> None:
    ids = [queue_span(folder, name, 60) for name in ("left", "right")]
    pinion = start_pinion("p", "--concurrency", "2", "-a", "5", "-w", "0.1")
    children = [child_pid(folder, "left"), child_pid(folder, "right")]
    pinion.send_signal(signal.SIGINT)
    assert pinion.stderr is not None
    wait_for(lambda: "again" in pinion.stderr.readline(), what="the warm stop's line")  # type: ignore[union-attr]
    pinion.send_signal(signal.SIGINT)
    _out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 130, err
    wait_for(lambda: not any(alive(pid) for pid in children), timeout=10,
             what="the children to go")
    for wid in ids:
        workload = workloads()[wid]
        assert (workload.status.value, workload.attempts, workload.lease) == ("queued", 0, None)


def test_cancel_and_timeout_act_on_their_own_slot(folder: Path) -> None:
    """A cancel --now stops one workload, a --timeout another; a third runs in the slot the
    first left, while the second still runs."""
    cancelled = queue_span(folder, "cancelled", 60)
    timed_out = queue_span(folder, "timed", 60)
    later = queue_add(folder)
    pinion = start_pinion("p", "--concurrency", "2", "-a", "1", "-w", "0.1", "--lease", "0.6",
                          "--timeout", "8")
    try:
        child = child_pid(folder, "cancelled")
        timed = child_pid(folder, "timed")
        done = caliber_cli("queue", "cancel", cancelled, "--now")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: status_of(later) == "completed", timeout=WAIT, what="the third")
        assert status_of(timed_out) == "running" and alive(timed)
        out, err = pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
    assert pinion.returncode == 0, err
    assert status_of(cancelled) == "cancelled" and not alive(child)
    stopped = results_of(timed_out)
    assert stopped.error is not None and stopped.error.message == "timed out after 8 s"
    assert "ran 3 (1 completed, 1 failed, 1 cancelled)" in out


@pytest.mark.parametrize("value", ["0", "-1", "x", "257", "1.5"])
def test_a_bad_concurrency_is_one_line_and_exit_2(folder: Path, value: str) -> None:
    wid = queue_add(folder)
    database = Path(os.environ["CALIBER_HOME"]) / "caliber.db"
    before = database.read_bytes()
    for args, env in ((["--concurrency", value], {}), ([], {"CALIBER_PINION_CONCURRENCY": value})):
        done = subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1",
                               *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})
        assert done.returncode == 2
        [line] = done.stderr.splitlines()
        assert "concurrency" in line.lower() and "from 1 to 256" in line, line
        assert database.read_bytes() == before
    assert status_of(wid) == "queued"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("live", [False, True])
def test_each_slots_lines_say_its_slot(live: bool) -> None:
    stream = Terminal() if live else io.StringIO()
    pinion = Reporter("p", stream=stream)
    one, two = pinion.for_slot(1), pinion.for_slot(2)
    one.workload_started("aaaaaaaaaa", "mesh", 1)
    two.workload_started("bbbbbbbbbb", "solve", 1)
    one.task_event({"kind": "start", "index": 1, "total": 2, "name": "Mesh"})
    two.task_event({"kind": "start", "index": 2, "total": 3, "name": "Solve"})
    pinion.stopping(cold=False)
    two.workload_finished("completed", "results r")
    pinion.close()
    text = stream.getvalue()
    assert "stopping after the running workloads (press Ctrl-C again" in text
    assert "[slot 2] workload bbbbbbbbbb (solve) completed in" in text
    if live:  # one live line, every running slot's task on it
        assert re.search(r"\[slot 1\] aaaaaaaaaa \(mesh\): task 1/2 Mesh \.\.\. [\d.]+ s \| "
                         r"\[slot 2\] bbbbbbbbbb \(solve\): task 2/3 Solve \.\.\. [\d.]+ s",
                         text), text
    else:
        assert "pinion p: [slot 1] running workload aaaaaaaaaa (mesh)" in text
        assert "pinion p: [slot 2] running workload bbbbbbbbbb (solve)" in text


@pytest.fixture
def slow_drive(tmp_path: Path) -> Iterator[SlowDrive]:
    """As tests/test_pinion_lease.py's ``drive``: 12 MiB fed at about 2 MiB a second."""
    share = tmp_path / "share"
    share.mkdir()
    made = SlowDrive(share / "mesh.bin", 12 * MIB, 0.5)
    yield made
    made.close()


@needs_fifo
def test_a_slow_preparation_in_one_slot_keeps_the_other_slots_lease(
        tmp_path: Path, slow_drive: SlowDrive) -> None:
    """Slot 2 writes an attachment read from a slow drive (about 6 s, two leases of 3 s)
    while slot 1's workload runs: slot 1's lease is renewed meanwhile, so a second pinion
    that looks all along never takes its workload."""
    folder = make(tmp_path)
    running = caliber.Workflow(caliber.Process([caliber.Task("solver:nap", args=[10])]),
                               "nap", attachments=["solver.py"], base_dir=folder).queue(
                                   pinion="p")
    drive = slow_drive
    slow = slow_workflow(folder, drive).queue(pinion="p")
    drive.start()
    first = start_pinion("p", "--concurrency", "2", "-a", "1", "-w", "0", "--lease", "3",
                         "--json")
    second = None
    try:
        assert drive.opened.wait(WAIT), "the first pinion never read the attachment"
        assert status_of(running) == "running"
        second = start_pinion("p", "--forever", "-w", "0.1", "--lease", "3", "--json")
        out, err = first.communicate(timeout=WAIT)
        assert first.returncode == 0, err
        assert drive.fed == drive.size
        second.send_signal(signal.SIGINT)
        second_out, _ = second.communicate(timeout=WAIT)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert summary_of(out)["completed"] == 2
    assert summary_of(second_out)["ran"] == 0
    for wid in (running, slow):
        claims = [m for m in history_of(wid) if m.startswith("claimed by")]
        assert len(claims) == 1, history_of(wid)
        assert status_of(wid) == "completed"
