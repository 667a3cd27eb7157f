"""The SQLite queue beyond the contract: schema and migrations, files it must refuse, query
plans, and many processes and threads using one database at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from caliber.errors import LeaseLostError, QueueError
from caliber.queue.sqlite.backend import CLAIM_SQL, SQLiteBackend
from caliber.queue.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from caliber.queue.workload import WorkloadStatus
from tests.contract.test_backend_contract import LEASE, make_results, make_workload

CHAINS = 7  # the schema version that added chains, start times and priorities
UNTOLD = 8  # the schema version that numbers the ends no pinion was there to tell of


def schema_of(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"))
    finally:
        conn.close()


@pytest.mark.parametrize("version", [1, CHAINS - 1, UNTOLD - 1])
def test_fresh_schema_equals_migrated_schema(tmp_path: Path, version: int) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript(";".join(MIGRATIONS[:version]) + f"; PRAGMA user_version = {version};")
    conn.execute(
        "INSERT INTO workloads (id, pinion, workflow_name, status, created_at, secret, body) "
        "VALUES ('aaaaaaaaaa', 'p1', 'pasta', 'queued', '2030-01-01T00:00:00.000000+00:00', "
        "'s', ?)", (json.dumps({"workflow": {"name": "pasta"}, "attachments": []}),))
    conn.commit()
    conn.close()
    SQLiteBackend(old).close()
    SQLiteBackend(tmp_path / "fresh.db").close()
    assert schema_of(old) == schema_of(tmp_path / "fresh.db")
    with SQLiteBackend(old) as backend:
        assert backend.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        got = backend.get("aaaa")
        assert got.workflow_name == "pasta"
        assert (got.after, got.not_before, got.priority, got.notify) == ([], None, 0, None)
        assert backend.claim("p1", "me", LEASE, "k") is not None


def test_workloads_that_had_ended_before_the_upgrade_are_not_told_again(
        tmp_path: Path) -> None:
    """A queue of schema 7 with workloads that ended (cancelled while queued, failed by
    expire, completed): after the upgrade a pinion takes none of them (their ends were told,
    or not, by the Caliber of that time); an end after the upgrade is taken."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(";".join(MIGRATIONS[:UNTOLD - 1]) + f"; PRAGMA user_version = "
                       f"{UNTOLD - 1};")
    body = json.dumps({"workflow": {"name": "pasta"}, "attachments": []})
    for wid, status in [("aaaaaaaaaa", "cancelled"), ("bbbbbbbbbb", "failed"),
                        ("cccccccccc", "completed"), ("dddddddddd", "queued")]:
        conn.execute(
            "INSERT INTO workloads (id, pinion, workflow_name, status, created_at, secret, "
            "body) VALUES (?, 'p1', 'pasta', ?, '2030-01-01T00:00:00.000000+00:00', 's', ?)",
            (wid, status, body))
        conn.execute("INSERT INTO workload_history (workload_id, at, status, message) VALUES "
                     "(?, '2030-01-01T00:00:00.000000+00:00', ?, 'as it was')", (wid, status))
    conn.commit()
    conn.close()
    with SQLiteBackend(path) as backend:
        assert backend.take_ended("p1") == []
        backend.cancel("dddd", "ann@laptop")
        assert [w.id for w in backend.take_ended("p1")] == ["dddddddddd"]


def test_nothing_to_tell_is_one_indexed_read_and_no_write(tmp_path: Path) -> None:
    """A pinion asks for untold ends often: when there are none, one read that seeks the
    index of the untold rows (the told and the never-ended ones are not in it), no write."""
    with SQLiteBackend(tmp_path / "q.db") as backend:
        for i in range(3):
            w = make_workload(seconds=i)
            backend.put(w)
        backend.cancel(w.id, "ann@laptop")
        assert len(backend.take_ended("p1")) == 1
        statements: list[str] = []
        backend.conn.set_trace_callback(statements.append)
        writes = backend.conn.total_changes
        assert backend.take_ended("p1") == []
        backend.conn.set_trace_callback(None)
        assert backend.conn.total_changes == writes
        reads = [s for s in statements if s not in ("BEGIN", "COMMIT")]
        assert len(reads) == 1 and reads[0].startswith("SELECT"), statements
        plan = " ".join(str(row[-1]) for row in backend.conn.execute(
            "EXPLAIN QUERY PLAN " + reads[0]))  # traced with its values in place
        assert "workloads_untold" in plan and "SCAN" not in plan, plan


def test_taking_untold_ends_seeks_them_in_order(tmp_path: Path) -> None:
    sql = ("SELECT id FROM workloads WHERE pinion = ? AND untold IS NOT NULL "
           "ORDER BY untold, id LIMIT ?")
    with SQLiteBackend(tmp_path / "q.db") as backend:
        plan = " ".join(str(row[-1]) for row in backend.conn.execute(
            "EXPLAIN QUERY PLAN " + sql, ("p1", 100)))
    assert "workloads_untold" in plan and "TEMP B-TREE" not in plan and "SCAN" not in plan


