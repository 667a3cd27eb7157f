"""Parallel branches (``BranchProcess(parallel=N)``), with real processes: the Results of a
serial run, overlap seen in the tasks' own start and end times, ``g`` merged in branch order
(and its conflict), a failed branch stopping the others' later tasks, time limits, Ctrl-C,
``workflow run``, a real pinion, ``queue cancel --now`` and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.errors import WorkflowDefinitionError
from caliber.results.model import Results
from tests.pinion_helpers import alive, start_pinion, status_of, stop, wait_for

FUNCTIONS = '''
import json, os, time
from pathlib import Path
from caliber import context

def case(x):
    setattr(context.g, f"case{x}", x * 10)
    return {"x": x, "pid": os.getpid()}

def nap(c, seconds, folder):
    """Sleep; when the test wrote expect.json ({branch: n}), first wait until n branches have
    come here: overlap by construction, never by timing (a serial run would wait in vain)."""
    start = time.time()
    expect = Path(folder) / "expect.json"
    if expect.exists():
        (Path(folder) / f"started-{c['x']}").write_text("")
        n = json.loads(expect.read_text())[str(c["x"])]
        end = time.monotonic() + 30
        while len(list(Path(folder).glob("started-*"))) < n and time.monotonic() < end:
            time.sleep(0.01)
    time.sleep(seconds)
    return {"x": c["x"], "start": start, "end": time.time(), "pid": os.getpid()}

def look(c):
    return sorted(context.g)

def total(naps):
    return sum(n["x"] for n in naps)

def setg(name, value):
    if value is None:
        delattr(context.g, name)
    else:
        setattr(context.g, name, value)
    return sorted(context.g)

def fail_if(x, bad, folder):
    if x == bad:
        (Path(folder) / "failing.pid").write_text(str(os.getpid()))
        raise ValueError(f"case {x} is bad")
    return x

def wait_gone(x, folder):
    """Branch 0: wait until the failing branch's process has ended and been reaped."""
    pid_file = Path(folder) / "failing.pid"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), 0)
            except ProcessLookupError:
                return "waited"
        time.sleep(0.02)
    raise RuntimeError("the failing branch never ended")

def array(x, n):
    import numpy
    return numpy.full(n, float(x))

def sums(arrays):
    return [float(a.sum()) for a in arrays]

def mark_and_sleep(x, folder, seconds):
    mark = Path(folder) / f"branch-{x}.pid"
    mark.with_suffix(".tmp").write_text(str(os.getpid()))
    mark.with_suffix(".tmp").rename(mark)  # whole, once it is there
    time.sleep(seconds)
    return x

def die(x):
    if x == 1:
        os._exit(3)
    return x

def flaky(x, folder):
    """Fails in a broken branch, once the other two branches' have completed (a failed
    branch stops the others' later tasks: here there are none by then)."""
    if (Path(folder) / f"broken-{x}").exists():
        end = time.monotonic() + 30
        while len(list(Path(folder).glob("done-*"))) < 2 and time.monotonic() < end:
            time.sleep(0.01)
        raise RuntimeError(f"branch {x} is broken")
    (Path(folder) / f"done-{x}").write_text("")
    return x + context.g.get(f"case{x}", 0)
