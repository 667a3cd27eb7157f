"""The Python API: Task, Process, BranchProcess, Workflow, task.result and caliber.context.g."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.context import GlobalData
from caliber.errors import WorkflowDefinitionError
from caliber.workflow.model import TaskRef


def make_dough(eggs: int) -> int:
    return eggs * 100


def rest(minutes: int = 30) -> str:
    return f"rested {minutes}"


class Kitchen:
    def cook(self) -> None:
        pass

    @staticmethod
    def clean() -> str:
        return "clean"


def logged(f: Any) -> Any:
    @functools.wraps(f)
    def inner(*a: Any) -> Any:
        return f(*a)

    return inner


@logged
def decorated(eggs: int) -> int:
    return eggs


renamed = logged(make_dough)  # its name says make_dough, which is another function


def wf(*items: Any, name: str = "w") -> caliber.Workflow:
    return caliber.Workflow(caliber.Process(list(items)), name, base_dir=Path.cwd())


def test_task_defaults_and_function_path() -> None:
    task = caliber.Task(make_dough, args=[3])
    assert task.name == "make_dough"
    assert task.function == "tests.test_model:make_dough"
    assert task.args == [3] and task.kwargs == {}
    assert task.resolve() is make_dough
    assert isinstance(task.result, TaskRef) and task.result.task == "make_dough"


def test_task_by_import_path_is_resolved_lazily() -> None:
    task = caliber.Task("tests.test_model:rest", name="Rest")
    assert task.resolve() is rest
    assert caliber.Task(Kitchen.clean).function == "tests.test_model:Kitchen.clean"


@pytest.mark.parametrize("bad", ["no_colon", ":f", "mod:"])
def test_task_refuses_a_bad_import_path(bad: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"module:function"):
        caliber.Task(bad)


def test_lambda_is_refused_when_the_task_is_made() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"^task 'x': task function is a lambda "
                       r"\(defined at .*test_model.py:\d+\)"):
        caliber.Task(lambda: 1, name="x")
    with pytest.raises(WorkflowDefinitionError, match=r"^task function is a lambda"):
        caliber.Task(lambda: 1)


def test_nested_function_is_refused_naming_it() -> None:
    def local_helper() -> None:
        pass

    with pytest.raises(WorkflowDefinitionError, match=r"local_helper.*inside another function"):
        caliber.Task(local_helper)


def test_bound_method_is_refused_naming_it() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"Kitchen.cook is a bound method"):
        caliber.Task(Kitchen().cook)


def test_function_defined_in_main_is_refused_with_advice() -> None:
    def script_function() -> None:
        pass

    script_function.__module__ = "__main__"
    script_function.__qualname__ = "script_function"
    with pytest.raises(WorkflowDefinitionError, match=r"__main__.*move it into a module"):
        caliber.Task(script_function)


def test_decorated_function_must_be_findable_by_name() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"make_dough cannot be found again"):
        caliber.Task(renamed)
    assert caliber.Task(decorated).function == "tests.test_model:decorated"


def test_not_callable_is_refused() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"not a plain function"):
        caliber.Task(42)  # type: ignore[arg-type]


def test_task_arguments_are_checked() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"args must be a list"):
        caliber.Task(make_dough, args="3")  # type: ignore[arg-type]
    with pytest.raises(WorkflowDefinitionError, match=r"non-empty string"):
        caliber.Task(make_dough, name="  ")


def test_process_items_must_be_tasks_or_processes() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"must be a list"):
        caliber.Process(caliber.Task(make_dough))  # type: ignore[arg-type]
    with pytest.raises(WorkflowDefinitionError, match=r"is not a Task"):
        caliber.Process([make_dough])  # type: ignore[list-item]


def test_duplicate_task_names_are_refused() -> None:
    a = caliber.Task(make_dough, name="Make dough", args=[1])
    b = caliber.Task(rest, name="Make dough")
    with pytest.raises(WorkflowDefinitionError, match=r"'Make dough' is used twice"):
        wf(a, caliber.Process([b]))


def test_branch_arguments_default_to_empty_per_branch() -> None:
    task = caliber.Task(rest)
    bp = caliber.BranchProcess([task], branches=3)
    assert task.args == [[], [], []] and task.kwargs == [{}, {}, {}]
    assert bp.tasks == [task]


@pytest.mark.parametrize(
    ("args", "kwargs", "what"),
    [
        ([[3]], None, "args must be a list of 2 argument lists"),
        ([3, 6], None, "args must be a list of 2 argument lists"),
        (None, [{"minutes": 1}], "kwargs must be a list of 2 dicts"),
        (None, {"minutes": 1}, "kwargs must be a list of 2 dicts"),
    ],
)
def test_branch_argument_lists_of_the_wrong_length(args: Any, kwargs: Any, what: str) -> None:
    task = caliber.Task(rest, name="Rest", args=args, kwargs=kwargs)
    with pytest.raises(WorkflowDefinitionError, match=rf"task 'Rest'.*{what}"):
        caliber.BranchProcess([task], branches=2)


@pytest.mark.parametrize("branches", [0, -1, True, 1.5])
def test_branch_count_must_be_a_whole_number(branches: Any) -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"whole number"):
        caliber.BranchProcess([caliber.Task(rest)], branches=branches)


def test_branch_process_needs_tasks() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"non-empty list"):
        caliber.BranchProcess([], branches=2)
    with pytest.raises(WorkflowDefinitionError, match=r"is not a Task"):
        caliber.BranchProcess([caliber.Process([])], branches=2)  # type: ignore[list-item]


def test_reference_to_a_later_task_is_refused() -> None:
    later = caliber.Task(make_dough, name="Later", args=[1])
    early = caliber.Task(rest, name="Early", args=[later.result])
    with pytest.raises(WorkflowDefinitionError, match=r"'Early' uses the result of 'Later'.*later"):
        wf(early, later)


def test_reference_to_an_unknown_task_is_refused() -> None:
    task = caliber.Task(rest, args=[TaskRef("Nobody")])
    with pytest.raises(WorkflowDefinitionError, match=r"'Nobody', which is not a task"):
        wf(task)


def test_references_in_nested_values_and_steps() -> None:
    dough = caliber.Task(make_dough, name="Dough", args=[1])
    branched = caliber.Task(rest, name="B", kwargs=[{"m": {"x": [dough.result]}}, {}])
    after = caliber.Task(rest, name="After", args=[branched.result])
    w = wf(dough, caliber.BranchProcess([branched], 2, name="bp"), after)
    steps = [(s.task.name, s.branch, s.path) for s in w.steps()]
    assert steps == [
        ("Dough", None, ("process",)),
        ("B", 0, ("process", "bp")),
        ("B", 1, ("process", "bp")),
        ("After", None, ("process",)),
    ]
    assert [t.name for t in w.tasks] == ["Dough", "B", "After"]


def test_workflow_checks_its_inputs() -> None:
    task = caliber.Task(rest)
    with pytest.raises(WorkflowDefinitionError, match=r"Process or BranchProcess"):
        caliber.Workflow(task, "w")  # type: ignore[arg-type]
    with pytest.raises(WorkflowDefinitionError, match=r"workflow name"):
        caliber.Workflow(caliber.Process([task]), "")
    w = caliber.Workflow(caliber.Process([task]), "w", attachments="f.py")
    assert w.attachments == ["f.py"]
    assert "1 tasks" in repr(w)


def test_global_data_object() -> None:
    g = GlobalData()
    g.mesh = 0.2
    assert g.mesh == 0.2 and g.get("mesh") == 0.2 and "mesh" in g and g["mesh"] == 0.2
    assert g.setdefault("log", []) == [] and g.log == []
    assert dict(g) == {"mesh": 0.2, "log": []}
    assert len(g) == 2 and sorted(g.keys()) == ["log", "mesh"]
    assert g.pop("mesh") == 0.2 and g.pop("mesh", None) is None
    del g.log
    with pytest.raises(AttributeError, match=r"no attribute 'log'"):
        _ = g.log
    with pytest.raises(AttributeError):
        del g.log
    g.x = 1
    g.clear()
    assert dict(g) == {} and repr(g) == "g({})"
    assert caliber.context.g is caliber.context.g


def test_public_names() -> None:
    assert set(caliber.__all__) >= {"Task", "Process", "BranchProcess", "Workflow", "Results",
                                    "get_results", "context", "CaliberError"}
    for name in caliber.__all__:
        assert getattr(caliber, name) is not None
    with pytest.raises(AttributeError):
        _ = caliber.nothing_here  # type: ignore[attr-defined]