def test_two_connections_taking_at_once_never_both_get_one(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SQLiteBackend(path) as backend:
        ids = set()
        for i in range(60):
            w = make_workload(seconds=i)
            backend.put(w)
            backend.cancel(w.id, "ann@laptop")
            ids.add(w.id)
    start = threading.Barrier(3)
    got: list[list[str]] = [[], [], []]

    def take(n: int) -> None:
        with SQLiteBackend(path) as mine:
            start.wait()
            while taken := mine.take_ended("p1", limit=7):
                got[n].extend(w.id for w in taken)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [wid for mine in got for wid in mine]
    assert sorted(every) == sorted(ids)  # each once, none left


def test_wal_mode_and_busy_timeout(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "q.db") as backend:
        assert backend.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert backend.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000


def test_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE something_new (x)")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(QueueError, match="newer Caliber"):
        SQLiteBackend(path)
    assert path.read_bytes() == before
    assert not Path(str(path) + "-wal").exists()


@pytest.mark.parametrize("content", [b"this is not a database\n" * 50, b"\x00" * 4096])
def test_file_that_is_not_sqlite_is_refused_and_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "caliber.db"
    path.write_bytes(content)
    with pytest.raises(QueueError, match=r"not a usable Caliber queue database|cannot open"):
        SQLiteBackend(path)
    assert path.read_bytes() == content


def test_folder_in_place_of_the_database(tmp_path: Path) -> None:
    (tmp_path / "caliber.db").mkdir()
    with pytest.raises(QueueError):
        SQLiteBackend(tmp_path / "caliber.db")


@pytest.mark.parametrize(("sql", "index"), [
    ("SELECT id FROM workloads WHERE pinion = ? ORDER BY created_at", "workloads_pinion"),
    ("SELECT id FROM workloads WHERE status = ? ORDER BY created_at", "workloads_status"),
    ("SELECT id FROM workloads ORDER BY created_at LIMIT 10", "workloads_created"),
    ("UPDATE workloads INDEXED BY workloads_leases SET status = 'failed' "
     "WHERE status = 'running' AND lease_expires < ? AND attempts >= ?", "workloads_leases"),
])
def test_queries_use_their_index(tmp_path: Path, sql: str, index: str) -> None:
    with SQLiteBackend(tmp_path / "q.db") as backend:
        plan = backend.conn.execute(
            "EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?")
        ).fetchall()
    text = " ".join(str(row[-1]) for row in plan)
    assert index in text and "TEMP B-TREE" not in text


def test_the_ended_list_walks_the_ends_from_the_newest(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "q.db") as backend:
        statements: list[str] = []
        backend.conn.set_trace_callback(statements.append)
        backend.list_ended(50)
        backend.conn.set_trace_callback(None)
        walk = next(s for s in statements if "FROM workload_history h" in s)
        plan = backend.conn.execute("EXPLAIN QUERY PLAN " + walk).fetchall()
    details = [str(row[-1]) for row in plan]
    assert "SCAN h USING INDEX workload_history_ended" in details, details
    assert not {"SCAN h", "SCAN workloads"} & set(details), details
    sorts = [row for row in plan if "TEMP B-TREE" in str(row[-1])]
    assert all(row[1] == 0 for row in sorts), plan  # only the outer sort of the 50 found


def test_claim_seeks_instead_of_scanning(tmp_path: Path) -> None:
    params = {"owner": "o", "token": "t", "expires": 1.0, "pinion": "p", "now": 1.0,
              "start": "2030-01-01T00:00:00.000000+00:00", "key_id": "k"}
    with SQLiteBackend(tmp_path / "q.db") as backend:
        plan = backend.conn.execute("EXPLAIN QUERY PLAN " + CLAIM_SQL, params).fetchall()
    details = [str(row[-1]) for row in plan]
    queued = next(i for i, d in enumerate(details) if "INDEX workloads_queued" in d)
    assert "TEMP B-TREE" not in details[queued + 1]  # priority, then age: the index's order
    assert any("INDEX workloads_leases" in d for d in details)
    assert any("workload_after USING PRIMARY KEY" in d for d in details)  # what it runs after
    assert not any(d.startswith(("SCAN workloads", "SCAN workload_after")) for d in details)


@pytest.mark.parametrize(("sql", "index"), [
    ("SELECT w.id FROM workload_after a JOIN workloads w ON w.id = a.workload "
     "WHERE a.upstream = ? AND w.status = 'waiting'", "workloads_after_upstream"),
    ("SELECT min(not_before) FROM workloads WHERE pinion = ? AND status = 'queued' "
     "AND not_before IS NOT NULL AND not_before > ?", "workloads_starts"),
])
def test_chain_lookups_use_their_index(tmp_path: Path, sql: str, index: str) -> None:
    with SQLiteBackend(tmp_path / "q.db") as backend:
        plan = backend.conn.execute("EXPLAIN QUERY PLAN " + sql, ("x",) * sql.count("?"))
        text = " ".join(str(row[-1]) for row in plan)
    assert index in text and "SCAN" not in text


