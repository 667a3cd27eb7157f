"""Results on the remote queue as Speckle objects, every value stored once.

The root object carries readable members (ids, workflow, status, times) for the web app, the
*frame* (the Results' JSON without the tasks' return values, as text) and one detached child
per task run. A task child holds its return value once:

- the Speckle objects in it (dicts with a ``speckle_type``: a mesh, points, a line...) as
  Speckle objects under ``@objects``, which the viewer renders; specklepy detaches and chunks
  their big lists, so no object grows with the value;
- the rest as JSON text (``value_json``), each Speckle object in it replaced by
  ``{"$speckle_object": k}`` (its place in ``@objects``).

Text longer than :data:`TEXT_CHUNK` characters is split into detached text objects: no object
outgrows the server's limit (``MAX_OBJECT_SIZE_MB``, 100 by default, on each object's JSON),
whatever the Results hold in total. A Speckle object is stored as one only when it reads back
exactly as it was (checked as it is written); otherwise it stays in the JSON text.

Results written before this layout carry all of it again as one string, ``results_json``
(:data:`OLD_MEMBER`): they are read from that string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from caliber.queue.blobs import is_sha256
from caliber.queue.speckle import adapter as sp
from caliber.results.model import Results

FORMAT = 2
"""The layout's number (a root without ``results_format`` is the old one)."""
TEXT_CHUNK = 1_000_000
"""Characters of text per object."""
OLD_MEMBER = "results_json"
PLACEHOLDER = "$speckle_object"
TEXT_KIND = "text"


def results_model(queue_model: str, workflow: str) -> str:
    """The name of the model that holds a workflow's Results, newest last:
    ``<queue model>/results/<workflow>``, the workflow's name as one part of a name the
    server accepts (lower case; ``/``, ``,``, ``\\`` and ``%`` made ``-``)."""
    part = re.sub(r"[/,\\%\s]+", " ", workflow.lower()).strip().replace(" ", "-")
    return f"{queue_model}/results/{part or 'unnamed'}"


def text_members(name: str, text: str) -> dict[str, Any]:
    """``text`` as the member ``name``, or split over detached objects as ``@name``."""
    if len(text) <= TEXT_CHUNK:
        return {name: text}
    return {f"@{name}": [sp.new_object({"caliber": TEXT_KIND, "text": text[i:i + TEXT_CHUNK]})
                         for i in range(0, len(text), TEXT_CHUNK)]}


def read_text(obj: dict[str, Any], name: str, objects: dict[str, dict[str, Any]]) -> str:
    """The text ``name`` of a stored object (see :func:`text_members`)."""
    if isinstance(obj.get(name), str):
        return str(obj[name])
    return "".join(str(objects[r["referencedId"]]["text"]) for r in obj[f"@{name}"])


