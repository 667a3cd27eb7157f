"""The JSON workflow file: its schema, export with round-trip checks, and validated loading.

Format version 1::

    {"caliber": 1, "name": "pasta", "description": null,
     "attachments": ["pasta_functions.py", "recipes/",
                     {"reference": "/mnt/share/flour.bin", "sha256": "9f2c...", "size": 1024}],
     "process": {"type": "process", "name": "Pasta", "tasks": [
         {"type": "task", "name": "Make dough", "function": "pasta_functions:make_dough",
          "args": [3], "kwargs": {}},
         {"type": "task", "name": "Rest", "function": "pasta_functions:rest",
          "args": [{"$result": "Make dough"}], "kwargs": {}, "timeout": 3600}]}}

``outputs`` (the result files collected from the run folder, :mod:`caliber.workflow.outputs`)
may be left out, and export leaves it out when there are none: a file without it is what
version 1 always was, and an older Caliber reads it. So may a branch process's ``parallel``
(its branches in processes of their own, at most that many at a time): left out, they run one
after the other, as before. Fields are only ever added to version 1
in this way (optional, meaning what their absence meant before); an older Caliber that reads a
file using a newer one says ``unknown field 'outputs'``. A change that an older reader would
take wrongly gets a new version.

An attachment is a file or a folder (every file inside) relative to the file's folder, or a
file by reference (:class:`~caliber.workflow.attachments.Reference`). A task's return value
used as an argument is written ``{"$result": "task name"}``. A task's ``timeout`` (seconds it
may run, above 0) is written only when it has one.

The return value of a task of an *upstream* workload (one this workload runs after:
``workflow queue post.json --after ID``) is written
``{"$results": {"workflow": "analysis", "task": "Solve"}}``, so the file can be written before
the upstream is queued and its id known (``caliber.upstream("analysis", "Solve")`` in
Python). ``"workflow"`` picks, among the workloads it runs after, the one of that workflow;
left out, it must run after exactly one. ``"workload": "<id or unique prefix>"`` names one of
them itself (two upstreams of one workflow). ``"task"`` is required, and these three are the
only fields. Its pinion gives the value before the run, from the upstream's Results, whose
signature it checks with its key; anything that does not resolve (no such upstream, no such
task, a task that did not complete, Results that are not signed with its key) fails the
workload before it runs, in one line (:mod:`caliber.workflow.upstream` has the rules).
``workflow queue`` checks that every reference picks one of the ``--after`` workloads before
anything is queued; ``workflow run`` takes the upstream Results with ``--after-results ID``.
An older Caliber reads such a file, but gives the task the reference itself, a dict. Tuples
are
written as lists (JSON has no tuple); any other value that would not come back unchanged is
refused at export time, naming the task and the argument.

A document nests at most :data:`MAX_DEPTH` levels of JSON (each process inside another adds
two, each list or dict of an argument one): deeper, the JSON readers and writers on the way to
a pinion give up, so export and load refuse it in one line naming the limit.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from caliber.errors import (
    AttachmentError,
    ExportError,
    WorkflowDefinitionError,
    WorkflowFileError,
)
from caliber.workflow.attachments import Reference, check_relative_path, resolve_inside
from caliber.workflow.document import REF_KEY, build_node, build_workflow
from caliber.workflow.limits import MAX_TIMEOUT
from caliber.workflow.model import Node, Process, Task, TaskRef, Workflow
from caliber.workflow.upstream import UPSTREAM_FIELDS, UPSTREAM_KEY, UpstreamResult

FORMAT_VERSION = 1
FUNCTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$"
MAX_DEPTH = 200
"""Levels of JSON nesting in a workflow document (about 98 processes inside each other).
pydantic stops at 255 levels when the workload is stored and when the document is checked."""


def document_depth(value: Any) -> int:
    """How many levels of lists and dicts ``value`` nests (without recursion: any depth)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _too_deep(depth: int | None) -> str:
    levels = f"{depth} levels" if depth is not None else f"more than {MAX_DEPTH} levels"
    return (f"the workflow nests {levels} deep as JSON; Caliber takes at most {MAX_DEPTH} "
            "(each process inside another adds 2, each list or dict of an argument 1)")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskNode(_Strict):
    """A task: a function by import path, with its arguments."""

    type: Literal["task"]
    name: str = Field(min_length=1)
    function: str = Field(pattern=FUNCTION_PATTERN, description="module:function")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    timeout: float | None = Field(
        default=None, gt=0, le=MAX_TIMEOUT, allow_inf_nan=False, strict=True,
        description="seconds the task may run before it fails with a timeout error")


