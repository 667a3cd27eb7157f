"""Running in-process: Results, branch results, g, references, failure semantics, events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.context import g
from caliber.results.model import RunStatus, TaskStatus
from caliber.workflow.runner import TRACEBACK_FILE, TaskEvent, run_workflow


def make_dough(eggs: int) -> dict[str, int]:
    g.eggs = g.get("eggs", 0) + eggs
    return {"eggs": eggs}


def double(value: Any) -> Any:
    return value * 2


def boom(value: Any = None) -> None:
    if value == "ok":
        return None
    raise ValueError(f"too dry: {value}")


def total(values: list[dict[str, int]]) -> int:
    return sum(v["eggs"] for v in values)


def remember(**kwargs: Any) -> dict[str, Any]:
    g.seen = kwargs
    return kwargs


def build(*items: Any, name: str = "w") -> caliber.Workflow:
    return caliber.Workflow(caliber.Process(list(items), name="main"), name, base_dir=Path.cwd())


def test_results_hold_every_return_value_and_g(tmp_path: Path) -> None:
    g.leftover = "from an earlier run"
    dough = caliber.Task(make_dough, name="Make dough", args=[3])
    twice = caliber.Task(double, name="Double", args=[[dough.result]])
    results = run_workflow(build(dough, twice, name="pasta"), work_dir=tmp_path)
    assert results.status == RunStatus.COMPLETED and results.ok and results.error is None
    assert results["Make dough"] == {"eggs": 3}
    assert results["Double"] == [{"eggs": 3}, {"eggs": 3}]
    assert "Make dough" in results and "Nobody" not in results
    assert results.get("Nobody", "default") == "default"
    with pytest.raises(KeyError, match=r"no task 'Nobody'"):
        results["Nobody"]
    assert results.g == {"eggs": 3}  # g was emptied at the start and captured at the end
    assert results.workflow == "pasta" and results.started_at <= results.finished_at
    assert results.work_dir == str(tmp_path.resolve())


def test_reference_values_flow_between_tasks(tmp_path: Path) -> None:
    a = caliber.Task(double, name="A", args=[21])
    b = caliber.Task(double, name="B", args=[a.result])
    c = caliber.Task(remember, name="C", kwargs={"nested": {"list": [a.result, b.result]}})
    results = run_workflow(build(a, b, c), work_dir=tmp_path)
    assert results.returns == {"A": 42, "B": 84, "C": {"nested": {"list": [42, 84]}}}
    assert results.g == {"seen": {"nested": {"list": [42, 84]}}}  # g is fresh for every run
    assert [t.status for t in results.tasks] == [TaskStatus.COMPLETED] * 3
    assert all(t.duration is not None and t.duration >= 0 for t in results.tasks)
    assert results.tasks[0].path == ["main"]
    assert not (tmp_path / TRACEBACK_FILE).exists()


def test_branch_results_are_reachable(tmp_path: Path) -> None:
    dough = caliber.Task(make_dough, name="Make dough", args=[[3], [6]])
    twice = caliber.Task(double, name="Double", args=[[[dough.result]], [5]])
    bp = caliber.BranchProcess([dough, twice], branches=2, name="Batches")
    after = caliber.Task(total, name="Total", args=[dough.result])
    results = run_workflow(build(bp, after), work_dir=tmp_path)
    assert results.ok
    assert results["Make dough"] == [{"eggs": 3}, {"eggs": 6}]
    assert results["Make dough", 1] == {"eggs": 6}
    assert results.get("Make dough", branch=0) == {"eggs": 3}
    assert results["Total"] == 9  # a branched result outside its branch process is the list
    assert results.g == {"eggs": 9}
    assert results["Double"] == [[{"eggs": 3}, {"eggs": 3}], 10]
    with pytest.raises(KeyError, match=r"no branch 5"):
        results["Double", 5]


def test_a_failing_task_stops_its_process_and_keeps_earlier_returns(tmp_path: Path) -> None:
    a = caliber.Task(double, name="A", args=[1])
    b = caliber.Task(boom, name="B", args=["x"])
    c = caliber.Task(double, name="C", args=[3])
    outer_after = caliber.Task(double, name="D", args=[4])
    results = run_workflow(build(caliber.Process([a, b, c]), outer_after), work_dir=tmp_path)
    assert results.status == RunStatus.FAILED and not results.ok
    statuses = {t.name: t.status for t in results.tasks}
    assert statuses == {"A": "completed", "B": "failed", "C": "skipped", "D": "skipped"}
    assert results["A"] == 2 and results["C"] is None
    error = results.error
    assert error is not None and error.task == "B" and error.type == "ValueError"
    assert error.message == "too dry: x"
    assert "Traceback (most recent call last)" in error.traceback
    assert 'raise ValueError(f"too dry: {value}")' in error.traceback
    assert "in boom" in error.traceback.splitlines()[1]  # starts in the user's code
    text = (tmp_path / TRACEBACK_FILE).read_text()
    assert "workflow 'w' failed" in text and results.id in text
    assert "task 'B': ValueError: too dry: x" in text and "Traceback" in text


def test_other_branches_still_run_when_one_fails(tmp_path: Path) -> None:
    first = caliber.Task(boom, name="First", args=[["ok"], ["bad"], ["ok"]])
    second = caliber.Task(double, name="Second", args=[[1], [2], [3]])
    after = caliber.Task(double, name="After", args=[1])
    bp = caliber.BranchProcess([first, second], branches=3)
    events: list[TaskEvent] = []
    results = run_workflow(build(bp, after), work_dir=tmp_path, on_event=events.append)
    assert results.status == RunStatus.FAILED
    table = [(t.name, t.branch, t.status.value) for t in results.tasks]
    assert table == [
        ("First", 0, "completed"), ("Second", 0, "completed"),
        ("First", 1, "failed"), ("Second", 1, "skipped"),
        ("First", 2, "completed"), ("Second", 2, "completed"),
        ("After", None, "skipped"),
    ]
    assert results["Second"] == [2, None, 6]
    assert results.error is not None and results.error.branch == 1
    assert "task 'First' (branch 1): ValueError" in (tmp_path / TRACEBACK_FILE).read_text()
    ends = [(e.index, e.name, e.branch, e.status) for e in events if e.kind == "end"]
    assert ends == [(1, "First", 0, "completed"), (2, "Second", 0, "completed"),
                    (3, "First", 1, "failed"), (5, "First", 2, "completed"),
                    (6, "Second", 2, "completed")]
    assert all(e.total == 7 for e in events)
    failed = [e for e in events if e.status == TaskStatus.FAILED]
    assert failed[0].error is not None and failed[0].error.message == "too dry: bad"


def test_events_come_in_start_end_pairs(tmp_path: Path) -> None:
    events: list[TaskEvent] = []
    run_workflow(build(caliber.Task(double, name="A", args=[1])), on_event=events.append)
    assert [(e.kind, e.index, e.total, e.name) for e in events] == [
        ("start", 1, 1, "A"), ("end", 1, 1, "A")]
    assert events[1].duration is not None


def test_a_function_that_cannot_be_imported_fails_the_run(tmp_path: Path) -> None:
    a = caliber.Task("tests.test_runner:double", name="A", args=[1])
    b = caliber.Task("no_such_module_xyz:f", name="B")
    c = caliber.Task("tests.test_runner:not_there", name="C")
    results = run_workflow(build(a, b, c), work_dir=tmp_path)
    assert results.status == RunStatus.FAILED
    assert [t.status.value for t in results.tasks] == ["skipped", "failed", "failed"]
    assert results.error is not None and results.error.type == "ImportError"
    assert "cannot import module 'no_such_module_xyz'" in results.error.message
    c_error = results.tasks[2].error
    assert c_error is not None
    assert "module 'tests.test_runner' has no attribute 'not_there'" in c_error.message
    assert "no_such_module_xyz" in (tmp_path / TRACEBACK_FILE).read_text()


def test_the_workflow_folder_comes_first_on_the_import_path(tmp_path: Path) -> None:
    (tmp_path / "my_local_functions.py").write_text("def hello(name):\n    return 'hi ' + name\n")
    task = caliber.Task("my_local_functions:hello", name="Hello", args=["you"])
    w = caliber.Workflow(caliber.Process([task]), "w", base_dir=tmp_path)
    results = run_workflow(w, work_dir=tmp_path)
    assert results["Hello"] == "hi you"


    assert str(tmp_path.resolve()) not in sys.path  # put back as it was


def test_workflow_run_stores_results_for_get_results(tmp_path: Path) -> None:
    w = build(caliber.Task(make_dough, name="Make dough", args=[2]), name="stored")
    results = w.run(work_dir=tmp_path)
    again = caliber.get_results(results_id=results.id)
    assert again == results
    assert caliber.get_results(results_id=results.id[:6])["Make dough"] == {"eggs": 2}
    assert caliber.get_results(workflow="stored").id == results.id
    not_stored = w.run(work_dir=tmp_path, store=False)
    assert caliber.get_results(workflow="stored").id == results.id != not_stored.id


def test_failed_run_writes_the_traceback_into_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    results = build(caliber.Task(boom, name="Boom")).run()
    assert results.status == RunStatus.FAILED
    assert results.work_dir == str(tmp_path.resolve())
    assert "ValueError: too dry: None" in (tmp_path / TRACEBACK_FILE).read_text()
    assert caliber.get_results().status == RunStatus.FAILED


@pytest.mark.parametrize(
    ("source", "kind", "shown"),
    [
        ("def f(:\n", "SyntaxError", "def f(:"),
        ("raise RuntimeError('config missing')\n", "RuntimeError", "config missing"),
    ],
)
def test_a_broken_functions_module_fails_the_run_without_crashing(
    tmp_path: Path, source: str, kind: str, shown: str
) -> None:
    module = f"broken_{kind.lower()}_{tmp_path.name}"
    (tmp_path / f"{module}.py").write_text(source)
    task = caliber.Task(f"{module}:f", name="F")
    w = caliber.Workflow(caliber.Process([task]), "w", base_dir=tmp_path)
    results = run_workflow(w, work_dir=tmp_path)
    assert results.status == RunStatus.FAILED
    error = results.tasks[0].error
    assert error is not None and error.type == kind
    assert error.message.startswith(f"importing module '{module}' for {module}:f failed")
    assert shown in error.traceback and f"{module}.py" in error.traceback
    assert "importlib" not in error.traceback and "caliber" not in error.traceback


def test_sys_exit_in_a_task_fails_that_task_not_the_process(tmp_path: Path) -> None:
    module = tmp_path / "exiting.py"
    module.write_text("import sys\n\ndef leave():\n    sys.exit(4)\n\ndef fine():\n    return 1\n")
    workflow = caliber.Workflow(
        caliber.Process([caliber.Task("exiting:fine"), caliber.Task("exiting:leave")]),
        "exits", base_dir=tmp_path,
    )
    results = workflow.run(store=False, work_dir=tmp_path)
    assert results.status == "failed"
    assert results["fine"] == 1
    assert results.error is not None and results.error.type == "SystemExit"


FRESH_RUN = """
import sys
import caliber
from pathlib import Path
base = Path(sys.argv[1])
tasks = [caliber.Task("top:value", name="top"), caliber.Task("pkg.mod:value", name="mod")]
w = caliber.Workflow(caliber.Process(tasks), "fresh", base_dir=base)
results = w.run(work_dir=base, store=False)
print(results["top"], results["mod"])
"""


@pytest.mark.parametrize("package", ["pkg/__init__.py", None])  # a regular or namespace one
def test_a_fix_within_the_second_runs_in_a_package_too(tmp_path: Path,
                                                       package: str | None) -> None:
    """A module of the workflow's folder, and one of a package in it (``pkg/mod.py``),
    changed within the same second and to the same size as their run before wrote their
    ``.pyc`` (Python's module cache on, as it is outside these tests): the fixed code runs,
    never the cached one."""
    import os
    import subprocess

    (tmp_path / "pkg").mkdir()
    if package is not None:
        (tmp_path / package).write_text("")
    sources = [tmp_path / "top.py", tmp_path / "pkg" / "mod.py"]
    for source in sources:
        source.write_text("def value():\n    return 1\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def run() -> list[str]:
        return subprocess.run([sys.executable, "-c", FRESH_RUN, str(tmp_path)], env=env,
                              capture_output=True, text=True, check=True).stdout.split()

    assert run() == ["1", "1"]
    for source in sources:
        st = source.stat()
        source.write_text("def value():\n    return 2\n")  # the fix: the same size
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same second
    assert run() == ["2", "2"]
