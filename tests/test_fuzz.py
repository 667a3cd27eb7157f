"""Bad input, generated: workflow files and queue entries that are broken in every way
hypothesis finds. Nothing may end in a traceback; every refusal names the problem; a damaged
queue entry never runs and never stops the pinion from running the next one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caliber.cli import main
from caliber.errors import CaliberError, WorkflowFileError
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue import secret
from caliber.queue.api import make_workload
from caliber.queue.sqlite.backend import SQLiteBackend
from caliber.queue.sqlite.schema import blob_folder
from caliber.results.convert import to_json
from caliber.workflow.fileformat import from_document, load, parse_text
from caliber.workflow.model import Workflow
from tests.odd_values import (
    FakeModel,
    ItemsRaise,
    PropertyRaises,
    Raises,
    ReprNotText,
    ReprSurrogate,
    Unset,
)
from tests.pinion_helpers import make_folder, workflow
from tests.reliability_figures import record

FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KEY = "fuzzing-key-0123456789abcdef"

VALID: dict[str, Any] = {
    "caliber": 1, "name": "pasta", "description": "fuzzed", "attachments": [],
    "process": {"type": "process", "name": "Pasta", "tasks": [
        {"type": "task", "name": "dough", "function": "pf:make_dough", "args": [3],
         "kwargs": {"salt": 0.5}},
        {"type": "branch", "name": "shapes", "branches": 2, "tasks": [
            {"type": "task", "name": "shape", "function": "pf:shape",
             "args": [[{"$result": "dough"}], [1]], "kwargs": [{}, {"kind": "penne"}]}]},
        {"type": "process", "tasks": [
            {"type": "task", "name": "rest", "function": "pf:rest"}]}]},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)

tried: dict[str, int] = {}


def count(what: str) -> None:
    tried[what] = tried.get(what, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    record("fuzz", inputs=dict(sorted(tried.items())), total=sum(tried.values()))


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*here, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*here, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to three places replaced, removed, or given an unknown key."""
    doc = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "extra"]))
        if not path:
            doc = draw(json_values) if action == "replace" else doc
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        else:
            parent[last] = [parent[last], draw(json_values)]
    return doc


def loads_or_names_the_problem(document: Any, source: str = "fuzzed.json") -> None:
    try:
        result = from_document(document, Path.cwd(), source=source)
    except WorkflowFileError as exc:
        assert str(exc).startswith(source + ": ")
        assert exc.problems and all(p.strip() for p in exc.problems)
    else:
        assert isinstance(result, Workflow)


@FUZZ
@given(mutated(VALID))
def test_a_mutated_workflow_document_loads_or_names_the_problem(document: Any) -> None:
    count("mutated workflow documents")
    loads_or_names_the_problem(document)


@FUZZ
@given(json_values)
def test_any_json_value_loads_or_names_the_problem(document: Any) -> None:
    count("arbitrary JSON documents")
    loads_or_names_the_problem(document)


@FUZZ
@given(st.text(max_size=200) | st.sampled_from([
    '{"caliber": 1' + "0" * 5000 + "}", "[" * 100_000, '{"a": ' * 50_000, "\ufeff{}",
    json.dumps(VALID)[:-7], json.dumps(VALID).replace(":", "=", 1),
]))
def test_any_text_parses_or_says_where_it_breaks(text: str) -> None:
    count("workflow file texts")
    try:
        document = parse_text(text, source="f.json")
    except WorkflowFileError as exc:
        assert str(exc).startswith("f.json: ")
        return
    loads_or_names_the_problem(document, "f.json")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        else:  # pragma: no cover - main always exits
            code = 0
    return code, out.getvalue(), err.getvalue()


def assert_clean_error(code: int, err: str, codes: tuple[int, ...] = (2,)) -> None:
    assert code in codes, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caliber: error: "), err


@settings(FUZZ, max_examples=25)
@given(st.binary(max_size=300) | mutated(VALID).map(lambda d: json.dumps(d).encode()))
def test_the_cli_turns_any_workflow_file_into_a_drawing_or_one_line(
    tmp_path: Path, data: bytes
) -> None:
    count("workflow files through the CLI")
    path = tmp_path / "fuzzed.json"
    path.write_bytes(data)
    code, _out, err = run_cli("workflow", "show", str(path))
    if code != 0:
        assert_clean_error(code, err)
    with pytest.raises(WorkflowFileError) if code else contextlib.nullcontext():
        load(path)


