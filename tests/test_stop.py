"""Stopping a long solve, as a user does it, with real processes: ``queue cancel --now`` of a
task sleeping 600 s (in Python, in a subprocess, in a process of another session, ignoring
SIGTERM), task time limits (``Task(timeout=...)``) in a pinion and in ``workflow run``, and
the progress of a long run (``queue view``, the pinion's lines). No timing is asserted beyond
"it ended long before the 600 s task would have"."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import caliber
from caliber.errors import WorkflowDefinitionError
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.results.model import Results
from tests.pinion_helpers import alive, start_pinion, status_of, stop, wait_for

FUNCTIONS = '''
import os, signal, subprocess, time
from pathlib import Path
from caliber import context

def _mark(folder, name):
    (Path(folder) / name).write_text(str(os.getpid()))

def first(folder):
    context.g.mesh = "fine"
    return {"nodes": 90000}

def solve(folder, how, marker):
    _mark(folder, "solve-started")
    if how == "python":  # in C: one call of 600 s
        time.sleep(600)
    elif how == "steps":
        for _ in range(60000):
            time.sleep(0.01)
    elif how == "subprocess":
        subprocess.run(["sleep", "600", marker])
    elif how == "session":  # a process in a new session, the task waiting on
        subprocess.Popen(["sleep", "600", marker], start_new_session=True)
        time.sleep(600)
    elif how == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(["sleep", "600", marker])
        time.sleep(600)
    elif how == "stuck":  # as a call into C that never returns to Python: no signal lands
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
        subprocess.Popen(["sleep", "600", marker])
        time.sleep(600)
    return "solved"

def nap(seconds):
    time.sleep(seconds)
    return seconds

def after(folder):
    _mark(folder, "after-ran")
    return "after"
'''

WAIT = 90.0  # seconds: generous, and far below the 600 s a task would take


def make(tmp_path: Path) -> Path:
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "solver.py").write_text(textwrap.dedent(FUNCTIONS))
    return folder


def solve_workflow(folder: Path, how: str, marker: str, *,
                   timeout: float | None = None) -> caliber.Workflow:
    """first, then a solve of 600 s (``how``), then after: three tasks."""
    return caliber.Workflow(caliber.Process([
        caliber.Task("solver:first", args=[str(folder)]),
        caliber.Task("solver:solve", args=[str(folder), how, marker], timeout=timeout),
        caliber.Task("solver:after", args=[str(folder)]),
    ]), "solve", attachments=["solver.py"], base_dir=folder)


def new_marker() -> str:
    """A unique argument of the ``sleep`` the tasks start (a number: sleep adds them up), to
    find those processes through /proc."""
    return f"0.{random.randrange(10**8, 10**9)}"


def processes_with(marker: str) -> list[int]:
    """Processes (not zombies) whose command line holds ``marker`` as an argument."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv and alive(int(entry)):
            found.append(int(entry))
    return found


def caliber_cli(*args: str, ok: bool = True, cwd: Path | None = None,
                ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def results_of(workload_id: str) -> Results:
    with open_backend(local_target()) as backend:
        workload = backend.get(workload_id)
        assert workload.results_id is not None
        return backend.get_results(workload.results_id)


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")


@needs_proc
@pytest.mark.parametrize("how", ["python", "steps", "subprocess", "session"])
def test_cancel_now_stops_the_running_task_and_keeps_what_finished(
        tmp_path: Path, how: str) -> None:
    folder = make(tmp_path)
    marker = new_marker()
    wid = solve_workflow(folder, how, marker).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "0.6")
    try:
        wait_for(lambda: (folder / "solve-started").exists(), what="the solve to start")
        child = int((folder / "solve-started").read_text())
        if how in ("subprocess", "session"):
            wait_for(lambda: processes_with(marker), what="the solver's process")
        # the local queue: the progress file, written once the task has run a tenth of a
        # second and the pinion's loop looked (later on a loaded machine)
        wait_for(lambda: "task 2 of 3: solve" in " ".join(
            caliber_cli("queue", "view", wid).stdout.split()), what="queue view's progress")
        out = json.loads(caliber_cli("queue", "cancel", wid, "--now", "--json").stdout)
        assert out["status"] == "running" and out["cancel_asked"] and out["now"]
        wait_for(lambda: status_of(wid) == "cancelled", timeout=WAIT,
                 what="the workload to be cancelled")
        _out, err = pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
    results = results_of(wid)
    assert results.status.value == "cancelled"
    assert [(t.name, t.status.value) for t in results.tasks] == [
        ("first", "completed"), ("solve", "failed"), ("after", "skipped")]
    assert results["first"] == {"nodes": 90000} and results.g == {"mesh": "fine"}
    assert results.error is not None and results.error.type == "Cancelled"
    assert results.error.task == "solve"
    assert re.fullmatch(r"cancelled by \S+@\S+: stopped while it ran \(queue cancel --now\)",
                        results.error.message), results.error.message
    assert not (folder / "after-ran").exists()
    assert not alive(child) and processes_with(marker) == []  # nothing left behind
    assert "stopping the running task now (SIGTERM, SIGKILL after 10 s)" in err
    stamped = [line for line in err.splitlines() if "cancelled by" in line]
    assert stamped and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d pinion p: ", stamped[0]), err


