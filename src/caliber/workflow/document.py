"""A checked workflow document (:func:`caliber.workflow.fileformat.check_document`) made into a
:class:`~caliber.workflow.model.Workflow`, without pydantic: a pinion's child does this, and
it is forked from a process that has not loaded pydantic (see :mod:`caliber.pinion.platform`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from caliber.errors import AttachmentError, WorkflowDefinitionError, WorkflowFileError
from caliber.workflow.attachments import AttachmentSpec, Reference, resolve_inside
from caliber.workflow.model import (
    BranchProcess,
    Node,
    Process,
    Task,
    TaskRef,
    Workflow,
)
from caliber.workflow.upstream import UPSTREAM_KEY, UpstreamResult

REF_KEY = "$result"


def decode_value(value: Any) -> Any:
    """Turn ``{"$result": name}`` back into TaskRef and ``{"$results": {...}}`` into
    UpstreamResult, everywhere inside ``value``."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(REF_KEY), str):
            return TaskRef(value[REF_KEY])
        if len(value) == 1 and isinstance(value.get(UPSTREAM_KEY), dict):
            fields = value[UPSTREAM_KEY]
            return UpstreamResult(fields.get("task"), workflow=fields.get("workflow"),
                                  workload=fields.get("workload"))
        return {k: decode_value(v) for k, v in value.items()}
    return value


def build_node(node: dict[str, Any]) -> Node:
    """A node of a checked document: its ``args`` and ``kwargs`` are there only when the file
    gave them (left out: the default, per branch in a branch process)."""
    if node["type"] == "task":
        return Task(
            node["function"],
            name=node["name"],
            args=decode_value(node["args"]) if "args" in node else None,
            kwargs=decode_value(node["kwargs"]) if "kwargs" in node else None,
            timeout=node.get("timeout"),
        )
    items = [build_node(i) for i in node["tasks"]]
    if node["type"] == "process":
        return Process(items, name=node.get("name"))
    return BranchProcess(items, branches=node["branches"], name=node.get("name"),  # type: ignore[arg-type]
                         parallel=node.get("parallel"))


def attachment_specs(items: list[Any]) -> list[AttachmentSpec]:
    """A checked document's attachments: paths as they are, references as
    :class:`~caliber.workflow.attachments.Reference` (AttachmentError when one is not valid)."""
    return [Reference.from_json(a) if isinstance(a, dict) else a for a in items]


def build_workflow(checked: dict[str, Any], base_dir: Path, *, source: str,
                   trusted: bool = False) -> Workflow:
    """The Workflow of a document :func:`~caliber.workflow.fileformat.check_document`
    returned, its attachments looked for in ``base_dir``; WorkflowFileError lists problems.
    ``trusted``: a pinion's child, whose pinion checked the document and wrote the
    attachments (checking each path) into ``base_dir``, a resolved path: nothing is looked
    at again."""
    try:
        attachments = attachment_specs(checked.get("attachments", []))
    except AttachmentError as exc:
        raise WorkflowFileError(source, [str(exc)]) from exc
    process = build_node(checked["process"])
    if trusted:
        return Workflow.checked(process, checked["name"], attachments=attachments,  # type: ignore[arg-type]
                                description=checked.get("description"), base_dir=base_dir,
                                outputs=checked.get("outputs", ()))
    problems: list[str] = []
    for name in attachments:
        if isinstance(name, Reference):
            continue  # on a shared drive: read (when no hash is given) as it is queued
        try:
            target = resolve_inside(base_dir, name)
            if not (target.is_file() or target.is_dir()):
                problems.append(f"attachment {name!r} is not a regular file or a folder"
                                if target.exists() else
                                f"attachment {name!r} not found in {base_dir}")
        except AttachmentError as exc:
            problems.append(str(exc))
    if problems:
        raise WorkflowFileError(source, problems)
    try:
        return Workflow(
            process,  # type: ignore[arg-type]
            checked["name"],
            attachments=attachments,
            description=checked.get("description"),
            base_dir=base_dir,
            outputs=checked.get("outputs", ()),
        )
    except WorkflowDefinitionError as exc:
        raise WorkflowFileError(source, [str(exc)]) from exc
