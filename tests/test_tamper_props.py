"""Property-based: every field of a stored queue entry, mutated, never ends a command in a
traceback, never stops the pinion before the next workload, and the reason is recorded.

Local queue: each column of the workload row (other types, other texts, NULL, huge numbers)
and each value inside its JSON body (bad JSON, NaN, lone surrogates,
huge and deep values, other types, a key removed). Speckle model (the test server's store
edited in place): each member of the workload object, of its lossless JSON and of its
attachments' objects. Then: ``queue list`` (and ``--json``), ``queue view``, ``results list``,
``pinion init`` and ``queue resetsecret`` end in their output or one clear line; the next
workload runs; the entry is never left running by the pinion; one it does not run says why
(shown as damaged, or marked as not signed with the pinion's key).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from caliber.queue import secret
from caliber.queue.api import make_workload
from caliber.queue.sqlite.backend import SQLiteBackend
from tests.pinion_helpers import FUNCTIONS, make_folder, workflow
from tests.reliability_figures import record
from tests.remote_helpers import remote
from tests.speckle_fixtures import make_project, speckle_server, speckle_token
from tests.test_fuzz import FUZZ, assert_clean_error, fresh_queue, run_cli

__all__ = ["remote", "speckle_server", "speckle_token"]  # fixtures of the Speckle test

KEY = "tamper-props-key-0123456789"
tried: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    if tried:
        record("tamper.properties", **tried)


def count(what: str) -> None:
    tried[what] = tried.get(what, 0) + 1


# --- values an editor (or a broken sync) can leave -----------------------------------------

LONE = st.sampled_from(["t\ud800", "\udfff", "\udcff\udcfe", "a\ud83d"])
odd_text = (st.text(max_size=20) | LONE | st.sampled_from([
    "", " ", "null", "{}", "[]", "{not json", "NaN", "2026-01-01T00:00:00+02:00",
    "2026-01-01T00:00:00Z", "queued", "running", "completed", "p", "\x1b[31mred", "a\nb"]))
DEEP = "@a list 3000 deep"  # written out by dumps(), as HUGE
HUGE = "@a 5000-digit number"  # written out by dumps(): hypothesis cannot print the int
huge = st.sampled_from([2**63 - 1, -(2**63), 10**400, HUGE, DEEP, float("inf"), float("-inf"),
                        float("nan"), 1e308, -0.0])
NOT_UTF8 = "@text that is not UTF-8"  # written out by write(): bytes JSON cannot hold
json_leaf = (st.none() | st.booleans() | st.integers() | st.floats() | huge | odd_text
             | st.just(NOT_UTF8))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                          max_leaves=6)


class NotUtf8(bytes):
    """Bytes stored as TEXT: what SQLite holds after a writer that does not check UTF-8."""


column_value = (st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats() | odd_text
                | st.binary(max_size=20)
                | st.builds(lambda a, b: NotUtf8(a + b"\xff" + b), st.binary(max_size=8),
                            st.binary(max_size=8)))


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*here, i))
    return found


def _replace(document: Any, path: tuple[Any, ...], new: Any, remove: bool) -> Any:
    if not path:
        return new
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if remove:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return document


@st.composite
def mutated_json(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one value anywhere in it replaced by an odd one, or removed."""
    document = json.loads(json.dumps(document))
    path = draw(st.sampled_from(_paths(document)))
    remove = bool(path) and draw(st.booleans()) and draw(st.booleans())
    return _replace(document, path, draw(json_value), remove)


def dumps(value: Any) -> str:
    """JSON as a careless writer writes it: NaN, lone surrogates (escaped), any depth."""
    return (json.dumps(value).replace(json.dumps(HUGE), "9" * 5000)
            .replace(json.dumps(DEEP), "[" * 3000 + "]" * 3000))


# --- the local queue -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A queue with two signed workloads for pinion p: the victim (first) and the next."""
    base = tmp_path_factory.mktemp("tamper-template")
    db = base / "caliber.db"
    with pytest.MonkeyPatch.context() as mp, SQLiteBackend(db) as backend:
        mp.setenv("CALIBER_SECRET_KEY", KEY)
        victim = make_workload(workflow(make_folder(base / "wf"), [("add", [1])]), "p",
                               backend)
        following = make_workload(workflow(make_folder(base / "wf2"), [("add", [2])],
                                           name="next"), "p", backend)
        backend.put(victim)
        backend.put(following)
        columns = [r[1] for r in backend.conn.execute("PRAGMA table_info(workloads)")]
        [body] = backend.conn.execute("SELECT body FROM workloads WHERE id = ?",
                                      (victim.id,)).fetchone()
    return {"db": db, "victim": victim.id, "next": following.id, "columns": columns,
            "body": json.loads(body)}


def write(db: Path, column: str, value: Any, wid: str) -> bool:
    """Set one column of the victim's row as an editor could; False when SQLite refuses
    (NOT NULL, a duplicate id)."""
    conn = sqlite3.connect(db)
    try:
        with conn:
            if isinstance(value, str) and json.dumps(NOT_UTF8) in value:  # inside the JSON
                value = NotUtf8(value.encode().replace(json.dumps(NOT_UTF8).encode(),
                                                       b'"t\xff"'))
            if isinstance(value, NotUtf8):
                conn.execute(f"UPDATE workloads SET {column} = CAST(? AS TEXT) WHERE id = ?",
                             (bytes(value), wid))
            else:
                conn.execute(f"UPDATE workloads SET {column} = ? WHERE id = ?", (value, wid))
        return True
    except (sqlite3.Error, OverflowError, UnicodeEncodeError):  # refused, or not bindable
        return False
    finally:
        conn.close()