@pytest.mark.parametrize("version", ["0", "2", "-1", '"1"', "1.0", "true", "null", "[1]",
                                     "99999999999999999999", '"caliber"'])
def test_unknown_format_versions_are_refused(tmp_path: Path, version: str) -> None:
    count("format versions")
    text = json.dumps(VALID).replace('"caliber": 1', f'"caliber": {version}')
    path = tmp_path / "w.json"
    path.write_text(text)
    code, _out, err = run_cli("workflow", "show", str(path))
    assert_clean_error(code, err)
    assert "format version" in err
    code, out, err = run_cli("workflow", "queue", str(path), "-p", "p")
    assert_clean_error(code, err)
    assert out == ""


# --- damaged queue entries ---------------------------------------------------------------

COLUMNS = ["id", "pinion", "workflow_name", "status", "created_at", "attempts", "lease_owner",
           "lease_token", "lease_expires", "secret", "secret_mismatch", "results_id",
           "last_error", "work_dir", "body"]
column_values = (st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats()
                 | st.text(max_size=30) | st.binary(max_size=30)
                 | st.sampled_from(["queued", "running", "p", "{}", "[]", "null",
                                    "2026-01-01T00:00:00+00:00"]))


class Template(dict[str, Any]):
    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"<queue {self['db']}>"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A queue with two signed workloads: the victim (queued first) and a sentinel."""
    base = tmp_path_factory.mktemp("template")
    folder = make_folder(base / "wf")
    db = base / "caliber.db"
    with pytest.MonkeyPatch.context() as mp, SQLiteBackend(db) as backend:
        mp.setenv("CALIBER_SECRET_KEY", KEY)
        victim = make_workload(workflow(folder, [("add", [1]), ("pid", [])]), "p", backend)
        sentinel = make_workload(workflow(folder, [("add", [41])]), "p", backend)
        backend.put(victim)
        backend.put(sentinel)
    return Template(db=db, victim=victim, sentinel=sentinel)


@contextlib.contextmanager
def fresh_queue(template: dict[str, Any], where: Path) -> Iterator[Path]:
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    shutil.copy(template["db"], where / "caliber.db")
    blobs = blob_folder(template["db"])
    if blobs.exists():  # the attachments the rows refer to
        shutil.copytree(blobs, blob_folder(where / "caliber.db"))
    old = os.environ.get("CALIBER_HOME")
    os.environ["CALIBER_HOME"] = str(where)
    try:
        yield where / "caliber.db"
    finally:
        if old is not None:
            os.environ["CALIBER_HOME"] = old


def damage(db: Path, sql: str, params: tuple[Any, ...]) -> bool:
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute(sql, params)
        return True
    except sqlite3.Error:  # NOT NULL, a duplicate id: this damage cannot be made
        return False
    finally:
        conn.close()


damages = st.one_of(
    st.tuples(st.just("column"), st.sampled_from(COLUMNS), column_values),
    st.tuples(st.just("body"), st.just("body"),
              st.builds(lambda d: d, mutated({"workflow": VALID, "attachments": [
                  {"path": "pinfuncs.py", "encoding": "text", "content": "x = 1\n",
                   "sha256": "0" * 64, "size": 6}], "queued_by": "ann@laptop"}))),
    st.tuples(st.just("history"), st.sampled_from(["at", "status", "message"]), column_values),
)


@settings(FUZZ, max_examples=50)
@given(damages)
def test_a_damaged_queue_entry_never_crashes_and_never_blocks_the_next(
    template: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    change: tuple[str, str, Any],
) -> None:
    kind, column, value = change
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    victim, sentinel = template["victim"], template["sentinel"]
    with fresh_queue(template, tmp_path / "home") as db:
        if kind == "column":
            made = damage(db, f"UPDATE workloads SET {column} = ? WHERE id = ?",
                          (value, victim.id))
        elif kind == "body":
            made = damage(db, "UPDATE workloads SET body = ? WHERE id = ?",
                          (json.dumps(value), victim.id))
        else:
            made = damage(db, f"UPDATE workload_history SET {column} = ? WHERE workload_id = ?",
                          (value, victim.id))
        if not made:
            return
        count("damaged queue entries")
        with SQLiteBackend(db) as backend:
            listed = backend.list_workloads()
            assert len(listed) == 2
            for workload in listed:
                with contextlib.suppress(CaliberError):
                    backend.get(workload.id)
        for argv in (["queue", "list"], ["queue", "list", "--json"],
                     ["queue", "view", str(listed[0].id)], ["results", "list"]):
            code, out, err = run_cli(*argv)
            if code:
                assert_clean_error(code, err, (1, 2))
            elif argv[-1] == "--json":
                assert len(json.loads(out)) == 2
        with SQLiteBackend(db) as backend:
            pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
            try:
                for _ in range(4):
                    if not pinion.run_once():
                        break
            finally:
                pinion.close()  # its spare child and its log handler
            ran = {r[0] for r in backend.conn.execute("SELECT workload_id FROM results")}
            assert sentinel.id in ran  # the damaged entry did not hold up the next one
            if victim.id in ran:  # it ran: then it was exactly what was signed
                now = backend.get(victim.id)
                assert secret.canonical_message(now) == secret.canonical_message(victim)
                assert secret.verify(now, KEY.encode())
            code, _out, err = run_cli("queue", "reset", "--force", str(listed[0].id))
            if code:
                assert_clean_error(code, err, (1, 2))


@settings(FUZZ, max_examples=25)
@given(st.sampled_from(["id", "workload_id", "workflow", "pinion", "status", "finished_at",
                        "body"]), column_values)
def test_damaged_results_are_shown_as_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, column: str, value: Any
) -> None:
    home = tmp_path / f"home{len(list(tmp_path.iterdir()))}"  # one per example
    monkeypatch.setenv("CALIBER_HOME", str(home))
    folder = make_folder(tmp_path / "wf")
    wid = workflow(folder, [("add", [1])]).queue(pinion="p")
    db = home / "caliber.db"
    with SQLiteBackend(db) as backend:
        pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
        try:
            pinion.run_once()
        finally:
            pinion.close()
        rid = backend.get(wid).results_id
    assert rid is not None
    if not damage(db, f"UPDATE results SET {column} = ? WHERE workload_id = ?", (value, wid)):
        return
    count("damaged results")
    for argv in (["results", "list"], ["results", "list", "--json"], ["results", "show", rid],
                 ["results", "show", "--json", rid], ["queue", "view", wid]):
        code, _out, err = run_cli(*argv)
        if code:
            assert_clean_error(code, err, (1, 2))


# --- big input ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_10000_task_workflow_is_drawn_queued_run_and_kept(tmp_path: Path) -> None:
    import caliber

    folder = make_folder(tmp_path / "wf")
    tasks = [caliber.Task("pinfuncs:add", name=f"t{i}", args=[i]) for i in range(10_000)]
    big = caliber.Workflow(caliber.Process(tasks), "big", attachments=["pinfuncs.py"],
                           base_dir=folder)
    path = big.export(folder / "big.json")
    code, out, err = run_cli("workflow", "show", str(path))
    assert code == 0 and out.count("pinfuncs:add") == 10_000, err
    code, out, err = run_cli("workflow", "queue", str(path), "-p", "p")
    assert code == 0, err
    wid = out.split()[-1]
    code, _out, err = run_cli("pinion", "init", "p", "-a", "1", "-w", "0", "-q")
    assert code == 0, err
    results = caliber.get_results(wid)
    assert results.status == "completed" and len(results.tasks) == 10_000
    assert results["t9999"] == 10_000
    code, out, err = run_cli("results", "show", results.id, "--json")
    assert code == 0 and len(json.loads(out)["tasks"]) == 10_000, err
    record("bad_input.big_workflow", tasks=10_000, completed=True)


@pytest.mark.slow
def test_a_huge_binary_attachment_arrives_byte_for_byte(tmp_path: Path) -> None:
    import hashlib

    import caliber

    folder = make_folder(tmp_path / "wf", "hasher",
                         "import hashlib\n\ndef digest(name):\n"
                         "    with open(name, 'rb') as f:\n"
                         "        return hashlib.sha256(f.read()).hexdigest()\n")
    blob = os.urandom(16 * 2**20)
    (folder / "blob.bin").write_bytes(blob)
    wid = caliber.Workflow(caliber.Process([caliber.Task("hasher:digest", args=["blob.bin"])]),
                           "blob", attachments=["hasher.py", "blob.bin"],
                           base_dir=folder).queue(pinion="p")
    code, out, err = run_cli("queue", "view", wid, "--json")
    assert code == 0, err
    assert [a["size"] for a in json.loads(out)["attachments"]] == [
        (folder / "hasher.py").stat().st_size, len(blob)]
    code, _out, err = run_cli("pinion", "init", "p", "-a", "1", "-w", "0", "-q")
    assert code == 0, err
    assert caliber.get_results(wid)["digest"] == hashlib.sha256(blob).hexdigest()
    record("bad_input.huge_attachment", megabytes=16, byte_for_byte=True)


# --- return values: whatever a task returns is stored, and nothing else is lost ---------


odd_objects = st.sampled_from([Raises, ReprNotText, ReprSurrogate, FakeModel, Unset,
                               PropertyRaises]).map(lambda kind: kind())
texts = st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr)
                 | st.sampled_from(["\x00", "\x1b[31m", "\x07", "\r", "\u202e", "\x9b",
                                    "\U0001f600", "caf\udce9.txt"]),
                 max_size=6).map("".join)
huge_ints = st.builds(lambda sign, digits: sign * 10**digits, st.sampled_from([1, -1]),
                      st.integers(1000, 6000))
scalars = (st.none() | st.booleans() | st.integers() | huge_ints | st.floats() | texts
           | st.binary(max_size=8) | odd_objects)
keys = st.none() | st.booleans() | st.integers() | huge_ints | st.floats() | texts | st.builds(
    Raises) | st.tuples(st.integers(), texts)


def _nest(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


def _cycle(inner: Any) -> Any:
    loop: list[Any] = [inner]
    loop.append({"again": loop})
    return loop


return_values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(keys, inner, max_size=4)
                   | st.builds(lambda d: ItemsRaise(d), st.dictionaries(texts, inner, max_size=2))
                   | st.frozensets(st.integers() | texts, max_size=3)
                   | st.builds(_nest, st.integers(90, 600), inner) | st.builds(_cycle, inner)),
    max_leaves=8,
)
plain_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**300), 10**300)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _strict_round_trip(value: Any) -> None:
    """Stored JSON is strict (no NaN), valid UTF-8, and reads back to the same value."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    assert json.loads(text.encode("utf-8")) == value


