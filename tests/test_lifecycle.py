"""The life of a workload after it was queued, as a user lives it: cancel (queued, and running
under a real pinion process), retry, retry --resume, workflow run --resume, queue list's
counts. The verbs themselves are also in the backend contract (tests/contract)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.results.model import Results
from tests.pinion_helpers import make_folder, start_pinion, status_of, stop, wait_for

# Each task appends a letter to a file of its own in ``folder``, so the tests count runs.
FUNCTIONS = '''
import time
from pathlib import Path
from caliber import context

def _count(folder, name):
    with open(Path(folder) / name, "a") as f:
        f.write("x")

def load(folder):
    _count(folder, "load")
    context.g.scale = 3
    return [1, 2]

def check(values, folder):
    _count(folder, "check")
    if not (Path(folder) / "input-fixed").exists():
        raise ValueError("the input file is wrong")
    context.g.offset = 10
    return sum(values) * context.g.scale

def report(total, folder):
    _count(folder, "report")
    return {"total": total + context.g.offset, "scale": context.g.scale}

def block(folder):
    _count(folder, "block")
    while not (Path(folder) / "go").exists():
        time.sleep(0.02)
    return "blocked"
'''


def run_caliber(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=120)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def runs(folder: Path, name: str) -> int:
    path = folder / name
    return len(path.read_text()) if path.exists() else 0


def three_tasks(folder: Path) -> caliber.Workflow:
    """load -> check (fails until input-fixed exists) -> report, all counting in ``folder``."""
    load = caliber.Task("lcfuncs:load", name="load", args=[str(folder)])
    check = caliber.Task("lcfuncs:check", name="check", args=[load.result, str(folder)])
    report = caliber.Task("lcfuncs:report", name="report", args=[check.result, str(folder)])
    return caliber.Workflow(caliber.Process([load, check, report]), "study",
                            attachments=["lcfuncs.py"], base_dir=folder)


def workload(workload_id: str) -> Any:
    with open_backend(local_target()) as backend:
        return backend.get(workload_id)


def results_of(workload_id: str) -> list[Results]:
    with open_backend(local_target()) as backend:
        found = [r for r in backend.list_results() if r.workload_id == workload_id]
    return sorted(found, key=lambda r: r.finished_at)


def test_retry_resume_runs_only_what_did_not_complete(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "lcfuncs", FUNCTIONS)
    wid = three_tasks(folder).queue(pinion="lc")
    run_caliber("pinion", "init", "lc", "-a", "1", "-w", "0")
    assert status_of(wid) == "failed"
    (first,) = results_of(wid)
    assert first.error is not None and "the input file is wrong" in first.error.message

    out = json.loads(run_caliber("queue", "retry", wid[:5], "--resume", "--json").stdout)
    assert out["status"] == "queued" and out["resume_from"] == first.id
    (folder / "input-fixed").touch()  # the engineer fixes the input
    run_caliber("pinion", "init", "lc", "-a", "1", "-w", "0")

    assert status_of(wid) == "completed"
    assert (runs(folder, "load"), runs(folder, "check"), runs(folder, "report")) == (1, 2, 1)
    second = results_of(wid)[-1]
    assert second.resumed_from == first.id
    assert second["report"] == {"total": 19, "scale": 3}  # load's value and g, reused
    assert [(t.name, t.reused_from) for t in second.tasks] == [
        ("load", first.id), ("check", None), ("report", None)]
    assert second.g == {"scale": 3, "offset": 10}
    history = [h.message for h in workload(wid).history]
    assert any(f"reusing the completed tasks of results {first.id}" in m for m in history)
    shown = run_caliber("results", "show", second.id, "--json").stdout
    assert json.loads(shown)["tasks"][0]["reused_from"] == first.id


def test_retry_without_resume_runs_everything_again(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "lcfuncs", FUNCTIONS)
    wid = three_tasks(folder).queue(pinion="lc")
    run_caliber("pinion", "init", "lc", "-a", "1", "-w", "0")
    (folder / "input-fixed").touch()
    assert "queued workload" in run_caliber("queue", "retry", wid).stdout
    run_caliber("pinion", "init", "lc", "-a", "1", "-w", "0")
    assert status_of(wid) == "completed"
    assert (runs(folder, "load"), runs(folder, "check"), runs(folder, "report")) == (2, 2, 1)
    assert [r.status.value for r in results_of(wid)] == ["failed", "completed"]


def test_workflow_run_resume_in_process(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "lcfuncs", FUNCTIONS)
    file = folder / "study.json"
    three_tasks(folder).export(file)
    failed = run_caliber("workflow", "run", str(file), "--json", ok=False)
    assert failed.returncode == 1
    first = json.loads(failed.stdout)["id"]
    (folder / "input-fixed").touch()
    done = run_caliber("workflow", "run", str(file), "--resume", first)
    assert f"reused 1 task(s) of results {first}" in done.stdout
    assert f"[1/3] load  completed  reused from {first}" in done.stdout
    assert (runs(folder, "load"), runs(folder, "check"), runs(folder, "report")) == (1, 2, 1)

    # A comment added to the functions' file changes none of the code that ran: reused.
    (folder / "lcfuncs.py").write_text(FUNCTIONS + "\n# changed\n")
    again = run_caliber("workflow", "run", str(file), "--resume", first)
    assert f"[1/3] load  completed  reused from {first}" in again.stdout
    assert (runs(folder, "load"), runs(folder, "check"), runs(folder, "report")) == (1, 3, 2)

    # load's own code changed: it runs again, and so do the tasks that take its result.
    second = again.stdout.split("caliber results show ")[-1].split()[0]
    (folder / "lcfuncs.py").write_text(FUNCTIONS.replace("return [1, 2]", "return [2, 2]"))
    third = json.loads(run_caliber("workflow", "run", str(file), "--resume", second,
                                   "--json").stdout)
    assert [t["reuse"] for t in third["tasks"]] == [
        "code of load changed", "input from 'load' was recomputed",
        "input from 'check' was recomputed"]
    assert third["tasks"][2]["return"] == {"total": 22, "scale": 3}
    assert (runs(folder, "load"), runs(folder, "check"), runs(folder, "report")) == (2, 4, 3)


def test_cancel_queued_then_list_by_status_and_counts(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "lcfuncs", FUNCTIONS)
    keep, drop = (three_tasks(folder).queue(pinion="lc") for _ in range(2))
    out = json.loads(run_caliber("queue", "cancel", drop, "--json").stdout)
    assert out["status"] == "cancelled" and out["cancel_asked"] is False
    listed = run_caliber("queue", "list", "--status", "cancelled", "--json").stdout
    assert [i["id"] for i in json.loads(listed)] == [drop]
    assert run_caliber("queue", "list").stdout.rstrip().endswith(
        "2 workloads: 1 queued, 1 cancelled")
    again = run_caliber("queue", "cancel", drop, ok=False)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"caliber: error: workload {drop} is cancelled: only a queued, waiting or running workload "
        "can be cancelled")
    refused = run_caliber("queue", "retry", keep, ok=False)
    assert refused.returncode == 2 and "only a failed or cancelled workload" in refused.stderr
    assert status_of(keep) == "queued"
    run_caliber("pinion", "init", "lc", "-a", "1", "-w", "0")
    assert runs(folder, "load") == 1  # only the workload that was not cancelled ran
    assert status_of(drop) == "cancelled"


@pytest.mark.skipif(sys.platform == "win32", reason="the pinion asks its child with SIGUSR1")
def test_cancel_running_stops_after_the_current_task(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "lcfuncs", FUNCTIONS)
    first = caliber.Task("lcfuncs:block", name="block", args=[str(folder)])
    second = caliber.Task("lcfuncs:load", name="load", args=[str(folder)])
    wid = caliber.Workflow(caliber.Process([first, second]), "long",
                           attachments=["lcfuncs.py"], base_dir=folder).queue(pinion="lc")
    pinion = start_pinion("lc", "-a", "1", "-w", "0", "--lease", "0.3")
    try:
        wait_for(lambda: runs(folder, "block") == 1, what="the first task to start")
        out = json.loads(run_caliber("queue", "cancel", wid, "--json").stdout)
        assert out["status"] == "running" and out["cancel_asked"] is True
        pinion_out = tmp_path / "pinion.log"
        # The pinion learns it at its next renewal (every 0.1 s), while the task still runs.
        wait_for(lambda: "cancelled by" in workload_line(pinion, pinion_out),
                 what="the pinion to learn of the cancel")
        (folder / "go").touch()  # the current task finishes
        wait_for(lambda: status_of(wid) == "cancelled", what="the workload to be cancelled")
    finally:
        stop(pinion)
    assert runs(folder, "load") == 0  # the next task never ran
    (results,) = results_of(wid)
    assert results.status.value == "cancelled"
    assert [(t.name, t.status.value) for t in results.tasks] == [
        ("block", "completed"), ("load", "skipped")]
    assert results["block"] == "blocked"
    assert results.error is not None  # in words, and no traceback file is named
    assert results.error.summary() == "cancelled: stopped before task 'load'"
    shown = run_caliber("results", "show", results.id).stdout
    assert "error: cancelled: stopped before task 'load'" in shown
    assert "traceback" not in shown, shown
    history = [h.message for h in workload(wid).history]
    assert any(m.startswith("cancel asked by") for m in history)
    # A cancelled workload can be queued again, resuming after its finished task.
    run_caliber("queue", "retry", wid, "--resume")
    run_caliber("pinion", "init", "lc", "-a", "1", "-w", "0")
    assert status_of(wid) == "completed"
    assert (runs(folder, "block"), runs(folder, "load")) == (1, 1)


def workload_line(pinion: subprocess.Popen[str], log: Path) -> str:
    """What the pinion printed so far on stderr (read without blocking, kept in ``log``)."""
    import os

    assert pinion.stderr is not None
    fd = pinion.stderr.fileno()
    os.set_blocking(fd, False)
    chunk = b""
    try:  # the raw fd: a text stream over a non-blocking pipe fails when nothing is there
        while data := os.read(fd, 65536):
            chunk += data
    except BlockingIOError:
        pass
    with open(log, "ab") as f:
        f.write(chunk)
    return log.read_text(errors="replace")


def test_a_remote_checkpoint_keeps_a_cancel_asked_and_a_resume() -> None:
    """A checkpoint stores what cancel and retry events leave on a live workload, and a state
    without them in the format older readers read (17 items)."""
    import datetime as dt

    from caliber.queue.speckle.checkpoint import _state, _state_doc
    from caliber.queue.speckle.log import State

    at = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    plain = State(id="w1", pinion="p", workflow="wf", created_at=at, queued_by="ann@laptop",
                  object_id="o1", order=(at, "v1"))
    assert len(_state_doc(plain)) == 17 and _state(_state_doc(plain)) == plain
    marked = State(id="w2", pinion="p", workflow="wf", created_at=at, queued_by="ann@laptop",
                   object_id="o2", order=(at, "v2"), cancel="bob@desk", resume_from="r1")
    assert _state(json.loads(json.dumps(_state_doc(marked)))) == marked


BRANCH_FUNCTIONS = '''
from pathlib import Path
from caliber import context

def setup(folder):
    context.g.tmp = "scratch"
    context.g.factor = 2
    return 1

def cleanup():
    del context.g.tmp
    return "clean"

def measure(folder, name):
    with open(Path(folder) / name, "a") as f:
        f.write("x")
    if name == "b" and not (Path(folder) / "fixed").exists():
        context.g.half_done = True  # a failed task's g is never replayed
        raise ValueError("sensor b is offline")
    return len(name) * context.g.factor
'''


def test_resume_in_branches_reuses_only_the_branches_that_completed(tmp_path: Path) -> None:
    from caliber.workflow.runner import run_workflow

    folder = make_folder(tmp_path / "wf", "brfuncs", BRANCH_FUNCTIONS)
    setup = caliber.Task("brfuncs:setup", name="setup", args=[str(folder)])
    cleanup = caliber.Task("brfuncs:cleanup", name="cleanup")
    measure = caliber.Task("brfuncs:measure", name="measure",
                           args=[[str(folder), "a"], [str(folder), "b"]])
    workflow = caliber.Workflow(
        caliber.Process([setup, cleanup, caliber.BranchProcess([measure], 2)]), "sensors",
        base_dir=folder)
    first = run_workflow(workflow)
    assert first.status.value == "failed" and first["measure", 0] == 2
    (folder / "fixed").touch()
    second = run_workflow(workflow, resume=first)
    assert second.ok and second["measure"] == [2, 2]
    assert [(t.name, t.branch, t.reused_from) for t in second.tasks] == [
        ("setup", None, first.id), ("cleanup", None, first.id), ("measure", 0, first.id),
        ("measure", 1, None)]
    assert second.g == {"factor": 2}  # tmp set, then removed; half_done never replayed
    assert ((folder / "a").read_text(), (folder / "b").read_text()) == ("x", "xx")
