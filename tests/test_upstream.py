"""``$results``: a task takes an upstream workload's task value. The file format (round trip,
validation with places, export refusals), the rules that pick the upstream and the value,
``workflow show``, ``workflow run --after-results`` (signatures checked with your key), and
the inputs fingerprint of a task that takes one. The pinion's side, end to end with real
pinions on the local queue: tests/test_upstream_chain.py."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.errors import ExportError, WorkflowDefinitionError, WorkflowFileError
from caliber.workflow.fingerprint import inputs
from caliber.workflow.model import UpstreamResult
from caliber.workflow.upstream import (
    Upstream,
    UpstreamError,
    UpstreamValue,
    check_after,
    choose,
    refs_of,
    task_value,
)
from tests.test_fuzz import assert_clean_error, run_cli

KEY = "the-owners-key-0123456789abcdef"

FUNCTIONS = '''
def solve(n):
    return {"n": n, "values": [n, n * 2]}

def field(n):
    import numpy
    return numpy.arange(n, dtype="float64")

def plot(x, scale=1):
    return {"took": x, "scale": scale}

def total(array):
    return float(array.sum())
'''


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)


def folder_with(tmp_path: Path) -> Path:
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "upfuncs.py").write_text(textwrap.dedent(FUNCTIONS))
    return folder


def post(folder: Path, *args: Any, **kwargs: Any) -> caliber.Workflow:
    task = caliber.Task("upfuncs:plot", name="Plot", args=list(args), kwargs=kwargs)
    return caliber.Workflow(caliber.Process([task], name="Post"), "post",
                            attachments=["upfuncs.py"], base_dir=folder)


# --- the file format ------------------------------------------------------------------------


def test_round_trip_in_tasks_and_branches(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    one = caliber.upstream("Solve")
    named = caliber.upstream("analysis", "Solve")
    pinned = caliber.upstream("analysis", "Solve", workload="k3v9")
    plot = caliber.Task("upfuncs:plot", name="Plot", args=[one, [named]],
                        kwargs={"scale": {"by": pinned}})
    branched = caliber.Task("upfuncs:plot", name="Each", args=[[named], [pinned]])
    wf = caliber.Workflow(caliber.Process([plot, caliber.BranchProcess([branched], 2)]),
                          "post", attachments=["upfuncs.py"], base_dir=folder)
    path = wf.export(folder / "post.json")
    text = json.loads(path.read_text())
    first = text["process"]["tasks"][0]
    assert first["args"] == [{"$results": {"task": "Solve"}},
                             [{"$results": {"workflow": "analysis", "task": "Solve"}}]]
    assert first["kwargs"] == {"scale": {"by": {"$results": {
        "workflow": "analysis", "workload": "k3v9", "task": "Solve"}}}}
    assert text["caliber"] == 1
    loaded = caliber.Workflow.load(path)
    assert loaded.to_document() == wf.to_document()
    back = loaded.tasks[0]
    assert back.args == [one, [named]] and back.kwargs == {"scale": {"by": pinned}}
    assert refs_of(text) == [one, named, pinned]


def test_the_python_form() -> None:
    assert caliber.upstream("Solve") == UpstreamResult("Solve")
    assert caliber.upstream("analysis", "Solve") == UpstreamResult("Solve", workflow="analysis")
    assert repr(caliber.upstream("analysis", "Solve")) == \
        "<result of 'Solve' of upstream 'analysis'>"
    with pytest.raises(WorkflowDefinitionError, match="takes the task's name"):
        caliber.upstream()
    with pytest.raises(WorkflowDefinitionError, match="task must be a non-empty string"):
        caliber.upstream("analysis", " ")
    with pytest.raises(WorkflowDefinitionError, match="workload must be a non-empty string"):
        caliber.upstream("Solve", workload="")


def test_export_refuses_the_reserved_key(tmp_path: Path) -> None:
    wf = post(folder_with(tmp_path), {"$results": {"task": "Solve"}})
    with pytest.raises(ExportError, match="reserved key '\\$results'"):
        wf.to_document()


def document(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"caliber": 1, "name": "post", "process": {"type": "process", "tasks": [
        {"type": "task", "name": "Plot", "function": "upfuncs:plot", "args": list(args),
         "kwargs": kwargs}]}}


@pytest.mark.parametrize(("value", "problem"), [
    ({"$results": {"workflow": "analysis"}}, 'args[0]: "$results" lacks the field "task"'),
    ({"$results": {"task": "Solve", "tsk": 1}}, "args[0]: \"$results\" has an unknown field "
                                                "'tsk'"),
    ({"$results": {"task": 3}}, 'args[0]: "$results" field "task" must be a non-empty string, '
                                "not 3"),
    ({"$results": {"task": "Solve", "workload": ""}}, 'field "workload" must be a non-empty'),
    ({"$results": "Solve"}, 'args[0]: "$results" must be an object such as'),
    ({"$results": {"task": "Solve"}, "x": 1}, 'args[0]: "$results" must be alone in its '
                                              "object (it stands for an upstream task's "
                                              "value), not with 'x'"),
    ([{"deep": {"$results": {}}}], 'args[0][0].deep: "$results" lacks the field "task"'),
])
def test_a_broken_reference_is_told_with_its_place(tmp_path: Path, value: Any,
                                                   problem: str) -> None:
    path = tmp_path / "post.json"
    path.write_text(json.dumps(document(value)))
    with pytest.raises(WorkflowFileError) as caught:
        caliber.Workflow.load(path)
    assert caught.value.problems == [f"process.tasks[0].{problem}"] or \
        problem in caught.value.problems[0], caught.value.problems
    code, _out, err = run_cli("workflow", "show", str(path))
    assert_clean_error(code, err)
    assert problem in err


def test_workflow_show_draws_the_reference(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    path = post(folder, caliber.upstream("analysis", "Solve"), scale=2).export(
        folder / "post.json")
    code, out, err = run_cli("workflow", "show", str(path))
    assert code == 0, err
    assert "upfuncs:plot(<result of 'Solve' of upstream 'analysis'>, scale=2)" in out
    code, out, err = run_cli("workflow", "show", str(path), "--format", "mermaid")
    assert code == 0 and "of upstream" in out, err


# --- the rules ------------------------------------------------------------------------------

A = Upstream("aaaa111111", "analysis")
B = Upstream("bbbb222222", "analysis")
M = Upstream("cccc333333", "mesh")


@pytest.mark.parametrize(("ref", "upstreams", "chosen"), [
    (UpstreamResult("Solve"), [A], A),
    (UpstreamResult("Solve", workflow="mesh"), [A, M], M),
    (UpstreamResult("Solve", workload="bbbb"), [A, B, M], B),
    (UpstreamResult("Solve", workload="aaaa111111", workflow="analysis"), [A, B], A),
])
def test_which_upstream(ref: UpstreamResult, upstreams: list[Upstream],
                        chosen: Upstream) -> None:
    assert choose(ref, upstreams) == chosen


@pytest.mark.parametrize(("ref", "upstreams", "message"), [
    (UpstreamResult("Solve"), [], "it runs after no workload (queue it with --after ID)"),
    (UpstreamResult("Solve"), [A, M], "it runs after 2 workloads (aaaa111111 (analysis), "
                                      'cccc333333 (mesh)); say which with "workflow": NAME'),
    (UpstreamResult("Solve", workflow="post"), [A, M], "it runs after no workload of workflow "
                                                       "'post'"),
    (UpstreamResult("Solve", workflow="analysis"), [A, B, M],
     'it runs after 2 workloads of workflow \'analysis\' (aaaa111111 (analysis), bbbb222222 '
     '(analysis)); name one with "workload": ID'),
    (UpstreamResult("Solve", workload="zz"), [A], "'zz' names none of the workloads"),
    (UpstreamResult("Solve", workload="cccc", workflow="analysis"), [A, M],
     "workload cccc333333 is of workflow 'mesh', not 'analysis'"),
])
def test_which_upstream_refused(ref: UpstreamResult, upstreams: list[Upstream],
                                message: str) -> None:
    with pytest.raises(UpstreamError) as caught:
        choose(ref, upstreams)
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"the result of {ref.describe()}: ")
    with pytest.raises(UpstreamError):
        check_after({"process": {"args": [{"$results": ref.fields()}]}}, upstreams)


def results_json(tasks: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": "r1", "workload_id": "aaaa111111", "status": status, "tasks": tasks}


def test_which_value() -> None:
    solve = UpstreamResult("Solve")
    plain = results_json([{"name": "Solve", "branch": None, "status": "completed",
                           "return": {"n": 1}}])
    assert task_value(plain, solve) == {"n": 1}
    branched = results_json([
        {"name": "Solve", "branch": 1, "status": "completed", "return": "b1"},
        {"name": "Solve", "branch": 0, "status": "completed", "return": "b0"}])
    assert task_value(branched, solve) == ["b0", "b1"]
    with pytest.raises(UpstreamError, match="have no task 'Solve' \\(their tasks: 'Mesh'\\)"):
        task_value(results_json([{"name": "Mesh", "status": "completed"}]), solve)
    with pytest.raises(UpstreamError, match="task 'Solve' \\(branch 1\\) did not complete in "
                                            "results r1 of workload aaaa111111 \\(failed\\)"):
        task_value(results_json([{"name": "Solve", "branch": 0, "status": "completed"},
                                 {"name": "Solve", "branch": 1, "status": "failed"}]), solve)
    with pytest.raises(UpstreamError, match="ended failed, not completed"):
        task_value(results_json([], status="failed"), solve)


def test_an_upstream_value_counts_in_the_inputs_fingerprint() -> None:
    """A resume reuses a task that takes an upstream value only when the value is the one it
    took then: the value as stored is part of the argument's fingerprint."""
    ref = UpstreamResult("Solve", workflow="analysis")
    one = {ref: UpstreamValue({"n": 1}, {"n": 1}, "r1", "w1", "analysis", "s1")}
    same = {ref: UpstreamValue({"n": 1}, {"n": 1}, "r2", "w2", "analysis", "s2")}
    other = {ref: UpstreamValue({"n": 2}, {"n": 2}, "r3", "w3", "analysis", "s3")}
    assert inputs([ref], {}, one) == inputs([ref], {}, same)
    assert inputs([ref], {}, one) != inputs([ref], {}, other)
    assert inputs([ref], {}, one) != inputs([UpstreamResult("Solve")], {}, one)