@settings(FUZZ, max_examples=150)
@given(return_values)
def test_converting_any_return_value_never_raises_and_round_trips(value: Any) -> None:
    count("return values")
    out, note = to_json(value)
    _strict_round_trip(out)
    assert note is None or (isinstance(note, str) and note.encode("utf-8"))


@settings(FUZZ, max_examples=60)
@given(plain_json)
def test_plain_json_is_stored_unchanged(value: Any) -> None:
    count("plain JSON return values")
    assert to_json(value) == (value, None)


def give(slot: str) -> Any:
    return RETURNS[slot]


RETURNS: dict[str, Any] = {}


@settings(FUZZ, max_examples=20)
@given(return_values, return_values)
def test_odd_return_values_keep_every_other_result(
    tmp_path: Path, first: Any, second: Any
) -> None:
    """Run as a pinion's child does: every event goes through the message pipe's encoding and
    the pinion's check, then the Results through the store and back."""
    count("workflows returning odd values")
    import caliber
    from caliber.pinion.child import _Sender
    from caliber.pinion.messages import read_message

    RETURNS.update(first=first, second=second)
    tasks = [caliber.Task(give, name="first", args=["first"]),
             caliber.Task(add_one, name="plain", args=[41]),
             caliber.Task(give, name="second", args=["second"])]
    wf = caliber.Workflow(caliber.Process(tasks), "odd", base_dir=tmp_path)
    pipe = tmp_path / f"messages-{len(list(tmp_path.iterdir()))}"
    fd = os.open(pipe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        results = wf.run(work_dir=tmp_path, on_event=_Sender(fd).event)
    finally:
        os.close(fd)
    assert results.ok and results["plain"] == 42
    records = [m.record for m in map(read_message, pipe.read_bytes().splitlines()) if m.record]
    assert records == results.tasks
    for task in results.tasks:
        _strict_round_trip(task.return_)
    assert caliber.get_results(results_id=results.id) == results


def add_one(x: int) -> int:
    return x + 1
