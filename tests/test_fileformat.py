"""The JSON workflow file: export with round-trip checks, validated loading, the JSON Schema."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.errors import AttachmentError, ExportError, WorkflowFileError
from caliber.workflow.fileformat import FORMAT_VERSION, json_schema, load
from caliber.workflow.model import TaskRef


def make_dough(eggs: int) -> int:
    return eggs


def rest(*args: Any, **kwargs: Any) -> None:
    return None


def pasta(base: Path, **extra: Any) -> caliber.Workflow:
    dough = caliber.Task(make_dough, name="Make dough", args=[3])
    r = caliber.Task(rest, name="Rest", args=[dough.result, (1, 2)], kwargs={"m": {"x": [None]}})
    shape = caliber.Task(rest, name="Shape", args=[[1], [2]],
                         kwargs=[{"t": "tagliatelle"}, {"t": "ravioli"}])
    bp = caliber.BranchProcess([shape], branches=2, name="Batches")
    return caliber.Workflow(caliber.Process([dough, caliber.Process([r], name="inner"), bp],
                                            name="Pasta"),
                            "pasta", base_dir=base, **extra)


def document(**process: Any) -> dict[str, Any]:
    tasks = [{"type": "task", "name": "a", "function": "tests.test_fileformat:rest"}]
    return {"caliber": 1, "name": "w",
            "process": process or {"type": "process", "tasks": tasks}}


def write(path: Path, value: Any) -> Path:
    path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(WorkflowFileError) as info:
        load(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


# --- export and load round trip ----------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n")
    w = pasta(tmp_path, attachments=["data.csv"], description="fresh")
    path = w.export(tmp_path / "pasta.json")
    doc = json.loads(path.read_text())
    assert doc["caliber"] == FORMAT_VERSION
    assert doc["attachments"] == ["data.csv"] and doc["description"] == "fresh"
    rest_node = doc["process"]["tasks"][1]["tasks"][0]
    assert rest_node == {"type": "task", "name": "Rest", "function": "tests.test_fileformat:rest",
                         "args": [{"$result": "Make dough"}, [1, 2]],
                         "kwargs": {"m": {"x": [None]}}}
    again = caliber.Workflow.load(path)
    assert again.name == "pasta" and again.description == "fresh"
    assert again.base_dir == tmp_path.resolve()
    assert again.to_document() == w.to_document()
    loaded_rest = again.tasks[1]
    assert loaded_rest.args == [TaskRef("Make dough"), [1, 2]]  # the tuple became a list
    assert again.tasks[2].kwargs == [{"t": "tagliatelle"}, {"t": "ravioli"}]
    assert not list(tmp_path.glob(".pasta.json.*"))  # no temporary file left behind


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_export_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        first = pasta(tmp_path).export(tmp_path / "new.json")
        (tmp_path / "old.json").write_text("{}")
        (tmp_path / "old.json").chmod(0o640)
        again = pasta(tmp_path).export(tmp_path / "old.json")  # replaced, as a new file
    finally:
        os.umask(old)
    assert stat.S_IMODE(first.stat().st_mode) == mode
    assert stat.S_IMODE(again.stat().st_mode) == mode


def test_export_into_a_subfolder_rewrites_attachment_paths(tmp_path: Path) -> None:
    (tmp_path / "f.py").write_text("")
    w = pasta(tmp_path, attachments=["f.py"])
    with pytest.raises(AttachmentError, match=r"outside"):
        w.export(tmp_path / "out" / "pasta.json")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "g.py").write_text("")
    w2 = pasta(tmp_path, attachments=["sub/g.py"])
    doc = json.loads(w2.export(tmp_path / "sub" / "w.json").read_text())
    assert doc["attachments"] == ["g.py"]


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({1, 2}, r"args\[0\] is a set"),
        (dt.date(2024, 1, 1), r"args\[0\] is a date"),
        (object(), r"args\[0\] is a object"),
        (float("nan"), r"args\[0\] is nan"),
        ({1: "a"}, r"args\[0\] has the key 1"),
        ({"$result": "x"}, r"args\[0\] uses the reserved key"),
        ([1, b"x"], r"args\[0\]\[1\] is a bytes"),
        (Path("a"), r"args\[0\] is a PosixPath|args\[0\] is a WindowsPath"),
    ],
)
def test_export_refuses_non_json_arguments_naming_task_and_argument(
    tmp_path: Path, value: Any, where: str
) -> None:
    task = caliber.Task(make_dough, name="Make dough", args=[value])
    w = caliber.Workflow(caliber.Process([task]), "w", base_dir=tmp_path)
    with pytest.raises(ExportError, match=rf"task 'Make dough': {where}"):
        w.export(tmp_path / "w.json")
    assert not list(tmp_path.iterdir())  # nothing written


def test_export_refuses_non_json_kwargs_in_a_branch(tmp_path: Path) -> None:
    task = caliber.Task(rest, name="Shape", kwargs=[{"ok": 1}, {"when": dt.datetime(2024, 1, 1)}])
    w = caliber.Workflow(caliber.BranchProcess([task], 2), "w", base_dir=tmp_path)
    with pytest.raises(ExportError, match=r"task 'Shape': kwargs\[branch 1\]\['when'\] is a dat"):
        w.to_document()


def test_export_refuses_a_missing_attachment(tmp_path: Path) -> None:
    w = pasta(tmp_path, attachments=["nope.py"])
    with pytest.raises(AttachmentError, match=r"'nope.py' not found"):
        w.export(tmp_path / "w.json")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../up.py", "a/../../b", "con.txt", "a:b"])
def test_export_refuses_bad_attachment_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(AttachmentError):
        pasta(tmp_path, attachments=[bad]).export(tmp_path / "w.json")


# --- load: every problem with its place --------------------------------------------------


def test_truncated_json_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "w.json", '{\n  "caliber": 1,\n  "name": ')
    (problem,) = problems(path)
    assert problem.startswith("line 3, column 11:") and "not valid JSON" in problem


def test_syntax_error_in_the_middle(tmp_path: Path) -> None:
    path = write(tmp_path / "w.json", '{"caliber": 1,\n "name": "x",,\n}')
    (problem,) = problems(path)
    assert problem.startswith("line 2, column 14:")


def test_unknown_format_version(tmp_path: Path) -> None:
    assert problems(write(tmp_path / "w.json", {**document(), "caliber": 2})) == [
        "unknown format version 2; this Caliber reads version 1"
    ]


@pytest.mark.parametrize(("version", "shown"), [("1", '"1"'), (1.0, "1.0"), (True, "true")])
def test_a_format_version_that_is_not_a_number(tmp_path: Path, version: Any, shown: str) -> None:
    assert problems(write(tmp_path / "w.json", {**document(), "caliber": version})) == [
        f'format version {shown} must be the number 1, written "caliber": 1'
    ]


def test_not_a_workflow_file(tmp_path: Path) -> None:
    assert "missing format version" in problems(write(tmp_path / "w.json", {"name": "x"}))[0]
    assert "JSON object" in problems(write(tmp_path / "w.json", [1, 2]))[0]


def test_missing_and_unknown_fields_are_all_reported_with_their_path(tmp_path: Path) -> None:
    doc = document(type="process", tasks=[
        {"type": "task", "function": "m:f", "argz": []},
        {"type": "branch", "branches": 0, "tasks": []},
        {"type": "tusk"},
        {"type": "task", "name": "x", "function": "no-colon"},
    ])
    del doc["name"]
    doc["colour"] = "red"
    found = problems(write(tmp_path / "w.json", doc))
    assert "missing field 'name'" in found
    assert "unknown field 'colour'" in found
    assert "missing field 'process.tasks[0].name'" in found
    assert "unknown field 'process.tasks[0].argz'" in found
    assert any(p.startswith("process.tasks[1].branches:") for p in found)
    assert any(p.startswith("process.tasks[1].tasks:") for p in found)
    assert any(p.startswith("process.tasks[2]:") and "tusk" in p for p in found)
    assert "process.tasks[3].function: 'no-colon' is not an import path 'module:function'" in found
    assert len(found) == 8


def test_missing_attachment_is_reported(tmp_path: Path) -> None:
    doc = {**document(), "attachments": ["here.py", "gone.py", "../out.py"]}
    (tmp_path / "here.py").write_text("")
    found = problems(write(tmp_path / "w.json", doc))
    assert len(found) == 2
    assert found[0].startswith("attachment 'gone.py' not found")
    assert "climbs out" in found[1]


def test_duplicate_task_names_in_a_file(tmp_path: Path) -> None:
    task = {"type": "task", "name": "a", "function": "m:f"}
    found = problems(write(tmp_path / "w.json", document(type="process", tasks=[task, task])))
    assert found == ["workflow 'w': task name 'a' is used twice; task names must be unique "
                     "within a workflow"]


def test_branch_argument_lists_of_the_wrong_length_in_a_file(tmp_path: Path) -> None:
    task = {"type": "task", "name": "a", "function": "m:f", "args": [[1]]}
    found = problems(write(tmp_path / "w.json", document(type="branch", branches=2, tasks=[task])))
    assert "task 'a': in a BranchProcess with 2 branches, args must be a list of 2" in found[0]


def test_reference_to_a_later_task_in_a_file(tmp_path: Path) -> None:
    tasks = [{"type": "task", "name": "a", "function": "m:f", "args": [{"$result": "b"}]},
             {"type": "task", "name": "b", "function": "m:f"}]
    (problem,) = problems(write(tmp_path / "w.json", document(type="process", tasks=tasks)))
    assert "uses the result of 'b', which runs later" in problem


def test_unreadable_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.json") == ["no such file"]
    assert problems(tmp_path) == ["is a folder, not a workflow file"]
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    assert problems(tmp_path / "bin.json") == ["is not UTF-8 text"]


def test_functions_are_not_imported_at_load_time(tmp_path: Path) -> None:
    tasks = [{"type": "task", "name": "a", "function": "no_such_module:f"}]
    w = load(write(tmp_path / "w.json", document(type="process", tasks=tasks)))
    assert w.tasks[0].function == "no_such_module:f"  # the runner reports it (test_runner.py)


# --- the JSON Schema -------------------------------------------------------------------


def test_json_schema_describes_the_file() -> None:
    schema = json_schema()
    json.dumps(schema)  # plain JSON
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["title"] == "Caliber workflow"
    assert set(schema["required"]) >= {"caliber", "name", "process"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["caliber"]["const"] == FORMAT_VERSION
    defs = schema["$defs"]
    assert {"TaskNode", "ProcessNode", "BranchNode"} <= set(defs)
    assert defs["TaskNode"]["additionalProperties"] is False
    assert defs["TaskNode"]["properties"]["function"]["pattern"].startswith("^")


def test_exported_file_satisfies_the_schema_shape(tmp_path: Path) -> None:
    """A small check without a schema library: every key the file uses is in the schema."""
    schema = json_schema()
    doc = json.loads(pasta(tmp_path).export(tmp_path / "p.json").read_text())
    assert set(doc) <= set(schema["properties"])

    def check(node: dict[str, Any]) -> None:
        kind = {"task": "TaskNode", "process": "ProcessNode", "branch": "BranchNode"}[node["type"]]
        assert set(node) <= set(schema["$defs"][kind]["properties"])
        for child in node.get("tasks", []):
            check(child)

    check(doc["process"])


def test_a_file_may_name_its_schema_for_editors(tmp_path: Path) -> None:
    doc = {"$schema": "./caliber-workflow.schema.json", **document()}
    assert load(write(tmp_path / "w.json", doc)).name == "w"
    assert "$schema" in json_schema()["properties"]


def test_every_node_needs_its_type(tmp_path: Path) -> None:
    assert json_schema()["$defs"]["TaskNode"]["required"] == ["type", "name", "function"]
    doc = document(type="process", tasks=[{"name": "a", "function": "m:f"}])
    (problem,) = problems(write(tmp_path / "w.json", doc))
    assert problem.startswith("process.tasks[0]:") and "'type'" in problem