@needs_proc
def test_a_task_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    folder = make(tmp_path)
    marker = new_marker()
    wid = solve_workflow(folder, "ignore", marker).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "0.6", "--cancel-grace", "1")
    try:
        wait_for(lambda: processes_with(marker), what="the solver's process")
        child = int((folder / "solve-started").read_text())
        caliber_cli("queue", "cancel", wid, "--now")
        wait_for(lambda: status_of(wid) == "cancelled", timeout=WAIT,
                 what="the workload to be cancelled")
        pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
    results = results_of(wid)
    assert results.status.value == "cancelled"
    assert results["first"] == {"nodes": 90000}  # made by the pinion: the child was killed
    assert results.g == {"mesh": "fine"}
    assert results.error is not None and results.error.task == "solve"
    assert results.error.message.endswith(
        ": task 'solve' did not stop within 1 s of SIGTERM, and was killed")
    assert not alive(child) and processes_with(marker) == []


def test_cancel_now_of_a_queued_workload_is_a_cancel(tmp_path: Path) -> None:
    folder = make(tmp_path)
    wid = solve_workflow(folder, "python", new_marker()).queue(pinion="p")
    done = caliber_cli("queue", "cancel", wid[:6], "--now")
    assert done.stdout.startswith(f"cancelled workload {wid}; it will not run")
    assert status_of(wid) == "cancelled"


@needs_proc
def test_a_task_past_its_time_limit_fails_and_the_next_does_not_run(tmp_path: Path) -> None:
    folder = make(tmp_path)
    wid = solve_workflow(folder, "python", new_marker(), timeout=1).queue(pinion="p")
    done = caliber_cli("pinion", "init", "p", "-a", "1", "-w", "0")
    assert "1 failed" in done.stdout
    results = results_of(wid)
    assert results.status.value == "failed"
    assert [(t.name, t.status.value) for t in results.tasks] == [
        ("first", "completed"), ("solve", "failed"), ("after", "skipped")]
    assert results.error is not None
    assert results.error.summary() == (
        "task 'solve': TaskTimeout: task 'solve' ran past its time limit of 1 s")
    assert results["first"] == {"nodes": 90000} and not (folder / "after-ran").exists()


@needs_proc
def test_a_task_stuck_past_its_time_limit_is_killed_by_the_pinion(tmp_path: Path) -> None:
    folder = make(tmp_path)
    marker = new_marker()
    wid = solve_workflow(folder, "stuck", marker, timeout=1).queue(pinion="p")
    caliber_cli("pinion", "init", "p", "-a", "1", "-w", "0", "--cancel-grace", "1")
    results = results_of(wid)
    assert results.status.value == "failed"
    assert results.error is not None and results.error.type == "TaskTimeout"
    assert results.error.summary() == (
        "task 'solve': TaskTimeout: task 'solve' ran past its time limit of 1 s; it did not "
        "stop, and was killed 1 s later")
    assert results["first"] == {"nodes": 90000} and results.g == {"mesh": "fine"}
    assert not (folder / "after-ran").exists() and processes_with(marker) == []


def branch_workflow(folder: Path) -> caliber.Workflow:
    """Three branches: nap (time limit 3 s; branch 1 naps 600 s), then after."""
    return caliber.Workflow(caliber.BranchProcess([
        caliber.Task("solver:nap", args=[[0.01], [600], [0.02]], timeout=3),
        caliber.Task("solver:after", args=[[str(folder)]] * 3),
    ], branches=3, name="cases"), "branches", attachments=["solver.py"], base_dir=folder)


def check_branches(results: Results) -> None:
    statuses = [(t.name, t.branch, t.status.value) for t in results.tasks]
    assert statuses == [("nap", 0, "completed"), ("after", 0, "completed"),
                        ("nap", 1, "failed"), ("after", 1, "skipped"),
                        ("nap", 2, "completed"), ("after", 2, "completed")]
    assert results.status.value == "failed" and results.error is not None
    assert results.error.summary() == (
        "task 'nap' (branch 1): TaskTimeout: task 'nap' ran past its time limit of 3 s")
    assert results.get("nap", branch=2) == 0.02


def test_a_branch_past_its_time_limit_fails_while_the_others_complete(tmp_path: Path) -> None:
    folder = make(tmp_path)
    wid = branch_workflow(folder).queue(pinion="p")
    caliber_cli("pinion", "init", "p", "-a", "1", "-w", "0")
    check_branches(results_of(wid))