# --- workflow run --after-results ---------------------------------------------------------------


def analysis(folder: Path, n: int = 3) -> Path:
    solve = caliber.Task("upfuncs:solve", name="Solve", args=[n])
    field = caliber.Task("upfuncs:field", name="Field", args=[20_000])
    wf = caliber.Workflow(caliber.Process([solve, field]), "analysis",
                          attachments=["upfuncs.py"], base_dir=folder)
    return wf.export(folder / "analysis.json")


def ran(*argv: str) -> dict[str, Any]:
    code, out, err = run_cli(*argv, "--json")
    assert code == 0, err
    results: dict[str, Any] = json.loads(out)
    return results


def test_workflow_run_takes_upstream_results(tmp_path: Path, owner: None) -> None:
    folder = folder_with(tmp_path)
    first = ran("workflow", "run", str(analysis(folder)))
    total = caliber.Task("upfuncs:total", name="Total",
                         args=[caliber.upstream("analysis", "Field")])
    wf = caliber.Workflow(caliber.Process([
        caliber.Task("upfuncs:plot", name="Plot", args=[caliber.upstream("Solve")],
                     kwargs={"scale": 2}), total]),
        "post", attachments=["upfuncs.py"], base_dir=folder)
    path = wf.export(folder / "post.json")

    code, _out, err = run_cli("workflow", "run", str(path))
    assert_clean_error(code, err)
    assert "takes the result of 'Solve' of the upstream (and 1 more), which comes from a " \
           "workload it runs after: queue it with --after ID, or run it with " \
           "--after-results ID" in err

    second = ran("workflow", "run", str(path), "--after-results", first["id"][:6])
    assert second["status"] == "completed"
    tasks = {t["name"]: t for t in second["tasks"]}
    assert tasks["Plot"]["return"] == {"took": {"n": 3, "values": [3, 6]}, "scale": 2}
    assert tasks["Total"]["return"] == float(sum(range(20_000)))  # a stored array, read back
    assert first["tasks"][1]["return"]["$caliber"] == "ndarray"
    assert second["upstream"] == [{  # where they came from, signed with the rest
        "workload": None, "workflow": "analysis", "results": first["id"],
        "signature": first["signature"], "tasks": ["Solve", "Field"]}]
    code, out, _err = run_cli("results", "show", second["id"])
    assert f"inputs from: analysis 'Solve', 'Field' (results {first['id']} of a workflow " \
           "run)" in out


