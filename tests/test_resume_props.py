"""Property-based: a pinion never reuses forged Results, nor Results through a forged grant.

Any Results a key holder stored (any return values, ``g``, names, branches, code hashes) are
signed, stored and read back through the local queue, and a genuine grant lets the workload
reuse them: no false refusal. Then one place of the stored Results is changed (any field,
any value inside a return value or ``g``, a key removed or added), or one field of the
grant (the workload id, the Results id, the signature it covers, the grant itself, the key):
the pinion's check (:func:`caliber.queue.resume.resume_problem`, on what the queue gives back)
refuses, unless what a resume reuses is exactly what was signed. What ``queue list`` says of a
grant (:func:`caliber.queue.secret.resume_ok`) is what the pinion decides of it.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from caliber.queue import secret
from caliber.queue.resume import grant, resume_problem, signed
from caliber.queue.sqlite.backend import SQLiteBackend
from caliber.queue.workload import Workload
from caliber.results.model import Results, new_id
from tests.test_fuzz import FUZZ, plain_json
from tests.test_tamper_props import json_value

KEY = b"resume-props-key-0123456789abcdef"
OTHER = b"another-key-entirely-0123456789"
PROPS = settings(FUZZ, max_examples=120)

names = st.text(min_size=1, max_size=8)
sha = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
task = st.fixed_dictionaries({
    "name": names, "path": st.lists(names, max_size=2),
    "branch": st.none() | st.integers(0, 3),
    "status": st.sampled_from(["completed", "failed", "skipped"]),
    "return": plain_json, "g_set": st.dictionaries(names, plain_json, max_size=2),
    "g_deleted": st.lists(names, max_size=2),
    "code_file": st.none() | names, "code_sha256": st.none() | sha,
    "reused_from": st.none() | st.just("r0000000aa"), "duration": st.none() | st.floats(0, 9),
})
results_data = st.fixed_dictionaries({
    "workflow": names, "status": st.sampled_from(["completed", "failed", "cancelled"]),
    "tasks": st.lists(task, min_size=1, max_size=4),
    "g": st.dictionaries(names, plain_json, max_size=3),
    "resumed_from": st.none() | st.just("r0000000bb"),
})


def reused(results: Results) -> Any:
    """Everything a resume takes from Results (:meth:`caliber.workflow.runner._Run.take_over`
    and ``check_code``): ids, workflow, and per task its place, status, value, what it did
    to g, its code and where it first ran; the final g and status with them."""
    return (results.id, results.workload_id, results.workflow, results.status.value,
            results.resumed_from, json.dumps(results.g, sort_keys=True),
            [(t.name, t.path, t.branch, t.status.value, json.dumps(t.return_, sort_keys=True),
              json.dumps(t.g_set, sort_keys=True), t.g_deleted, t.code_file, t.code_sha256,
              t.reused_from) for t in results.tasks])


@contextmanager
def queue() -> Iterator[SQLiteBackend]:
    with tempfile.TemporaryDirectory() as folder, SQLiteBackend(Path(folder) / "q.db") as b:
        yield b


def stored(backend: SQLiteBackend, data: dict[str, Any]) -> Results:
    """Results of workload w0 made from ``data``, signed with KEY as a pinion signs them,
    stored; returned as the queue gives them back."""
    results = Results.model_validate({
        **data, "id": new_id(), "workload_id": "w000000000",
        "started_at": "2030-01-01T00:00:00+00:00", "finished_at": "2030-01-01T00:00:01+00:00"})
    backend.save_results(signed(results, KEY))
    return backend.get_results(results.id)


def resuming(results: Results, **grant_fields: Any) -> Workload:
    """Workload w0, resuming ``results`` with a genuine grant (``grant_fields`` changed)."""
    made = grant("w000000000", results, KEY)
    fields = {"id": "w000000000", "resume_from": made.results_id,
              "resume_signature": made.results_signature, "resume_grant": made.grant}
    return Workload.model_construct(**{**fields, **grant_fields})


@PROPS
@given(results_data)
def test_genuine_results_read_back_are_reused(data: dict[str, Any]) -> None:
    with queue() as backend:
        back = stored(backend, data)
    workload = resuming(back)
    assert resume_problem(workload, back, KEY) is None
    assert secret.resume_ok(KEY, workload_id=workload.id, resume_from=workload.resume_from,
                            results_signature=workload.resume_signature,
                            grant=workload.resume_grant, secret_ok=True, marks=None) is True
    assert resume_problem(workload, back, OTHER) is not None  # another pinion's key: never


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*here, i))
    return found


@st.composite
def forged_body(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """The stored body with one place replaced by any value, removed, or given a new key."""
    body = json.loads(json.dumps(body))
    path = draw(st.sampled_from(_paths(body)[1:]))
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "remove":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent[path[-1]], dict):
        parent[path[-1]][draw(names)] = draw(plain_json)
    else:
        parent[path[-1]] = draw(json_value | plain_json)
    return body


@PROPS
@given(st.data(), results_data)
def test_results_forged_in_any_field_are_never_reused(data: st.DataObject,
                                                      fields: dict[str, Any]) -> None:
    with queue() as backend:
        genuine = stored(backend, fields)
        workload = resuming(genuine)  # granted before the edit, as the owner's retry does
        body = json.loads(genuine.model_dump_json(by_alias=True))
        forged = data.draw(forged_body(body))
        with backend.transaction() as conn:  # as someone who can write the file
            conn.execute("UPDATE results SET body = ? WHERE id = ?",
                         (json.dumps(forged), genuine.id))
        back = backend.get_results(genuine.id)
    problem = resume_problem(workload, back, KEY)
    if problem is None:  # reused only when what a resume takes is what was signed
        assert reused(back) == reused(genuine)
    else:
        assert reused(back) != reused(genuine) or back.signature != genuine.signature or (
            back.id != genuine.id), problem


GRANT_FIELDS = ("id", "resume_from", "resume_signature", "resume_grant")


@PROPS
@given(results_data, st.sampled_from([*GRANT_FIELDS, "key"]),
       st.none() | st.text(max_size=70) | sha)
def test_grants_forged_in_any_field_are_never_accepted(
        fields: dict[str, Any], which: str, value: str | None) -> None:
    with queue() as backend:
        genuine = stored(backend, fields)
    workload = resuming(genuine)
    key = KEY
    if which == "key":
        key = (value or "").encode() + OTHER  # any other key
    elif getattr(workload, which) == value:
        return  # not a change
    else:
        workload = resuming(genuine, **{which: value})
    problem = resume_problem(workload, genuine, key)
    assert problem is not None
    listed = secret.resume_ok(key, workload_id=workload.id, resume_from=workload.resume_from,
                              results_signature=workload.resume_signature,
                              grant=workload.resume_grant, secret_ok=True, marks=None)
    assert listed is not True  # queue list never says a forged grant is fine
    if which in ("id", "resume_signature", "resume_grant"):  # the listing alone sees these
        assert listed is False and "grant" in problem


def test_a_pinion_marks_count_in_the_listing() -> None:
    """A grant that checks, on a workload a pinion with this key marked (it found the Results
    changed): the listing says it will not run; a mark of another key does not."""
    args: dict[str, Any] = {"workload_id": "w", "resume_from": "r", "results_signature": "s",
                            "grant": secret.sign_grant("w", "r", "s", KEY)}
    assert secret.resume_ok(KEY, **args, secret_ok=True, marks=None) is True
    mine = secret.key_id(KEY)
    assert secret.resume_ok(KEY, **args, secret_ok=True, marks=f"abc {mine}") is False
    assert secret.resume_ok(KEY, **args, secret_ok=True, marks="abc") is True
    assert secret.resume_ok(KEY, **{**args, "resume_from": None}, secret_ok=True,
                            marks=mine) is None
    assert sqlite3  # the local queue's own module, used above through SQLiteBackend