def test_lost_lease_trigger_ignores_renewals(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "q.db") as backend:
        w = make_workload()
        backend.put(w)
        claim = backend.claim("p1", "a", LEASE, "k")
        assert claim is not None
        for _ in range(3):
            claim = backend.renew(claim, LEASE)
        backend.complete(claim, make_results(w.id))
        messages = [h.message for h in backend.get(w.id).history]
    assert not any("ran out" in m for m in messages)
    assert len(messages) == 3  # queued, claimed, completed


def test_a_look_for_a_cancel_finds_it_at_once_and_writes_nothing(tmp_path: Path) -> None:
    """The local queue's ``peek_cancel`` reads the cancel another process asked (the pinion
    stops a ``cancel --now`` within about a second), and never writes."""
    with SQLiteBackend(tmp_path / "q.db") as backend, \
            SQLiteBackend(tmp_path / "q.db") as other:  # as `caliber queue cancel` does
        w = make_workload()
        backend.put(w)
        claim = backend.claim("p1", "a", LEASE, "k")
        assert claim is not None
        other.cancel(w.id, "ann@laptop", now=True)
        writes = backend.conn.total_changes
        peeked = backend.peek_cancel(claim)
        assert peeked.cancel_requested == "ann@laptop" and peeked.cancel_now
        assert backend.conn.total_changes == writes
        other.reset(w.id, force=True)
        with pytest.raises(LeaseLostError):
            backend.peek_cancel(claim)


@pytest.mark.parametrize("lease", [
    "lease_owner = NULL, lease_token = NULL, lease_expires = NULL",
    "lease_owner = 'a', lease_token = 't', lease_expires = NULL",
    "lease_owner = 'a', lease_token = 't', lease_expires = 'tomorrow'",
    "lease_owner = 'a', lease_token = 't', lease_expires = x'00'",
])
def test_a_running_row_without_a_lease_is_taken_back_as_from_a_dead_pinion(
    tmp_path: Path, lease: str
) -> None:
    with SQLiteBackend(tmp_path / "q.db") as backend:
        w = make_workload()
        backend.put(w)
        backend.conn.execute(f"UPDATE workloads SET status = 'running', attempts = 1, {lease}")
        claim = backend.claim("p1", "b", LEASE, "k")
        assert claim is not None and claim.workload.id == w.id
        assert claim.workload.attempts == 2  # the edited attempt counts, as a dead pinion's
        assert any("ran out (attempt 1 lost)" in h.message for h in backend.get(w.id).history)
        backend.conn.execute(f"UPDATE workloads SET {lease}")
        assert backend.expire(max_attempts=2) == [w.id]  # and at the last attempt: failed
        failed = backend.get(w.id)
    assert failed.status == WorkloadStatus.FAILED and "lease ran out 2 times" in str(
        failed.last_error)


def test_threads_sharing_one_backend(tmp_path: Path) -> None:
    """The pinion renews from a thread while its main thread uses the same connection."""
    with SQLiteBackend(tmp_path / "q.db") as backend:
        for i in range(40):
            backend.put(make_workload(seconds=i))
        claimed: list[str] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                while (claim := backend.claim("p1", threading.current_thread().name, LEASE,
                                              "k")) is not None:
                    claim = backend.renew(claim, LEASE)
                    backend.complete(claim, make_results(claim.workload.id))
                    claimed.append(claim.workload.id)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(claimed) == len(set(claimed)) == 40
        assert all(w.status == WorkloadStatus.COMPLETED for w in backend.list_workloads())


CLAIMER = """
import json, sys
from pathlib import Path
from caliber.queue.sqlite.backend import CLAIM_SQL, SQLiteBackend
from caliber.results.model import Results, RunStatus, utcnow
backend = SQLiteBackend(Path(sys.argv[1]))
taken = []
while (claim := backend.claim("p1", sys.argv[2], 60.0, "k")) is not None:
    now = utcnow()
    backend.complete(claim, Results(workflow="pasta", status=RunStatus.COMPLETED,
                                    started_at=now, finished_at=now))
    taken.append(claim.workload.id)
backend.close()
print(json.dumps(taken))
"""


def test_processes_racing_claim_each_workload_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SQLiteBackend(path) as backend:
        ids = []
        for i in range(40):
            w = make_workload(seconds=i)
            backend.put(w)
            ids.append(w.id)
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(path), f"pinion-{n}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    taken: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "locked" not in err
        taken += json.loads(out)
    assert sorted(taken) == sorted(ids)
    with SQLiteBackend(path) as backend:
        assert {w.status for w in backend.list_workloads()} == {WorkloadStatus.COMPLETED}
        assert len(backend.list_results()) == 40