class BranchNode(_Strict):
    """A branch process: the same tasks once per branch, arguments given per branch."""

    type: Literal["branch"]
    name: str | None = None
    branches: int = Field(ge=1)
    parallel: int | None = Field(default=None, ge=1, strict=True, description=(
        "run the branches in processes of their own, at most this many at a time "
        "(left out: one after the other, in the workflow's process)"))
    tasks: list[TaskNode] = Field(min_length=1)


class ProcessNode(_Strict):
    """A process: its items run one after the other."""

    type: Literal["process"]
    name: str | None = None
    tasks: list[Annotated[Union[TaskNode, ProcessNode, BranchNode], Field(discriminator="type")]]  # noqa: UP007


class ReferenceNode(_Strict):
    """An attachment by reference: a file on a drive every pinion mounts at the same path,
    checked by its SHA-256 before the run and never copied into the queue."""

    model_config = ConfigDict(extra="forbid", title="Attachment by reference")

    reference: str = Field(min_length=1, description="the file's absolute path")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description=(
        "its SHA-256 in lowercase hex; left out: read from the file when queued"))
    size: int | None = Field(default=None, ge=0, description="its size in bytes")
    name: str | None = Field(default=None, min_length=1, description=(
        "its name in the run folder (default: the file's name)"))


class WorkflowDocument(_Strict):
    """A Caliber workflow file."""

    model_config = ConfigDict(extra="forbid", title="Caliber workflow")

    schema_: str | None = Field(
        default=None, alias="$schema", description="the JSON Schema of this file, for editors"
    )
    caliber: Literal[1] = Field(description="format version")
    name: str = Field(min_length=1)
    description: str | None = None
    attachments: list[str | ReferenceNode] = Field(default_factory=list, description=(
        "files and folders relative to this file's folder (a folder: every file inside), "
        "and attachments by reference"))
    outputs: list[str] = Field(default_factory=list, description=(
        "files the run makes that come back with its Results: globs relative to the run "
        "folder, e.g. 'fields/*.vtu', '**/*.odb' (left out: none)"))
    process: Annotated[Union[ProcessNode, BranchNode], Field(discriminator="type")]  # noqa: UP007


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the workflow file, for editors."""
    schema = WorkflowDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# --- export ------------------------------------------------------------------------------


def encode_value(value: Any, task: str, where: str) -> Any:
    """``value`` as JSON, or ExportError when it would not come back unchanged."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ExportError(f"task {task!r}: {where} is {value}, which JSON cannot carry")
        return value
    if isinstance(value, TaskRef):
        return {REF_KEY: value.task}
    if isinstance(value, UpstreamResult):
        return {UPSTREAM_KEY: value.fields()}
    if kind in (list, tuple):
        return [encode_value(v, task, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                raise ExportError(
                    f"task {task!r}: {where} has the key {key!r}; JSON keys must be strings"
                )
            if key in (REF_KEY, UPSTREAM_KEY):
                raise ExportError(f"task {task!r}: {where} uses the reserved key {key!r}")
            out[key] = encode_value(item, task, f"{where}[{key!r}]")
        return out
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise ExportError(
        f"task {task!r}: {where} is a {kind.__name__} ({shown}), which JSON cannot carry; "
        "use numbers, strings, booleans, None, lists and dicts with string keys"
    )


def _task_node(task: Task, branched: bool) -> dict[str, Any]:
    if branched:
        args = [
            encode_value(list(a), task.name, f"args[branch {b}]") for b, a in enumerate(task.args)
        ]
        kwargs: Any = [
            encode_value(k, task.name, f"kwargs[branch {b}]") for b, k in enumerate(task.kwargs)
        ]
    else:
        args = encode_value(list(task.args), task.name, "args")
        if not isinstance(task.kwargs, dict):
            raise ExportError(f"task {task.name!r}: kwargs must be a dict")
        kwargs = encode_value(task.kwargs, task.name, "kwargs")
    node = {"type": "task", "name": task.name, "function": task.function, "args": args,
            "kwargs": kwargs}
    if task.timeout is not None:  # only when set: files without one stay as they were
        node["timeout"] = task.timeout
    return node


def _node(node: Node) -> dict[str, Any]:
    if isinstance(node, Task):
        return _task_node(node, branched=False)
    if isinstance(node, Process):
        return {"type": "process", "name": node.name, "tasks": [_node(i) for i in node.items]}
    return {
        "type": "branch",
        "name": node.name,
        "branches": node.branches,
        **({} if node.parallel is None else {"parallel": node.parallel}),
        "tasks": [_task_node(t, branched=True) for t in node.items],
    }


def to_document(workflow: Workflow, *, relative_to: Path | None = None) -> dict[str, Any]:
    """The workflow as a JSON document; attachments rewritten relative to ``relative_to``."""
    attachments: list[str | dict[str, Any]] = []
    for name in workflow.attachments:
        if isinstance(name, Reference):
            attachments.append(name.to_json())
            continue
        rel = check_relative_path(name)
        if relative_to is not None and relative_to.resolve() != workflow.base_dir:
            absolute = resolve_inside(workflow.base_dir, rel)
            try:
                rel = absolute.relative_to(relative_to.resolve()).as_posix()
            except ValueError as exc:
                raise AttachmentError(
                    f"attachment {name!r} is outside {relative_to}; export the workflow into the "
                    "folder that holds its attachments"
                ) from exc
        attachments.append(rel)
    try:
        process = _node(workflow.process)
    except RecursionError:
        raise ExportError(f"workflow {workflow.name!r}: {_too_deep(None)}") from None
    document = {
        "caliber": FORMAT_VERSION,
        "name": workflow.name,
        "description": workflow.description,
        "attachments": attachments,
        **({"outputs": list(workflow.outputs)} if workflow.outputs else {}),
        "process": process,
    }
    depth = document_depth(document)
    if depth > MAX_DEPTH:
        raise ExportError(f"workflow {workflow.name!r}: {_too_deep(depth)}")
    return document


def _file_or_folder(path: Path) -> bool:
    return path.is_file() or path.is_dir()


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def export(workflow: Workflow, path: Path) -> Path:
    """Write the workflow file atomically (nothing is written when export is refused)."""
    missing = [
        a for a in workflow.attachments if not isinstance(a, Reference)
        and not _file_or_folder(resolve_inside(workflow.base_dir, a))
    ]
    if missing:
        raise AttachmentError(f"attachment {missing[0]!r} not found in {workflow.base_dir}")
    text = dumps(to_document(workflow, relative_to=path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp (always 0600): mode 0666 and the umask decides, as for any other file.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# --- load --------------------------------------------------------------------------------


_TAGS = {"task", "process", "branch"}


def _location(loc: tuple[int | str, ...]) -> str:
    """``('process', 'process', 'tasks', 0, 'task', 'name')`` -> ``process.tasks[0].name``."""
    out = ""
    previous: int | str | None = None
    for i, part in enumerate(loc):
        union_slot = (i == 1 and loc[0] == "process") or (
            isinstance(previous, int) and i >= 2 and loc[i - 2] == "tasks"
        )
        if union_slot and part in _TAGS:
            previous = part
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        previous = part
    return out or "(top level)"


def _problem(error: Any) -> str:
    """One validation error as ``place: what is wrong``, in the words of the file format."""
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"missing field {_location(loc)!r}"
    if kind == "extra_forbidden":
        return f"unknown field {_location(loc)!r}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "function":
        return f"{_location(loc)}: {error.get('input')!r} is not an import path 'module:function'"
    return f"{_location(loc)}: {error['msg']}"


def from_document(document: Any, base_dir: Path, *, source: str) -> Workflow:
    """Validate a parsed document and build the Workflow; WorkflowFileError lists problems."""
    return build_workflow(check_document(document, source=source), base_dir, source=source)


def check_document(document: Any, *, source: str) -> dict[str, Any]:
    """The document validated (WorkflowFileError lists its problems), in the plain form
    :func:`build_workflow` takes: the values the file format gives it, nothing else. Its
    workflow is built once to check it too (unique task names, results used after their task).

    A pinion checks a workload's document before its child starts: the child then builds the
    workflow without loading the validator or checking again (a fresh process pays for every
    page it touches)."""
    if not isinstance(document, dict):
        raise WorkflowFileError(source, ["the top level must be a JSON object"])
    version = document.get("caliber")
    if version is None:
        raise WorkflowFileError(
            source, ["missing format version field 'caliber' (is this a Caliber workflow file?)"]
        )
    if type(version) is not int:  # "1", 1.0 and true are not 1
        raise WorkflowFileError(source, [
            f"format version {json.dumps(version)} must be the number {FORMAT_VERSION}, "
            f'written "caliber": {FORMAT_VERSION}'
        ])
    if version != FORMAT_VERSION:
        raise WorkflowFileError(
            source,
            [f"unknown format version {version!r}; this Caliber reads version {FORMAT_VERSION}"],
        )
    depth = document_depth(document)
    if depth > MAX_DEPTH:
        raise WorkflowFileError(source, [_too_deep(depth)])
    try:
        parsed = WorkflowDocument.model_validate(document)
    except ValidationError as exc:
        raise WorkflowFileError(source, [_problem(e) for e in exc.errors()]) from exc
    checked = parsed.model_dump(by_alias=True, exclude_unset=True)
    problems = upstream_problems(checked["process"])
    if problems:
        raise WorkflowFileError(source, problems)
    try:
        built = Workflow(build_node(checked["process"]), checked["name"], base_dir=Path("/"),  # type: ignore[arg-type]
                         outputs=checked.get("outputs", ()))
    except WorkflowDefinitionError as exc:
        raise WorkflowFileError(source, [str(exc)]) from exc
    if built.outputs:
        checked["outputs"] = built.outputs  # normalised: './fields//a.vtu' -> 'fields/a.vtu'
    return checked


_UPSTREAM_FORM = '{"$results": {"workflow": "analysis", "task": "Solve"}}'


def upstream_problems(process: dict[str, Any]) -> list[str]:
    """Every ``$results`` reference of a process that is not one (see the module), as
    ``place: what is wrong``."""
    problems: list[str] = []
    nodes: list[tuple[dict[str, Any], str]] = [(process, "process")]
    while nodes:
        node, place = nodes.pop()
        if node["type"] != "task":
            nodes.extend((item, f"{place}.tasks[{i}]") for i, item in enumerate(node["tasks"]))
            continue
        for name in ("args", "kwargs"):
            if name in node:
                _upstream_in(node[name], f"{place}.{name}", problems)
    return sorted(problems)


def _upstream_in(value: Any, place: str, problems: list[str]) -> None:
    stack = [(value, place)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, dict):
            if UPSTREAM_KEY in item:
                problem = _upstream_problem(item)
                if problem is not None:
                    problems.append(f"{where}: {problem}")
                continue
            stack.extend((v, f"{where}.{k}") for k, v in item.items())


def _upstream_problem(item: dict[str, Any]) -> str | None:
    if len(item) != 1:
        others = ", ".join(repr(k) for k in item if k != UPSTREAM_KEY)
        return (f'"$results" must be alone in its object (it stands for an upstream task\'s '
                f"value), not with {others}")
    fields = item[UPSTREAM_KEY]
    if not isinstance(fields, dict):
        shown = json.dumps(fields)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return f'"$results" must be an object such as {_UPSTREAM_FORM}, not {shown}'
    unknown = [k for k in fields if k not in UPSTREAM_FIELDS]
    if unknown:
        return (f'"$results" has an unknown field {unknown[0]!r} (its fields: "workflow", '
                '"workload", "task")')
    if "task" not in fields:
        return f'"$results" lacks the field "task": write it as {_UPSTREAM_FORM}'
    for key in UPSTREAM_FIELDS:
        if key in fields and (not isinstance(fields[key], str) or not fields[key].strip()):
            shown = json.dumps(fields[key])
            return f'"$results" field "{key}" must be a non-empty string, not {shown}'
    return None


def parse_text(text: str, *, source: str) -> Any:
    """Parse JSON text, turning a syntax error into one line with line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(
            source, [f"line {exc.lineno}, column {exc.colno}: {exc.msg} (not valid JSON)"]
        ) from exc
    except ValueError as exc:  # an integer of thousands of digits
        raise WorkflowFileError(source, [f"{exc} (not a workflow file)"]) from exc
    except RecursionError as exc:
        raise WorkflowFileError(source, ["nested too deeply (not a workflow file)"]) from exc


def load(path: Path) -> Workflow:
    """Read and validate a workflow file."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad may start it with a BOM
    except FileNotFoundError as exc:
        raise WorkflowFileError(source, ["no such file"]) from exc
    except IsADirectoryError as exc:
        raise WorkflowFileError(source, ["is a folder, not a workflow file"]) from exc
    except UnicodeDecodeError as exc:
        raise WorkflowFileError(source, ["is not UTF-8 text"]) from exc
    except OSError as exc:
        raise WorkflowFileError(source, [exc.strerror or str(exc)]) from exc
    return from_document(parse_text(text, source=source), path.resolve().parent, source=source)
