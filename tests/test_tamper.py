"""Issue 11, the queue rows and the set-up: an edited or damaged queue entry never ends a
command in a traceback, never stays running and never holds up the next workload; what
``queue list`` says of an entry is what the pinion decides; set-up mistakes are one line.

(The property-based suite over every field is tests/test_tamper_props.py.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue import secret
from caliber.queue.sqlite.backend import SQLiteBackend
from tests.pinion_helpers import FUNCTIONS, make_folder, start_pinion, workflow
from tests.reliability_figures import record
from tests.remote_helpers import remote
from tests.speckle_fixtures import speckle_server, speckle_token
from tests.test_fuzz import assert_clean_error, run_cli

__all__ = ["remote", "speckle_server", "speckle_token"]  # fixtures of the Speckle tests

KEY = "tamper-key-0123456789abcdef"
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX files")


@pytest.fixture
def queued(tmp_path: Path, caliber_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Two signed workloads for pinion p: the victim (queued first) and the next one."""
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    folder = make_folder(tmp_path / "wf")
    victim = workflow(folder, [("add", [1])], name="victim").queue(pinion="p")
    following = workflow(folder, [("add", [2])], name="next").queue(pinion="p")
    return {"db": caliber_home / "caliber.db", "victim": victim, "next": following}


def edit_body(db: Path, wid: str, change: Callable[[dict[str, Any]], None]) -> None:
    conn = sqlite3.connect(db)
    body = json.loads(conn.execute("SELECT body FROM workloads WHERE id = ?", (wid,))
                      .fetchone()[0])
    change(body)
    with conn:  # json.dumps writes NaN and lone surrogates (as \ud800), as an editor could
        conn.execute("UPDATE workloads SET body = ? WHERE id = ?", (json.dumps(body), wid))
    conn.close()


