"""``caliber results list|show`` and ``caliber.get_results`` against the local store."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest

import caliber
from caliber.cli import main
from caliber.errors import AmbiguousIdError, NotFoundError
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.results.model import ErrorInfo, Results, RunStatus, TaskResult, TaskStatus

T0 = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.UTC)


def make(id_: str, workflow: str = "pasta", *, minutes: int = 0, failed: bool = False,
         pinion: str | None = None, workload_id: str | None = None) -> Results:
    error = ErrorInfo(type="ValueError", message="the dough tore", task="Shape", branch=1,
                      traceback='Traceback (most recent call last):\n  File "f.py", line 3, '
                                'in shape\nValueError: the dough tore\n') if failed else None
    tasks = [
        TaskResult(name="Make dough", path=["Pasta"], status=TaskStatus.COMPLETED,
                   duration=0.01, **{"return": {"eggs": 3}}),
        TaskResult(name="Shape", path=["Pasta", "b"], branch=0, status=TaskStatus.COMPLETED,
                   duration=0.5, conversion="set stored as a list", **{"return": [1, 2]}),
        TaskResult(name="Shape", path=["Pasta", "b"], branch=1,
                   status=TaskStatus.FAILED if failed else TaskStatus.COMPLETED,
                   duration=0.2, error=error, **{"return": None if failed else "ravioli"}),
    ]
    return Results(
        id=id_, workload_id=workload_id, workflow=workflow, pinion=pinion,
        status=RunStatus.FAILED if failed else RunStatus.COMPLETED,
        started_at=T0 + dt.timedelta(minutes=minutes),
        finished_at=T0 + dt.timedelta(minutes=minutes, seconds=2),
        tasks=tasks, g={"log": ["mixed"]}, error=error,
    )


@pytest.fixture
def stored() -> list[Results]:
    items = [make("abc1000000", minutes=1), make("abc2000000", "soup", minutes=2, pinion="p1"),
             make("xyz3000000", minutes=3, failed=True, pinion="p1")]
    with open_backend(local_target()) as backend:
        for r in items:
            backend.save_results(r)
    return items


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(list(args))
        out = capsys.readouterr()
        code = info.value.code
        return (code if isinstance(code, int) else 0), out.out, out.err

    return run


def test_list_when_empty(run_cli: Run) -> None:
    code, out, _ = run_cli("results", "list")
    assert code == 0 and "no results stored yet" in out
    assert json.loads(run_cli("results", "list", "--json")[1]) == []


def test_list_table_and_filters(run_cli: Run, stored: list[Results]) -> None:
    code, out, err = run_cli("results", "list")
    assert code == 0 and err == ""
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].split() == ["id", "workflow", "pinion", "status", "finished", "workload"]
    assert [line.split()[0] for line in lines[2:]] == ["xyz3000000", "abc2000000", "abc1000000"]
    assert "failed" in lines[2] and "completed" in lines[3]
    only = run_cli("results", "list", "--workflow", "soup")[1]
    assert "abc2000000" in only and "abc1000000" not in only
    assert "xyz3000000" not in run_cli("results", "list", "--pinion", "nobody")[1]
    assert len(json.loads(run_cli("results", "list", "-n", "1", "--json")[1])) == 1


def test_list_json_keys(run_cli: Run, stored: list[Results]) -> None:
    rows = json.loads(run_cli("results", "list", "--json", "--pinion", "p1")[1])
    assert [r["id"] for r in rows] == ["xyz3000000", "abc2000000"]
    for row in rows:
        assert {"id", "workload_id", "workflow", "pinion", "status", "finished_at"} <= set(row)
    assert rows[0]["status"] == "failed" and rows[0]["pinion"] == "p1"
    assert rows[0]["finished_at"] == "2024-05-01T08:03:02+00:00"


def test_show_prints_every_return_value(run_cli: Run, stored: list[Results]) -> None:
    code, out, err = run_cli("results", "show", "abc1")
    assert code == 0 and err == ""
    assert "pasta  results abc1000000  completed" in out
    assert '{"eggs": 3}' in out and "[1, 2] (set stored as a list)" in out
    assert '"ravioli"' in out
    assert '["mixed"]' in out  # g


def test_show_a_failed_run_with_its_traceback(run_cli: Run, stored: list[Results]) -> None:
    code, out, _ = run_cli("results", "show", "xyz")
    assert code == 0
    assert "failed" in out and "ValueError: the dough tore" in out
    assert "error: task 'Shape' (branch 1): ValueError: the dough tore" in out
    assert "Traceback (most recent call last)" in out and "in shape" in out


def test_show_json_keys(run_cli: Run, stored: list[Results]) -> None:
    doc = json.loads(run_cli("results", "show", "xyz3000000", "--json")[1])
    assert {"id", "workload_id", "workflow", "status", "tasks", "g", "error"} <= set(doc)
    assert doc["g"] == {"log": ["mixed"]} and doc["error"]["type"] == "ValueError"
    for task in doc["tasks"]:
        assert {"name", "branch", "status", "return"} <= set(task)
    assert doc["tasks"][0]["return"] == {"eggs": 3}
    assert Results.model_validate(doc) == stored[2]


def test_show_without_id_is_the_latest(run_cli: Run, stored: list[Results]) -> None:
    assert json.loads(run_cli("results", "show", "--json")[1])["id"] == "xyz3000000"
    latest_soup = json.loads(run_cli("results", "show", "--workflow", "soup", "--json")[1])
    assert latest_soup["id"] == "abc2000000"


def test_unknown_and_ambiguous_ids_are_one_line_exit_2(run_cli: Run, stored: list[Results]) -> None:
    code, _, err = run_cli("results", "show", "abc")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("caliber: error: id prefix 'abc' is ambiguous")
    assert "abc1000000" in err and "abc2000000" in err
    code, _, err = run_cli("results", "show", "nope")
    assert code == 2 and err == "caliber: error: no results with id 'nope'\n"
    code, _, err = run_cli("results", "show", "--workflow", "stew")
    assert code == 2 and "no results stored for workflow 'stew'" in err


def test_get_results_from_python(stored: list[Results]) -> None:
    assert caliber.get_results(results_id="abc1")["Make dough"] == {"eggs": 3}
    assert caliber.get_results(results_id="abc1")["Shape"] == [[1, 2], "ravioli"]
    assert caliber.get_results().id == "xyz3000000"
    assert caliber.get_results(workflow="pasta").id == "xyz3000000"
    assert caliber.get_results(workflow="pasta", pinion="p1").id == "xyz3000000"
    assert caliber.get_results(workflow="soup", local=True).id == "abc2000000"
    with pytest.raises(AmbiguousIdError):
        caliber.get_results(results_id="abc")
    with pytest.raises(NotFoundError, match=r"no results stored for workflow 'stew'"):
        caliber.get_results(workflow="stew")


def test_show_accepts_a_workload_id(run_cli: Run, tmp_path: Path) -> None:
    """``caliber workflow queue`` prints a workload id; its results are found by it too."""
    from caliber.queue.api import queue_workflow
    from caliber.queue.secret import key_id, load_key

    task = caliber.Task("json:dumps", name="Dump", args=[[1]])
    workflow = caliber.Workflow(caliber.Process([task]), "q", base_dir=tmp_path)
    workload_id = queue_workflow(workflow, "p9", local_target())
    with open_backend(local_target()) as backend:
        claim = backend.claim("p9", "test", 60, key_id(load_key()))
        assert claim is not None
        backend.complete(claim, make("res9000000", "q", workload_id=workload_id))
    doc = json.loads(run_cli("results", "show", workload_id[:5], "--json")[1])
    assert doc["id"] == "res9000000" and doc["workload_id"] == workload_id
    assert caliber.get_results(workload_id)["Make dough"] == {"eggs": 3}