def row_of(db: Path, wid: str) -> dict[str, Any] | None:
    conn = sqlite3.connect(db)
    conn.text_factory = bytes  # read whatever is there
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM workloads WHERE rowid = 1").fetchone()
    finally:
        conn.close()
    return None if row is None else dict(row)


def clean(argv: list[str]) -> tuple[int, str]:
    """Run a command: its output, or one clear line (never a traceback)."""
    code, out, err = run_cli(*argv)
    assert "Traceback" not in err, err
    if code:
        assert_clean_error(code, err, (1, 2))
    return code, out


def every_command_is_clean(ids: list[str]) -> dict[str, Any]:
    """queue list/view, results list: clean; the pinion: clean, returns its summary."""
    for argv in (["queue", "list"], ["results", "list"], *(["queue", "view", i] for i in ids)):
        clean(argv)
    code, out = clean(["pinion", "init", "p", "-a", "1", "-w", "0", "--json"])
    assert code == 0
    summary: dict[str, Any] = json.loads(out)
    return summary


# Examples are slow (a pinion run each): failures are reported as found, not shrunk.
PROPS = settings(FUZZ, phases=[Phase.explicit, Phase.reuse, Phase.generate])


@settings(PROPS, max_examples=40)
@given(data=st.data())
def test_any_field_of_a_local_queue_row_mutated(
    template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    data: st.DataObject,
) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    victim, following = template["victim"], template["next"]
    column = data.draw(st.sampled_from(template["columns"]), label="column")  # every one
    if column == "body" and data.draw(st.booleans(), label="inside the JSON"):
        value: Any = dumps(data.draw(mutated_json(template["body"]), label="body"))
    else:
        value = data.draw(column_value, label="value")
    with fresh_queue(template, tmp_path / "home") as db:
        if not write(db, column, value, victim):
            return
        count(f"local {column}")
        ids = [following] + ([victim] if column != "id" else [])
        summary = every_command_is_clean(ids)
        conn = sqlite3.connect(db)
        ran = {r[0] for r in conn.execute("SELECT workload_id FROM results")}
        conn.close()
        assert following in ran  # the next workload was not held up
        after = row_of(db, victim)
        assert after is not None
        if column != "status":  # only an editor leaves it running
            assert after["status"] != b"running"
        skipped = {s["id"]: s["reason"] for s in summary["skipped"]}
        if after["id"] == victim.encode() and victim not in ran and (
                after["status"], after["pinion"]) == (b"queued", b"p"):
            # Not run though claimable: the pinion looked and recorded why.
            assert victim in skipped
            assert secret.key_id(KEY.encode()).encode() in (after["secret_mismatch"] or b"")
            clean(["queue", "list", "--json"])
        clean(["queue", "resetsecret", ids[-1]])
        clean(["queue", "view", ids[-1]])


# --- the Speckle model ---------------------------------------------------------------------

ROOT_MEMBERS = ["workload_json", "workflow_name", "pinion", "queued_by", "created_at",
                "workload_id", "caliber", "workflow"]
ATTACHMENT_MEMBERS = ["path", "encoding", "content", "sha256", "size", "mode"]


def _queue_two(tmp_path: Path) -> tuple[str, str]:
    victim = workflow(make_folder(tmp_path / "wf"), [("add", [1])]).queue(pinion="p")
    other = make_folder(tmp_path / "wf2", source=FUNCTIONS + "\n# the next one\n")
    following = workflow(other, [("add", [2])], name="next").queue(pinion="p")
    return victim, following


def _entry(remote: Any, project: str, wid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    objects = remote.server.store.objects[project]
    root = next(o for o in objects.values()
                if o.get("caliber") == "workload" and o.get("workload_id") == wid)
    return root, [objects[r["referencedId"]] for r in root.get("@attachments") or []]


speckle_changes = st.one_of(
    st.tuples(st.just("root"), st.sampled_from(ROOT_MEMBERS), json_value),
    st.tuples(st.just("attachment"), st.sampled_from(ATTACHMENT_MEMBERS), json_value),
    st.tuples(st.just("json"), st.just("workload_json"), st.builds(lambda: None)),
)


@pytest.mark.speckle
@settings(PROPS, max_examples=12)
@given(change=speckle_changes, data=st.data())
def test_any_member_of_a_speckle_workload_object_mutated(
    remote: Any, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
    change: tuple[str, str, Any], data: st.DataObject,
) -> None:
    kind, member, value = change
    tmp_path = tmp_path_factory.mktemp("speckle-example")
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    monkeypatch.setenv("CALIBER_HOME", str(tmp_path / "home"))
    project = make_project(remote.target, "props")  # a project of each example's own
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", project)
    victim, following = _queue_two(tmp_path)
    with remote.server.store.lock:
        root, children = _entry(remote, project, victim)
        if kind == "root":
            root[member] = value
        elif kind == "attachment":
            children[0][member] = value
        else:
            doc = json.loads(root["workload_json"])
            root["workload_json"] = dumps(data.draw(mutated_json(doc), label="workload_json"))
    count(f"speckle {kind} {member}")
    clean(["queue", "list", "--json"])
    summary = every_command_is_clean([following, victim])
    _code, out = clean(["queue", "list", "--json"])
    rows = {w["id"]: w for w in json.loads(out)}
    _code, out = clean(["results", "list", "--json"])
    ran = {r["workload_id"] for r in json.loads(out)}
    assert following in ran
    assert rows[victim]["status"] != "running"
    if victim not in ran:  # it was looked at and the reason recorded
        assert victim in {s["id"] for s in summary["skipped"]}
        assert secret.key_id(KEY.encode()) in (rows[victim]["secret_mismatch"] or "")
    clean(["queue", "resetsecret", victim])