def test_workflow_run_honours_time_limits(tmp_path: Path) -> None:
    folder = make(tmp_path)
    branch_workflow(folder).export(folder / "branches.json")
    done = caliber_cli("workflow", "run", "branches.json", ok=False, cwd=folder)
    assert done.returncode == 1, done.stderr
    assert ("workflow 'branches' failed: task 'nap' (branch 1): TaskTimeout: task 'nap' ran "
            "past its time limit of 3 s") in done.stderr
    check_branches(caliber.get_results(workflow="branches"))
    shown = caliber_cli("workflow", "show", "branches.json", cwd=folder).stdout
    assert "time limit 3 s" in " ".join(shown.split())


def test_workflow_run_of_a_subprocess_past_its_limit_leaves_nothing(tmp_path: Path) -> None:
    folder = make(tmp_path)
    marker = new_marker()
    solve_workflow(folder, "subprocess", marker, timeout=1).export(folder / "solve.json")
    done = caliber_cli("workflow", "run", "solve.json", ok=False, cwd=folder)
    assert done.returncode == 1
    assert "task 'solve' ran past its time limit of 1 s" in done.stderr
    assert processes_with(marker) == []  # subprocess.run kills its process when interrupted
    results = caliber.get_results(workflow="solve")
    assert [t.status.value for t in results.tasks] == ["completed", "failed", "skipped"]


def test_a_time_limit_must_be_a_positive_number(tmp_path: Path) -> None:
    folder = make(tmp_path)
    for bad in (0, -1, True, float("nan"), "60"):
        with pytest.raises(WorkflowDefinitionError, match="timeout must be a number"):
            caliber.Task("solver:nap", timeout=bad)  # type: ignore[arg-type]
    document = json.loads(json.dumps(solve_workflow(folder, "python", "0", timeout=60)
                                     .to_document()))
    assert document["process"]["tasks"][1]["timeout"] == 60
    assert "timeout" not in document["process"]["tasks"][0]  # only when it has one
    document["process"]["tasks"][1]["timeout"] = "60"
    (folder / "bad.json").write_text(json.dumps(document))
    done = caliber_cli("workflow", "show", "bad.json", ok=False, cwd=folder)
    assert done.returncode == 2
    assert "process.tasks[1].timeout: Input should be a valid number" in done.stderr


def test_ctrl_c_in_workflow_run_says_so_in_words(tmp_path: Path) -> None:
    folder = make(tmp_path)
    solve_workflow(folder, "python", new_marker()).export(folder / "solve.json")
    run = subprocess.Popen([sys.executable, "-m", "caliber", "workflow", "run", "solve.json"],
                           cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (folder / "solve-started").exists(), what="the solve to start")
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=WAIT)
    assert run.returncode == 130, err
    assert "Traceback" not in err, err  # Ctrl-C: no traceback of where it was
    results = caliber.get_results(workflow="solve")
    assert results.status.value == "cancelled"
    assert results.error is not None
    assert results.error.summary() == "task 'solve': KeyboardInterrupt: stopped by Ctrl-C"
    assert results["first"] == {"nodes": 90000} and results.g == {"mesh": "fine"}


def test_a_remote_checkpoint_keeps_a_cancel_now_and_the_progress() -> None:
    import datetime as dt

    from caliber.queue.speckle.checkpoint import _state, _state_doc
    from caliber.queue.speckle.log import State

    at = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    running = State(id="w1", pinion="p", workflow="wf", created_at=at, queued_by="a@b",
                    object_id="o1", order=(at, "v1"), cancel="bob@desk", cancel_now=True,
                    progress={"started_at": at.isoformat(), "task": {"index": 2}})
    doc = json.loads(json.dumps(_state_doc(running)))
    assert len(doc) == 20 and doc[18] == [None, None]  # the groups before it, empty
    assert _state(doc) == running
    plain = State(id="w2", pinion="p", workflow="wf", created_at=at, queued_by="a@b",
                  object_id="o2", order=(at, "v2"))
    assert len(_state_doc(plain)) == 17  # as older readers read it


def test_cancel_events_say_now_only_when_they_are() -> None:
    from caliber.queue.speckle import events as ev

    assert ev.encode(ev.Cancel(workload="w", by="a@b")) == {"e": "cancel", "w": "w", "v": "a@b"}
    assert ev.encode(ev.Cancel(workload="w", by="a@b", now=True))["cn"] is True
    assert ev.decode({"e": "cancel", "w": "w", "v": "a@b", "cn": "yes"}) is None  # not a bool
    assert ev.decode({"e": "renew", "w": "w", "t": "t", "pg": [1]}) is None  # not an object