def test_workflow_run_refuses_results_not_signed_with_your_key(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    folder = folder_with(tmp_path)
    first = ran("workflow", "run", str(analysis(folder)))
    path = post(folder, caliber.upstream("Solve")).export(folder / "post.json")
    with sqlite3.connect(caliber_home / "caliber.db") as conn:
        conn.execute("UPDATE results SET body = json_set(body, '$.tasks[0].return.n', 99) "
                     "WHERE id = ?", (first["id"],))
    code, _out, err = run_cli("workflow", "run", str(path), "--after-results", first["id"])
    assert_clean_error(code, err)
    assert f"cannot take results {first['id']}: results {first['id']} are not signed with " \
           "your key (signed with another key, or changed since)" in err
    code, out, _err = run_cli("results", "list", "--json")
    assert [r["workflow"] for r in json.loads(out)] == ["analysis"]  # nothing ran


def test_workflow_run_after_results_without_references(tmp_path: Path, owner: None) -> None:
    folder = folder_with(tmp_path)
    first = ran("workflow", "run", str(analysis(folder)))
    path = post(folder, 1).export(folder / "post.json")
    code, _out, err = run_cli("workflow", "run", str(path), "--after-results", first["id"])
    assert_clean_error(code, err)
    assert "workflow 'post' takes no upstream results" in err