def _speckle_dicts(value: Any) -> Iterator[dict[str, Any]]:
    """The outermost Speckle objects (dicts with a ``speckle_type``) in a JSON value."""
    if isinstance(value, dict):
        if isinstance(value.get("speckle_type"), str) and value["speckle_type"] != "reference":
            yield value
            return
        for item in value.values():
            yield from _speckle_dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _speckle_dicts(item)


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, dict):
        return PLACEHOLDER in value or any(_has_placeholder(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_placeholder(v) for v in value)
    return False


def _as_object(doc: dict[str, Any]) -> Any | None:
    """The Speckle object of ``doc`` when it reads back exactly as ``doc``, else None."""
    try:
        obj = sp.to_speckle(doc)
        root, texts = sp.serialise(obj)
        objects = {i: json.loads(t) for i, t in texts.items()}
        if sp.recompose(objects[root], objects) != doc:
            return None
    except Exception:  # not a Speckle object specklepy can rebuild: it stays JSON
        return None
    return obj


def value_members(value: Any) -> dict[str, Any]:
    """A task's return value as members of its task object (see the module)."""
    found: list[Any] = []
    chosen: dict[int, int] = {}  # id() of a Speckle dict -> its place in ``found``
    if not _has_placeholder(value):
        for doc in _speckle_dicts(value):
            obj = _as_object(doc)
            if obj is not None:
                chosen[id(doc)] = len(found)
                found.append(obj)

    def swap(item: Any) -> Any:
        if isinstance(item, dict):
            if id(item) in chosen:
                return {PLACEHOLDER: chosen[id(item)]}
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        return item

    text = json.dumps(swap(value) if chosen else value, ensure_ascii=False)
    return {**text_members("value_json", text), **({"@objects": found} if found else {})}


def read_value(task: dict[str, Any], objects: dict[str, dict[str, Any]]) -> Any:
    """A task's return value from its stored task object."""
    value = json.loads(read_text(task, "value_json", objects))
    refs = task.get("@objects") or []
    if not refs:
        return value
    parts = [sp.recompose(objects[r["referencedId"]], objects) for r in refs]

    def fill(item: Any) -> Any:
        if isinstance(item, dict):
            if set(item) == {PLACEHOLDER}:
                return parts[item[PLACEHOLDER]]
            return {k: fill(v) for k, v in item.items()}
        if isinstance(item, list):
            return [fill(v) for v in item]
        return item

    return fill(value)


def blob_names(value: Any) -> Iterator[str]:
    """Every SHA-256 a JSON value names as a blob reference (a ``sha256`` member)."""
    if isinstance(value, dict):
        if is_sha256(value.get("sha256")):
            yield str(value["sha256"])
        for item in value.values():
            yield from blob_names(item)
    elif isinstance(value, list):
        for item in value:
            yield from blob_names(item)


def results_object(results: Results, blobs: dict[str, str]) -> Any:
    """The Results as Speckle objects (see the module); ``blobs``: SHA-256 to object id of
    the blobs this backend knows, of which those the Results name are kept with them."""
    doc = results.to_json_dict()
    values = [task.pop("return", None) for task in doc["tasks"]]
    named = {s: blobs[s] for s in blob_names(doc) if s in blobs}
    for value in values:
        named.update((s, blobs[s]) for s in blob_names(value) if s in blobs)
    tasks = []
    for task, value in zip(results.tasks, values, strict=True):
        tasks.append(sp.new_object({
            "caliber": "task", "name": task.name, "path": list(task.path),
            "branch": task.branch, "status": task.status.value, "duration": task.duration,
            "conversion": task.conversion,
            "error": task.error.summary() if task.error else None, **value_members(value),
        }))
    return sp.new_object({
        "caliber": "results", "results_format": FORMAT, "results_id": results.id,
        "workload_id": results.workload_id, "workflow": results.workflow,
        "pinion": results.pinion, "status": results.status.value,
        "started_at": results.started_at.isoformat(),
        "finished_at": results.finished_at.isoformat(),
        "error": results.error.summary() if results.error else None,
        "blobs_json": json.dumps(named, sort_keys=True),
        **text_members("results_frame", json.dumps(doc, ensure_ascii=False)),
        "@tasks": tasks,
    })


def closure(root: dict[str, Any]) -> list[str]:
    """The ids of every object below ``root`` (none for the old layout)."""
    if OLD_MEMBER in root:
        return []
    return sorted(root.get("__closure") or {})


def results_from(root: dict[str, Any],
                 objects: dict[str, dict[str, Any]]) -> tuple[Results, dict[str, str]]:
    """The Results a root object (and ``objects``, its closure) hold, and the blobs they
    name (SHA-256 to object id). KeyError/ValueError/TypeError when damaged."""
    if OLD_MEMBER in root:
        return Results.model_validate_json(root[OLD_MEMBER]), {}
    doc = json.loads(read_text(root, "results_frame", objects))
    tasks = [objects[r["referencedId"]] for r in root["@tasks"]]
    if len(tasks) != len(doc["tasks"]):
        raise ValueError("the task objects do not match the Results")
    for entry, task in zip(doc["tasks"], tasks, strict=True):
        entry["return"] = read_value(task, objects)
    blobs = json.loads(root.get("blobs_json") or "{}")
    return Results.model_validate(doc), {str(k): str(v) for k, v in blobs.items()}