'''

WAIT = 90.0  # seconds: generous; no test asserts a duration


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs work in the current folder (caliber-traceback.txt, values): a temporary one."""
    monkeypatch.chdir(tmp_path)


def make(tmp_path: Path) -> Path:
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "pfuncs.py").write_text(textwrap.dedent(FUNCTIONS))
    return folder


def naps(folder: Path, parallel: int | None, *, branches: int = 4,
         seconds: float = 0.3) -> caliber.Workflow:
    """case, nap per branch; total after the branch process."""
    case = caliber.Task("pfuncs:case", name="case", args=[[b] for b in range(branches)])
    nap = caliber.Task("pfuncs:nap", name="nap",
                       args=[[case.result, seconds, str(folder)] for _ in range(branches)])
    cases = caliber.BranchProcess([case, nap], branches=branches, name="Cases",
                                  parallel=parallel)
    total = caliber.Task("pfuncs:total", name="total", args=[nap.result])
    return caliber.Workflow(caliber.Process([cases, total]), "naps", attachments=["pfuncs.py"],
                            base_dir=folder)


def comparable(results: Results) -> dict[str, Any]:
    """The Results minus what differs between any two runs: ids, times, pids, folders."""
    plain = results.model_dump(mode="json", by_alias=True)
    for key in ("id", "started_at", "finished_at", "work_dir", "signature", "key_id"):
        plain.pop(key, None)
    for task in plain["tasks"]:
        task.pop("started_at")
        task.pop("duration")
        if isinstance(task["return"], dict):
            for key in ("pid", "start", "end"):
                task["return"].pop(key, None)
    return plain


def expect_overlap(folder: Path, parallel: int, branches: int = 4) -> None:
    """Make each branch's nap wait until ``parallel`` branches (its group) have started."""
    for old in folder.glob("started-*"):
        old.unlink()
    (folder / "expect.json").write_text(json.dumps(
        {str(b): min((b // parallel + 1) * parallel, branches) for b in range(branches)}))


def intervals(results: Results) -> list[tuple[float, float]]:
    return [(n["start"], n["end"]) for n in results["nap"]]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """How many of the intervals run at once, at most (from their own recorded times)."""
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


@pytest.mark.parametrize("parallel", [2, 4])
def test_results_are_those_of_a_serial_run_and_branches_overlap(
        tmp_path: Path, parallel: int) -> None:
    folder = make(tmp_path)
    serial = naps(folder, None).run()
    expect_overlap(folder, parallel)
    both = naps(folder, parallel).run()
    assert both.status.value == "completed"
    assert comparable(both) == comparable(serial)
    assert both["total"] == 6 and both.g == serial.g
    assert [t.branch for t in both.tasks] == [0, 0, 1, 1, 2, 2, 3, 3, None]
    pids = {n["pid"] for n in both["nap"]}
    assert len(pids) == 4 and os.getpid() not in pids  # a process per branch
    assert {n["pid"] for n in serial["nap"]} == {os.getpid()}
    assert most_at_once(intervals(both)) == parallel  # never more than N, and N at once
    assert most_at_once(intervals(serial)) == 1


def test_each_branch_starts_from_g_as_it_was_and_changes_merge_in_branch_order(
        tmp_path: Path) -> None:
    folder = make(tmp_path)
    before = caliber.Task("pfuncs:setg", name="before", args=["old", 1])
    keep = caliber.Task("pfuncs:setg", name="keep", args=["drop", 2])
    case = caliber.Task("pfuncs:case", name="case", args=[[b] for b in range(3)])
    gone = caliber.Task("pfuncs:setg", name="gone", args=[["drop", None], ["same", 5],
                                                          ["same", 5]])
    look = caliber.Task("pfuncs:look", name="look", args=[[case.result]] * 3)
    after = caliber.Task("pfuncs:setg", name="after", args=["late", 3])
    branches = caliber.BranchProcess([case, gone, look], branches=3, parallel=3)
    results = caliber.Workflow(caliber.Process([before, keep, branches, after]), "g",
                               base_dir=folder).run()
    assert results.status.value == "completed"
    # each branch saw g as it began, with only its own changes
    assert results["look"] == [
        ["case0", "old"], ["case1", "drop", "old", "same"], ["case2", "drop", "old", "same"]]
    # merged: branch 0 deleted drop, every branch's case<x>, same set to 5 by two
    assert results["after"] == ["case0", "case1", "case2", "late", "old", "same"]
    assert results.g == {"old": 1, "case0": 0, "case1": 10, "case2": 20, "same": 5, "late": 3}
    same = [t for t in results.tasks if t.name == "gone"]  # relative to g as each branch saw it
    assert [(t.g_set, t.g_deleted) for t in same] == [({}, ["drop"]), ({"same": 5}, []),
                                                      ({"same": 5}, [])]


def test_two_branches_setting_one_name_differently_fail_the_run_naming_both(
        tmp_path: Path) -> None:
    folder = make(tmp_path)
    case = caliber.Task("pfuncs:case", name="case", args=[[b] for b in range(3)])
    clash = caliber.Task("pfuncs:setg", name="clash", args=[["limit", 0.5], ["other", 1],
                                                            ["limit", 0.7]])
    cases = caliber.BranchProcess([case, clash], branches=3, name="Cases", parallel=2)
    after = caliber.Task("pfuncs:total", name="after", args=[[]])
    workflow = caliber.Workflow(caliber.Process([cases, after]), "clash", base_dir=folder,
                                attachments=["pfuncs.py"])
    results = workflow.run()
    assert results.status.value == "failed"
    assert [t.status.value for t in results.tasks] == ["completed"] * 6 + ["skipped"]
    assert results.error is not None and results.error.type == "GlobalDataConflict"
    assert results.error.summary() == (
        "workflow: GlobalDataConflict: branch process 'Cases': branches 0 and 2 leave "
        "g.limit different: 0.5 (task 'clash' of branch 0), 0.7 (task 'clash' of branch 2); "
        "parallel branches each start from g as it was when the branch process began, and "
        "may not leave one name different")
    assert results.g["limit"] == 0.5 and results.g["other"] == 1  # the lower branch's
    # the same through `caliber workflow run`: exit 1, the error in one line
    workflow.export(folder / "clash.json")
    done = subprocess.run([sys.executable, "-m", "caliber", "workflow", "run", "clash.json"],
                          cwd=folder, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 1, done.stderr
    assert ("workflow 'clash' failed: workflow: GlobalDataConflict: branch process 'Cases': "
            "branches 0 and 2 leave g.limit different") in done.stderr
    assert "Traceback" not in done.stderr


def test_the_guides_branch_process_in_parallel_fails_as_the_guide_says(tmp_path: Path) -> None:
    from tests.test_example import GUIDE, guide_files

    folder = tmp_path / "beam"
    folder.mkdir()
    for name, body in guide_files().items():
        (folder / name).write_text(body)
    define = folder / "define_branches.py"
    define.write_text(define.read_text().replace("branches=3)", "branches=3, parallel=3)"))
    subprocess.run([sys.executable, "define_branches.py"], cwd=folder, check=True)
    done = subprocess.run([sys.executable, "-m", "caliber", "workflow", "run",
                           "beam_cases.json"], cwd=folder, capture_output=True, text=True,
                          timeout=WAIT)
    assert done.returncode == 1
    shown = GUIDE.read_text().split("with `parallel=3`:\n\n  ```text\n", 1)[1].split("```")[0]
    assert done.stderr.strip() == " ".join(line.strip() for line in shown.splitlines()
                                           if line.strip())


def test_a_failed_branch_stops_the_others_later_tasks(tmp_path: Path) -> None:
    """Branch 1 fails while branch 0 runs (it waits for the failing process to end): branch
    0's running task finishes, its next task does not start, branches 2 and 3 never start."""
    folder = make(tmp_path)
    f = str(folder)
    first = caliber.Task("pfuncs:fail_if", name="first",
                         args=[[0, -1, f], [1, 1, f], [2, -1, f], [3, -1, f]])
    wait = caliber.Task("pfuncs:wait_gone", name="wait", args=[[b, f] for b in range(4)])
    third = caliber.Task("pfuncs:total", name="third", args=[[[]]] * 4)
    cases = caliber.BranchProcess([first, wait, third], branches=4, parallel=2)
    results = caliber.Workflow(cases, "fails", base_dir=folder).run(work_dir=folder)
    assert results.status.value == "failed"
    assert [(t.name, t.branch, t.status.value) for t in results.tasks] == [
        ("first", 0, "completed"), ("wait", 0, "completed"), ("third", 0, "skipped"),
        ("first", 1, "failed"), ("wait", 1, "skipped"), ("third", 1, "skipped"),
        ("first", 2, "skipped"), ("wait", 2, "skipped"), ("third", 2, "skipped"),
        ("first", 3, "skipped"), ("wait", 3, "skipped"), ("third", 3, "skipped")]
    assert results.error is not None
    assert results.error.summary() == "task 'first' (branch 1): ValueError: case 1 is bad"
    assert results["wait"][0] == "waited"  # the running task finished
    assert (folder / "caliber-traceback.txt").exists()


def test_a_branch_whose_process_ends_fails_its_running_task(tmp_path: Path) -> None:
    folder = make(tmp_path)
    task = caliber.Task("pfuncs:die", name="die", args=[[0], [1]])
    results = caliber.Workflow(caliber.BranchProcess([task], branches=2, parallel=1), "die",
                               base_dir=folder).run()
    assert [t.status.value for t in results.tasks] == ["completed", "failed"]
    assert results.error is not None and results.error.summary() == (
        "task 'die' (branch 1): BranchProcessDied: the process of branch 1 exited with code 3 "
        "while task 'die' ran")


def test_a_time_limit_applies_to_each_branchs_run_of_a_task(tmp_path: Path) -> None:
    folder = make(tmp_path)
    f = str(folder)
    task = caliber.Task("pfuncs:mark_and_sleep", name="solve", timeout=0.5,
                        args=[[0, f, 0], [1, f, 600]])
    results = caliber.Workflow(caliber.BranchProcess([task], branches=2, parallel=2), "limit",
                               base_dir=folder).run()
    assert [t.status.value for t in results.tasks] == ["completed", "failed"]
    assert results.error is not None and results.error.summary() == (
        "task 'solve' (branch 1): TaskTimeout: task 'solve' ran past its time limit of 0.5 s")
    assert not alive(int((folder / "branch-1.pid").read_text()))


def test_big_arrays_come_back_by_the_values_folder(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_ARRAY_INLINE_MAX", "1024")
    folder = make(tmp_path)
    array = caliber.Task("pfuncs:array", name="array", args=[[b, 10_000] for b in range(3)])
    sums = caliber.Task("pfuncs:sums", name="sums", args=[array.result])
    workflow = caliber.Workflow(caliber.Process([
        caliber.BranchProcess([array], branches=3, parallel=3), sums]), "arrays",
        base_dir=folder)
    results = workflow.run(work_dir=folder)
    assert results["sums"] == [0.0, 10_000.0, 20_000.0]
    assert [float(a.sum()) for a in results["array"]] == [0.0, 10_000.0, 20_000.0]
    assert all(t.return_["$caliber"] == "ndarray" for t in results.tasks[:3])
    kept = caliber.get_results(results_id=results.id)
    assert float(kept["array"][2][0]) == 2.0  # in the store, read back from there


def test_resume_reuses_the_tasks_of_parallel_branches(tmp_path: Path) -> None:
    folder = make(tmp_path)
    (folder / "broken-2").write_text("")
    case = caliber.Task("pfuncs:case", name="case", args=[[b] for b in range(3)])
    flaky = caliber.Task("pfuncs:flaky", name="flaky", args=[[b, str(folder)] for b in range(3)])
    cases = caliber.BranchProcess([case, flaky], branches=3, name="Cases", parallel=3)
    workflow = caliber.Workflow(cases, "resume", base_dir=folder, attachments=["pfuncs.py"])
    first = workflow.run()
    assert first.status.value == "failed"
    assert [t.status.value for t in first.tasks] == ["completed"] * 5 + ["failed"]
    (folder / "broken-2").unlink()
    again = workflow.run(resume=first.id)
    assert again.status.value == "completed"
    assert [t.reuse for t in again.tasks] == [
        f"reused from {first.id}"] * 5 + [f"did not complete in {first.id}"]
    assert again["flaky"] == [0, 11, 22]
    assert comparable(again)["g"] == comparable(naps(folder, None, branches=3).run())["g"]


def test_the_file_format_keeps_parallel_and_reads_older_files_as_serial(
        tmp_path: Path) -> None:
    folder = make(tmp_path)
    naps(folder, 2).export(folder / "par.json")
    naps(folder, None).export(folder / "ser.json")
    par = json.loads((folder / "par.json").read_text())
    ser = json.loads((folder / "ser.json").read_text())
    assert par["process"]["tasks"][0]["parallel"] == 2
    assert "parallel" not in ser["process"]["tasks"][0]  # as files always were
    assert caliber.Workflow.load(folder / "par.json").process.items[0].parallel == 2
    assert caliber.Workflow.load(folder / "ser.json").process.items[0].parallel is None
    for bad in (0, "2", True, 1.5):
        par["process"]["tasks"][0]["parallel"] = bad
        (folder / "bad.json").write_text(json.dumps(par))
        done = subprocess.run([sys.executable, "-m", "caliber", "workflow", "show", "bad.json"],
                              cwd=folder, capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 2
        assert "process.tasks[0].parallel" in done.stderr and "Traceback" not in done.stderr
    for bad in (0, -1, True, 2.0, "2"):
        with pytest.raises(WorkflowDefinitionError, match="parallel must be a whole number"):
            caliber.BranchProcess([caliber.Task("pfuncs:total")], branches=2,
                                  parallel=bad)  # type: ignore[arg-type]
    shown = subprocess.run([sys.executable, "-m", "caliber", "workflow", "show", "par.json"],
                           cwd=folder, capture_output=True, text=True, timeout=WAIT)
    assert "(4 branches, in parallel 2 at a time)" in shown.stdout
    mermaid = subprocess.run([sys.executable, "-m", "caliber", "workflow", "show", "par.json",
                              "--format", "mermaid"], cwd=folder, capture_output=True,
                             text=True, timeout=WAIT)
    assert "4 branches, in parallel 2 at a time" in mermaid.stdout


def test_workflow_run_runs_branches_in_parallel(tmp_path: Path) -> None:
    folder = make(tmp_path)
    naps(folder, 4).export(folder / "naps.json")
    expect_overlap(folder, 4)
    done = subprocess.run([sys.executable, "-m", "caliber", "workflow", "run", "naps.json"],
                          cwd=folder, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    results = caliber.get_results(workflow="naps")
    assert results.status.value == "completed" and results["total"] == 6
    assert most_at_once(intervals(results)) == 4
    assert sorted(line.split("]")[0] for line in done.stdout.splitlines()
                  if line.startswith("[")) == sorted(f"[{k}/9" for k in range(1, 10))


def test_ctrl_c_in_workflow_run_ends_every_branchs_process(tmp_path: Path) -> None:
    folder = make(tmp_path)
    f = str(folder)
    task = caliber.Task("pfuncs:mark_and_sleep", name="solve", args=[[b, f, 600] for b in range(3)])
    caliber.Workflow(caliber.BranchProcess([task], branches=3, parallel=3), "solve",
                     base_dir=folder, attachments=["pfuncs.py"]).export(folder / "solve.json")
    run = subprocess.Popen([sys.executable, "-m", "caliber", "workflow", "run", "solve.json"],
                           cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_files = [folder / f"branch-{b}.pid" for b in range(3)]
    wait_for(lambda: all(p.exists() for p in pid_files), timeout=WAIT, what="three branches")
    pids = [int(p.read_text()) for p in pid_files]
    try:
        run.send_signal(signal.SIGINT)  # to the command's process alone: it passes it on
        _out, err = run.communicate(timeout=WAIT)
    finally:  # a failed test leaves no process behind
        for pid in [p for p in pids if alive(p)] + ([run.pid] if run.poll() is None else []):
            os.kill(pid, signal.SIGKILL)
    assert run.returncode == 130, err
    assert not any(alive(pid) for pid in pids)
    results = caliber.get_results(workflow="solve")
    assert results.status.value == "cancelled"
    assert [t.error.message for t in results.tasks if t.error] == ["stopped by Ctrl-C"] * 3


# --- in a pinion ---------------------------------------------------------------------------

def test_a_pinion_runs_branches_in_parallel_with_the_results_of_a_serial_run(
        tmp_path: Path) -> None:
    folder = make(tmp_path)
    serial = naps(folder, None).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0")
    _out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 0, err
    parallel = naps(folder, 4).queue(pinion="p")
    expect_overlap(folder, 4)
    pinion = start_pinion("p", "-a", "1", "-w", "0")
    _out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 0, err
    one, both = caliber.get_results(serial), caliber.get_results(parallel)
    assert both.status.value == "completed"
    plain_one, plain_both = comparable(one), comparable(both)
    for plain in (plain_one, plain_both):
        plain.pop("workload_id")
    assert plain_both == plain_one
    assert most_at_once(intervals(both)) == 4
    assert len({n["pid"] for n in both["nap"]}) == 4


def test_a_pinion_resumes_a_workload_of_parallel_branches(tmp_path: Path) -> None:
    folder = make(tmp_path)
    (folder / "broken-1").write_text("")
    case = caliber.Task("pfuncs:case", name="case", args=[[b] for b in range(3)])
    flaky = caliber.Task("pfuncs:flaky", name="flaky", args=[[b, str(folder)] for b in range(3)])
    workflow = caliber.Workflow(caliber.BranchProcess([case, flaky], branches=3, parallel=3),
                                "resume", base_dir=folder, attachments=["pfuncs.py"])
    first = workflow.queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0")
    _out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 0, err
    assert status_of(first) == "failed"
    (folder / "broken-1").unlink()
    again = workflow.queue(pinion="p", resume=first)
    pinion = start_pinion("p", "-a", "1", "-w", "0")
    _out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 0, err
    results, earlier = caliber.get_results(again), caliber.get_results(first)
    assert results.status.value == "completed" and results["flaky"] == [0, 11, 22]
    assert [t.reused_from is not None for t in results.tasks] == [
        True, True, True, False, True, True]
    assert results.tasks[3].reuse == f"did not complete in {earlier.id}"


def test_a_pinion_fails_a_workload_whose_branches_conflict(tmp_path: Path) -> None:
    folder = make(tmp_path)
    clash = caliber.Task("pfuncs:setg", name="clash", args=[["limit", 1], ["limit", 2]])
    wid = caliber.Workflow(caliber.BranchProcess([clash], branches=2, name="C", parallel=2),
                           "clash", base_dir=folder, attachments=["pfuncs.py"]).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0")
    _out, err = pinion.communicate(timeout=WAIT)
    assert pinion.returncode == 0, err
    assert status_of(wid) == "failed"
    results = caliber.get_results(wid)
    assert results.error is not None and results.error.type == "GlobalDataConflict"
    assert "branches 0 and 1 leave g.limit different" in results.error.message


def test_cancel_now_ends_every_branchs_process_in_a_pinion(tmp_path: Path) -> None:
    folder = make(tmp_path)
    f = str(folder)
    task = caliber.Task("pfuncs:mark_and_sleep", name="solve", args=[[b, f, 600] for b in range(3)])
    wid = caliber.Workflow(caliber.BranchProcess([task], branches=3, parallel=3), "solve",
                           base_dir=folder, attachments=["pfuncs.py"]).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "0.6", "--cancel-grace", "5")
    try:
        pid_files = [folder / f"branch-{b}.pid" for b in range(3)]
        wait_for(lambda: all(p.exists() for p in pid_files), timeout=WAIT, what="3 branches")
        pids = [int(p.read_text()) for p in pid_files]
        done = subprocess.run([sys.executable, "-m", "caliber", "queue", "cancel", wid, "--now"],
                              capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: status_of(wid) == "cancelled", timeout=WAIT, what="the cancel")
        assert not any(alive(pid) for pid in pids)  # ended by the cancel, the pinion running
    finally:
        stop(pinion)
    results = caliber.get_results(wid)
    assert [t.error.type for t in results.tasks if t.error] == ["Cancelled"] * 3


def test_the_pinion_watches_the_time_limit_of_every_running_task() -> None:
    from caliber.pinion.stops import TaskWatch

    watch = TaskWatch(grace=1.0)
    watch.event({"kind": "start", "name": "solve", "branch": 0, "timeout": 10}, now=0.0)
    watch.event({"kind": "start", "name": "solve", "branch": 1, "timeout": 10}, now=5.0)
    watch.event({"kind": "start", "name": "mesh", "branch": 2, "timeout": None}, now=6.0)
    watch.event({"kind": "end", "name": "solve", "branch": 0}, now=7.0)
    assert (watch.task, watch.branch, watch.deadline) == ("solve", 1, 16.0)
    assert watch.due(16.0, None) is not None and watch.due(15.9, None) is None


def test_the_branch_modules_load_neither_pydantic_nor_threading() -> None:
    """A pinion's child imports them when it reaches a parallel branch process."""
    from tests.test_preload import HEAVY

    code = ("import sys, caliber.pinion.child, caliber.workflow.forked; "
            f"print(sorted(m for m in {HEAVY[:-1]!r} if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert shown == "[]"