def sql(db: Path, statement: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    with conn:
        rows = conn.execute(statement, params).fetchall()
    conn.close()
    return rows


def listed() -> dict[str, dict[str, Any]]:
    code, out, err = run_cli("queue", "list", "--json")
    assert code == 0, err
    return {w["id"]: w for w in json.loads(out)}


def run_pinion(name: str = "p") -> dict[str, Any]:
    code, out, err = run_cli("pinion", "init", name, "-a", "1", "-w", "0", "--json")
    assert code == 0, err
    assert "Traceback" not in err
    summary: dict[str, Any] = json.loads(out)
    return summary


def ran(db: Path) -> set[str]:
    return {r[0] for r in sql(db, "SELECT workload_id FROM results")}


DAMAGE: dict[str, Callable[[dict[str, Any]], None]] = {
    "a lone surrogate in the workflow": lambda b: b["workflow"].__setitem__("name", "t\ud800"),
    "an attachment that is not base64": lambda b: b["attachments"][0].update(
        encoding="base64", content="abc"),
    "a NaN argument": lambda b: b["workflow"]["process"]["tasks"][0].__setitem__(
        "args", [float("nan")]),
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_a_row_that_cannot_be_encoded_is_damaged_everywhere_never_a_traceback(
    queued: dict[str, Any], what: str
) -> None:
    db, victim = queued["db"], queued["victim"]
    edit_body(db, victim, DAMAGE[what])
    rows = listed()
    assert rows[victim]["secret_ok"] is False and "damaged" in rows[victim]["last_error"]
    code, out, err = run_cli("queue", "view", victim)
    assert code == 0 and "damaged" in out, err
    code, _out, err = run_cli("queue", "resetsecret", victim)
    assert_clean_error(code, err, (1, 2))
    assert "damaged" in err
    summary = run_pinion()
    assert [s["id"] for s in summary["skipped"]] == [victim] and summary["ran"] == 1
    assert ran(db) == {queued["next"]}  # it did not hold up the next workload
    [(status, mismatch)] = sql(db, "SELECT status, secret_mismatch FROM workloads WHERE id = ?",
                               victim)
    assert status == "queued" and mismatch == secret.key_id(KEY.encode())
    assert "damaged" in listed()[victim]["last_error"]
    assert run_pinion()["skipped"] == []  # recorded: this key passes it over from now on
    record(f"tamper.unencodable.{what}", tracebacks=0, left_running=0)


NOT_UTF8 = {  # SQL writing bytes that are not UTF-8 as TEXT, as another program could
    "the workflow JSON": "UPDATE workloads SET body = CAST(replace(CAST(body AS BLOB), "
                         "CAST('victim' AS BLOB), x'76ff') AS TEXT) WHERE id = ?",
    "the id": "UPDATE workloads SET id = CAST(CAST(id AS BLOB) || x'ff' AS TEXT) WHERE id = ?",
}


@pytest.mark.parametrize("where", list(NOT_UTF8))
def test_text_that_is_not_utf8_is_damaged_and_passed_over(
    queued: dict[str, Any], where: str
) -> None:
    db, victim, following = queued["db"], queued["victim"], queued["next"]
    sql(db, NOT_UTF8[where], victim)
    rows = listed()
    [damaged] = [w for i, w in rows.items() if i != following]
    assert damaged["secret_ok"] is False and "damaged" in damaged["last_error"]
    code, out, err = run_cli("queue", "view", victim[:12])
    assert "Traceback" not in err and (code != 0 or "damaged" in out)
    summary = run_pinion()
    assert summary["ran"] == 1 and ran(db) == {following}  # the next one is not held up
    assert sql(db, "SELECT count(*) FROM workloads WHERE status = 'running'") == [(0,)]
    assert run_pinion()["ran"] == 0  # passed over from now on, not claimed again and again
    if where == "the workflow JSON":
        assert code == 0 and [s["id"] for s in summary["skipped"]] == [victim]
    code, _out, err = run_cli("queue", "reset", victim[:8])
    assert code == 0, err
    assert sql(db, "SELECT count(*) FROM workloads") == [(1,)]  # only the next one is left
    record(f"tamper.not_utf8.{where}", tracebacks=0, left_running=0)


def test_created_at_in_another_offset_is_damaged_for_the_listing_and_the_pinion(
    queued: dict[str, Any]
) -> None:
    db, victim, following = queued["db"], queued["next"], queued["victim"]
    [(stored,)] = sql(db, "SELECT created_at FROM workloads WHERE id = ?", victim)
    moment = dt.datetime.fromisoformat(stored)
    earlier_text = moment.astimezone(dt.timezone(dt.timedelta(hours=-11))).isoformat()
    assert dt.datetime.fromisoformat(earlier_text) == moment  # the same instant ...
    assert earlier_text < sql(db, "SELECT min(created_at) FROM workloads")[0][0]  # sorts first
    sql(db, "UPDATE workloads SET created_at = ? WHERE id = ?", earlier_text, victim)
    rows = listed()
    assert rows[victim]["secret_ok"] is False and "damaged" in rows[victim]["last_error"]
    assert rows[following]["secret_ok"] is True
    summary = run_pinion()
    assert [s["id"] for s in summary["skipped"]] == [victim]
    assert ran(db) == {following}


def test_the_listed_workflow_name_is_the_signed_one(queued: dict[str, Any]) -> None:
    db, victim = queued["db"], queued["victim"]
    sql(db, "UPDATE workloads SET workflow_name = 'innocent' WHERE id = ?", victim)
    rows = listed()
    assert rows[victim]["workflow"] == "victim" and rows[victim]["secret_ok"] is True
    code, out, _err = run_cli("queue", "view", victim, "--json")
    assert code == 0 and json.loads(out)["workflow"] == "victim"
    run_pinion()
    code, out, _err = run_cli("results", "list", "--json")
    assert code == 0 and {r["workflow"] for r in json.loads(out)} == {"victim", "next"}


def test_listing_and_pinion_agree_on_every_row(queued: dict[str, Any]) -> None:
    """One verification: a row the listing calls ok is run, any other is not."""
    db = queued["db"]
    sql(db, "UPDATE workloads SET created_at = replace(created_at, '+00:00', 'Z') WHERE id = ?",
        queued["victim"])
    expected = {wid: row["secret_ok"] for wid, row in listed().items()}
    assert expected == {queued["victim"]: False, queued["next"]: True}
    run_pinion()
    assert {wid: wid in ran(db) for wid in expected} == expected


def test_a_completed_row_set_back_to_queued_completes_cleanly_again(
    queued: dict[str, Any]
) -> None:
    """Decided: it runs again (as an exact replay of a signed workload does, docs/security.md)
    and completes; each run's Results are kept, the row never stays running."""
    db, victim = queued["db"], queued["victim"]
    run_pinion()
    [(first,)] = sql(db, "SELECT results_id FROM workloads WHERE id = ?", victim)
    sql(db, "UPDATE workloads SET status = 'queued', results_id = NULL WHERE id = ?", victim)
    summary = run_pinion()
    assert summary["ran"] == 1 and summary["errors"] == [], summary
    [(status, again)] = sql(db, "SELECT status, results_id FROM workloads WHERE id = ?", victim)
    assert status == "completed" and again not in (None, first)
    assert sorted(r[0] for r in sql(db, "SELECT id FROM results WHERE workload_id = ?",
                                    victim)) == sorted([first, again])


def test_pinions_with_different_wrong_keys_each_look_once_then_pass_it_over(
    tmp_path: Path, caliber_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real processes: two pinions of one name, each with its own wrong key, listening at
    once. Before, they claimed and released the workload back and forth until stopped."""
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    victim = workflow(make_folder(tmp_path / "wf"), [("add", [1])]).queue(pinion="p")
    keys = ["wrong-key-one-0123456789", "wrong-key-two-0123456789"]
    pinions = [start_pinion("p", "-a", "40", "-w", "0.01", "-q",
                            env={"CALIBER_SECRET_KEY": key}) for key in keys]
    for process in pinions:
        try:
            _out, err = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # still swapping it: stop it, then fail
            process.kill()
            _out, err = process.communicate()
        assert process.returncode == 0 and "Traceback" not in err, err
    db = caliber_home / "caliber.db"
    claims = sql(db, "SELECT count(*) FROM workload_history WHERE workload_id = ? AND "
                 "message LIKE 'claimed by %'", victim)[0][0]
    assert claims == 2  # one look each
    [(status, marks)] = sql(db, "SELECT status, secret_mismatch FROM workloads WHERE id = ?",
                            victim)
    assert status == "queued"
    assert sorted(marks.split()) == sorted(secret.key_id(k.encode()) for k in keys)
    code, _out, err = run_cli("queue", "resetsecret", victim)  # clears every mark
    assert code == 0, err
    assert sql(db, "SELECT secret_mismatch FROM workloads")[0][0] is None
    record("tamper.two_wrong_keys", pinions=2, claims=claims)


def test_an_attempt_put_back_keeps_its_run_folder(
    tmp_path: Path, caliber_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt put back (a cold stop) is not counted: the next run of the same attempt
    number gets a folder of its own, and the first one's is kept as it was."""
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    wid = workflow(make_folder(tmp_path / "wf"), [("add", [1])]).queue(pinion="p")
    with SQLiteBackend(caliber_home / "caliber.db") as backend:
        pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
        try:
            claim = backend.claim("p", pinion.owner, 60, pinion.key_id)
            assert claim is not None
            first = pinion.prepare(claim.workload)
            (first / "output.log").write_text("what the first attempt wrote\n")
            backend.release(claim, reason="pinion stopped before the run ended")
            assert pinion.run_once()
        finally:
            pinion.close()
        results = backend.find_results(workload_id=wid)
    assert results is not None and results.ok
    assert results.work_dir is not None and Path(results.work_dir) != first
    assert (first / "output.log").read_text() == "what the first attempt wrote\n"
    assert Path(results.work_dir).parent == first.parent


# --- set-up mistakes: one line, non-zero exit, never a hang --------------------------------


def _cli(home: Path, *argv: str, env: dict[str, str] | None = None,
         envb: dict[bytes, bytes] | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = {k.encode(): v.encode() for k, v in os.environ.items()}
    environ[b"CALIBER_HOME"] = os.fsencode(home)
    environ.update({k.encode(): v.encode() for k, v in (env or {}).items()})
    environ.update(envb or {})
    return subprocess.run([sys.executable, "-m", "caliber", *argv], capture_output=True,
                          env=environ, timeout=60)


def _one_line(done: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode not in (0, None), err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caliber: error: "), err
    for word in words:
        assert word in lines[0], err
    return lines[0]


SETUPS: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "the key file a folder": (lambda h: (h / "secret.key").mkdir(parents=True) or h,
                              ("secret.key", "a folder")),
    "the key file a dangling link": (
        lambda h: h.mkdir() or (h / "secret.key").symlink_to(h / "gone") or h,
        ("secret.key", "link to nothing")),
    "the key file a FIFO": (lambda h: h.mkdir() or os.mkfifo(h / "secret.key") or h,
                            ("secret.key", "not a regular file")),
    "CALIBER_HOME a regular file": (lambda h: (h.write_text("x"), h)[1],
                                    ("CALIBER_HOME", "not a folder")),
}


@posix_only
@pytest.mark.parametrize("what", list(SETUPS))
def test_setup_mistakes_are_one_line(tmp_path: Path, what: str) -> None:
    make, words = SETUPS[what]
    home = make(tmp_path / "home")
    for argv in (["queue", "list"], ["pinion", "init", "p", "-a", "1", "-w", "0"]):
        _one_line(_cli(home, *argv), *words)
    record(f"setup.{what}", tracebacks=0, hangs=0)


@posix_only
def test_a_key_variable_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    done = _cli(tmp_path / "home", "queue", "list",
                envb={b"CALIBER_SECRET_KEY": b"0123456789abcdef\xff"})
    _one_line(done, "CALIBER_SECRET_KEY", "not UTF-8")


def test_key_files_are_read_as_bytes(caliber_home: Path) -> None:
    """Two key files that differ only in bytes that are not UTF-8 are two keys."""
    caliber_home.mkdir()
    path = secret.key_path()
    ids = []
    for junk in (b"\xff" * 8, b"\xfe" * 8):
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(b"key-" + junk + b"-0123456789\n")
        key = secret.load_key()
        assert key == b"key-" + junk + b"-0123456789"
        ids.append(secret.key_id(key))
    assert ids[0] != ids[1]


# --- the same on the Speckle model (the test server's store edited in place) ----------------


def speckle_entry(remote: Any, wid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The workload's root object as stored, and its attachments' objects (hold the lock)."""
    objects = remote.server.store.objects[remote.project]
    root = next(o for o in objects.values()
                if o.get("caliber") == "workload" and o.get("workload_id") == wid)
    return root, [objects[r["referencedId"]] for r in root.get("@attachments") or []]


def damage_on_speckle(remote: Any, wid: str, what: str) -> None:
    with remote.server.store.lock:
        root, children = speckle_entry(remote, wid)
        doc = json.loads(root["workload_json"])
        doc["attachments"] = children
        DAMAGE[what](doc)
        del doc["attachments"]
        root["workload_json"] = json.dumps(doc)


@pytest.fixture
def on_speckle(remote: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", remote.project)
    folder = make_folder(tmp_path / "wf")
    victim = workflow(folder, [("add", [1])], name="victim").queue(pinion="p")
    # Another attachment: equal objects are stored once on Speckle (content-addressed).
    other = make_folder(tmp_path / "wf2", source=FUNCTIONS + "\n# the next one\n")
    following = workflow(other, [("add", [2])], name="next").queue(pinion="p")
    return {"remote": remote, "victim": victim, "next": following}


@pytest.mark.speckle
@pytest.mark.parametrize("what", list(DAMAGE))
def test_on_speckle_an_entry_that_cannot_be_encoded_is_damaged_never_a_traceback(
    on_speckle: dict[str, Any], what: str
) -> None:
    remote, victim = on_speckle["remote"], on_speckle["victim"]
    damage_on_speckle(remote, victim, what)
    rows = listed()  # it crashed here before
    assert rows[victim]["secret_ok"] is False and "damaged" in rows[victim]["last_error"]
    code, out, err = run_cli("queue", "view", victim)
    assert code == 0 and "damaged" in out, err
    code, _out, err = run_cli("queue", "resetsecret", victim)
    assert_clean_error(code, err, (1, 2))
    summary = run_pinion()
    assert [s["id"] for s in summary["skipped"]] == [victim] and summary["ran"] == 1
    code, out, err = run_cli("results", "list", "--json")
    assert code == 0 and [r["workload_id"] for r in json.loads(out)] == [on_speckle["next"]]
    row = listed()[victim]
    assert row["status"] == "queued" and row["secret_mismatch"] == secret.key_id(KEY.encode())
    assert run_pinion()["skipped"] == []


@pytest.mark.speckle
def test_on_speckle_pinions_with_different_wrong_keys_each_look_once(
    on_speckle: dict[str, Any]
) -> None:
    """Before, each look was a claim and a release: two versions, back and forth forever."""
    remote = on_speckle["remote"]
    backends = [remote.backend(), remote.backend()]
    keys = [b"wrong-key-one-0123456789", b"wrong-key-two-0123456789"]
    pinions = [Pinion(PinionConfig(name="p", attempts=1, wait=0), backend, key=key)
               for backend, key in zip(backends, keys, strict=True)]
    try:
        looks = [pinion.run_once() for _ in range(3) for pinion in pinions]
    finally:
        for pinion, backend in zip(pinions, backends, strict=True):
            pinion.close()
            backend.close()
    assert looks == [True, True, True, True, False, False]  # two workloads, each key once
    rows = listed()
    for wid in (on_speckle["victim"], on_speckle["next"]):
        assert rows[wid]["status"] == "queued"
        assert sorted(rows[wid]["secret_mismatch"].split()) == sorted(
            secret.key_id(k) for k in keys)
