"""The PostgreSQL queue beyond the contract suite (which runs on it too, tests/contract): idle
pinions woken by NOTIFY, claims by many processes at once, its schema made once by processes
opening a new database together, and reconnecting after the server restarts. Against a real
server (tests/postgres_server.py); skipped, with the reason, where PostgreSQL or psycopg is
not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from caliber.errors import QueueError
from caliber.queue.backend import Claim
from caliber.queue.target import QueueTarget
from caliber.queue.workload import WorkloadStatus
from tests.contract.test_backend_contract import KEY, LEASE, make_results, make_workload
from tests.postgres_server import PostgresServer

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")

from caliber.queue.postgres.backend import LISTENER, PostgresBackend  # noqa: E402
from caliber.queue.postgres.connection import display  # noqa: E402
from caliber.queue.postgres.schema import MIGRATIONS, SCHEMA_VERSION  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BOUND = 60.0  # seconds a test waits for what must happen long before (never a measurement)


def python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def until(what: str, check: object) -> None:
    """Wait until ``check()`` is true; fail after :data:`BOUND` seconds."""
    deadline = time.monotonic() + BOUND
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.05)


def test_the_missing_driver_message_installs_the_extra() -> None:
    from caliber.queue.postgres.connection import INSTALL_HINT
    from tests.test_install_docs import PROJECT, pip_installs

    assert pip_installs(INSTALL_HINT) == PROJECT["optional-dependencies"]["postgres"]


def test_the_location_never_shows_the_password() -> None:
    assert display("postgresql://ann:s3cret@127.0.0.1:5433/team") == \
        "postgresql://ann@127.0.0.1:5433/team"
    assert "s3cret" not in display("host=127.0.0.1 password=s3cret dbname=team user=ann")


def test_an_idle_waiter_is_woken_by_a_put_for_its_pinion(postgres_url: str) -> None:
    """A waiter with a 10-minute timeout returns True soon after a put: it was told (a
    timeout returns False), and a put for another pinion does not wake it."""
    with PostgresBackend(postgres_url) as waiter, PostgresBackend(postgres_url) as other:
        assert waiter.wait_for_work("p1", 0.01) is False  # LISTEN begins; nothing queued
        woke: list[bool] = []
        thread = threading.Thread(target=lambda: woke.append(waiter.wait_for_work("p1", 600)),
                                  daemon=True)
        thread.start()
        other.put(make_workload("p2", seconds=1))
        other.put(make_workload("p1", seconds=2))
        thread.join(BOUND)
        assert woke == [True]
        assert waiter.claim("p1", "pin", LEASE, KEY) is not None


def test_work_queued_before_the_listen_began_is_found(postgres_url: str) -> None:
    with PostgresBackend(postgres_url) as backend:
        backend.put(make_workload("p1"))
        assert backend.wait_for_work("p1", 600) is True


def test_the_default_wait_sleeps_and_is_never_told(tmp_path: Path) -> None:
    from caliber.queue.sqlite.backend import SQLiteBackend

    with SQLiteBackend(tmp_path / "q.db") as backend:
        backend.put(make_workload("p1"))
        assert backend.wait_for_work("p1", 0.01) is False


CLAIMER = """
import json, sys
from caliber.queue.postgres.backend import PostgresBackend
backend = PostgresBackend(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
got = []
while (claim := backend.claim("p1", "claimer" + sys.argv[2], 600, "key-a")) is not None:
    got.append(claim.workload.id)
print(json.dumps(got))
"""


def test_two_upstreams_completing_at_once_queue_what_runs_after_both(
        postgres_url: str) -> None:
    """Two pinions complete the two workloads a third runs after at the same moment: neither
    sees the other's completion while it decides, yet the third is queued (the second to
    decide waits for the first's lock on it, then reads both completed). A trigger holds
    each completion 0.3 s as it commits, so the two always decide before either commits."""
    with PostgresBackend(postgres_url) as backend:
        a, b = make_workload(seconds=1), make_workload(seconds=2)
        backend.put(a)
        backend.put(b)
        c = make_workload(seconds=3)
        c.after = [a.id, b.id]
        backend.put(c)
        claims = [backend.claim("p1", "x", LEASE, KEY), backend.claim("p1", "y", LEASE, KEY)]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        _slow_commits(conn)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def complete(claim: Claim | None) -> None:
        try:
            assert claim is not None
            with PostgresBackend(postgres_url) as mine:
                start.wait()
                mine.complete(claim, make_results(claim.workload.id))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=complete, args=(claim,)) for claim in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with PostgresBackend(postgres_url) as backend:
        assert backend.get(c.id).status == WorkloadStatus.QUEUED


def test_a_workload_put_after_one_completing_at_that_moment_is_queued(
        postgres_url: str) -> None:
    """A workload is put after one whose completion is committing at that moment: the put
    waits for that commit (it locks what it runs after), so it is queued, not left waiting
    for a completion that has already happened."""
    with PostgresBackend(postgres_url) as backend:
        a = make_workload(seconds=1)
        backend.put(a)
        claim = backend.claim("p1", "x", LEASE, KEY)
        assert claim is not None
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            _slow_commits(conn)
            def complete() -> None:
                with PostgresBackend(postgres_url) as mine:
                    mine.complete(claim, make_results(a.id))

            done = threading.Thread(target=complete)
            done.start()
            until("the completion commits", lambda: conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'").fetchone())
            b = make_workload(seconds=2)
            b.after = [a.id]
            backend.put(b)
            done.join()
        assert backend.get(b.id).status == WorkloadStatus.QUEUED


def _slow_commits(conn: psycopg.Connection[object]) -> None:
    """Hold every commit that stores Results 0.3 s (a trigger deferred to the commit)."""
    conn.execute("CREATE FUNCTION caliber.slowly() RETURNS trigger LANGUAGE plpgsql AS "
                 "$$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$")
    conn.execute("CREATE CONSTRAINT TRIGGER slowly AFTER INSERT ON caliber.results "
                  "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION caliber.slowly()")


def test_processes_claiming_at_once_take_each_workload_once(postgres_url: str) -> None:
    with PostgresBackend(postgres_url) as backend:
        ids = set()
        for i in range(120):
            w = make_workload("p1", seconds=i)
            backend.put(w)
            ids.add(w.id)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, postgres_url, str(n)], cwd=REPO,
                              text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for n in range(4)]
    for proc in procs:  # all connected: then they start together
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    claimed = []
    for proc in procs:
        out, _ = proc.communicate(timeout=BOUND)
        assert proc.returncode == 0
        claimed.append(json.loads(out.strip().splitlines()[-1]))
    every = [wid for got in claimed for wid in got]
    assert sorted(every) == sorted(ids)  # each once, none left
    with PostgresBackend(postgres_url) as backend:
        assert backend.count_statuses() == {"running": 120}
        for w in backend.list_workloads():
            assert [h.message.split(" (")[0] for h in w.history].count(
                f"claimed by {w.lease.owner if w.lease else '?'}") == 1


OPENER = """
import sys
from caliber.queue.postgres.backend import PostgresBackend
sys.stdin.readline()
PostgresBackend(sys.argv[1]).close()
"""


def test_processes_opening_a_new_database_at_once_make_its_schema_once(
        postgres_url: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, postgres_url], cwd=REPO,
                              text=True, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        _, err = proc.communicate(timeout=BOUND)
        assert proc.returncode == 0, err
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM caliber.schema_version").fetchall() == [
            (SCHEMA_VERSION,)]


def _schema(url: str) -> list[tuple[object, ...]]:
    """The tables' columns and the indexes of the queue's schema."""
    with psycopg.connect(url) as conn:
        return sorted(conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "collation_name FROM information_schema.columns WHERE table_schema = 'caliber'"
        ).fetchall()) + sorted(conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'caliber'"
        ).fetchall())


def test_a_queue_of_the_first_schema_is_migrated_in_place(
        postgres_server: PostgresServer, postgres_url: str) -> None:
    """A queue made before chains (schema 1) gains them when it is next opened: its
    workloads kept, the same schema as a new queue's."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA caliber")
        conn.execute("SET search_path = caliber")
        conn.execute(MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute(
            "INSERT INTO workloads (id, pinion, workflow_name, status, created_at, secret, "
            "body) VALUES ('aaaaaaaaaa', 'p1', 'pasta', 'queued', "
            "'2030-01-01T00:00:00.000000+00:00', 's', %s)",
            (json.dumps({"workflow": {"name": "pasta"}, "attachments": []}),))
    with PostgresBackend(postgres_url) as backend:
        got = backend.get("aaaa")
        assert got.workflow_name == "pasta"
        assert (got.after, got.not_before, got.priority, got.notify) == ([], None, 0, None)
        assert backend.claim("p1", "me", LEASE, KEY) is not None
    fresh = postgres_server.create_database(f"fresh_{os.getpid()}")
    try:
        PostgresBackend(fresh).close()
        assert _schema(postgres_url) == _schema(fresh)
    finally:
        postgres_server.drop_database(f"fresh_{os.getpid()}")


def test_a_schema_written_by_a_newer_caliber_is_refused(postgres_url: str) -> None:
    PostgresBackend(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE caliber.schema_version SET version = 99")
    with pytest.raises(QueueError, match="newer Caliber"):
        PostgresBackend(postgres_url)


def test_workloads_that_had_ended_before_the_upgrade_are_not_told_again(
        postgres_server: PostgresServer, postgres_url: str) -> None:
    """A queue of schema 2 with workloads that ended (cancelled while queued, failed by
    expire, completed): after the upgrade a pinion takes none of them (their ends were told,
    or not, by the Caliber of that time); an end after the upgrade is taken. Its schema is
    then a new queue's."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA caliber")
        conn.execute("SET search_path = caliber")
        for step in MIGRATIONS[:2]:
            conn.execute(step)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (2)")
        body = json.dumps({"workflow": {"name": "pasta"}, "attachments": []})
        for wid, status in [("aaaaaaaaaa", "cancelled"), ("bbbbbbbbbb", "failed"),
                            ("cccccccccc", "completed"), ("dddddddddd", "queued")]:
            conn.execute(
                "INSERT INTO workloads (id, pinion, workflow_name, status, created_at, secret, "
                "body) VALUES (%s, 'p1', 'pasta', %s, '2030-01-01T00:00:00.000000+00:00', 's', "
                "%s)", (wid, status, body))
            conn.execute("INSERT INTO workload_history (workload_id, at, status, message) "
                         "VALUES (%s, '2030-01-01T00:00:00.000000+00:00', %s, 'as it was')",
                         (wid, status))
    with PostgresBackend(postgres_url) as backend:
        assert backend.take_ended("p1") == []
        backend.cancel("dddd", "ann@laptop")
        assert [w.id for w in backend.take_ended("p1")] == ["dddddddddd"]
    fresh = postgres_server.create_database(f"fresh_{os.getpid()}")
    try:
        PostgresBackend(fresh).close()
        assert _schema(postgres_url) == _schema(fresh)
    finally:
        postgres_server.drop_database(f"fresh_{os.getpid()}")


def test_nothing_to_tell_is_a_read_of_the_index_of_untold_ends(postgres_url: str) -> None:
    """The look a pinion makes often fits the partial index of the untold rows (the planner
    may use it: its condition implies the index's)."""
    PostgresBackend(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("SET search_path = caliber")
        conn.execute("SET enable_seqscan = off")
        plan = " ".join(str(r[0]) for r in conn.execute(
            "EXPLAIN SELECT 1 FROM workloads WHERE pinion = 'p1' AND untold IS NOT NULL "
            "LIMIT 1"))
    assert "workloads_untold" in plan, plan


def test_two_connections_taking_at_once_never_both_get_one(postgres_url: str) -> None:
    """Three pinions of one name take the untold ends at once, each on its own connection;
    every take holds its rows 0.2 s before it commits (a trigger), so the takes overlap:
    each passes over the rows another holds, and a row another took meanwhile is not taken
    again. Each end is taken once, none is left."""
    with PostgresBackend(postgres_url) as backend:
        ids = set()
        for i in range(24):
            w = make_workload(seconds=i)
            backend.put(w)
            backend.cancel(w.id, "ann@laptop")
            ids.add(w.id)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION caliber.slowly() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$")
        conn.execute("CREATE TRIGGER slowly AFTER UPDATE OF untold ON caliber.workloads "
                     "FOR EACH STATEMENT EXECUTE FUNCTION caliber.slowly()")
    start = threading.Barrier(3)
    got: list[list[str]] = [[], [], []]
    errors: list[BaseException] = []

    def take(n: int) -> None:
        try:
            with PostgresBackend(postgres_url) as mine:
                start.wait()
                while taken := mine.take_ended("p1", limit=4):
                    got[n].extend(w.id for w in taken)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    every = [wid for mine in got for wid in mine]
    assert sorted(every) == sorted(ids)  # each once, none left


def test_the_pinions_verbs_reconnect_after_a_server_restart(
        postgres_server: PostgresServer, postgres_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Claim, then the server restarts: renew reconnects; the server is down: complete waits
    for it with back-off, saying so in one line; nothing is lost."""
    with PostgresBackend(postgres_url) as backend:
        w = make_workload("p1")
        backend.put(w)
        claim = backend.claim("p1", "pin", LEASE, KEY)
        assert claim is not None
        postgres_server.restart()
        claim = backend.renew(claim, LEASE)
        postgres_server.stop()
        starter = threading.Timer(1.0, postgres_server.start)
        starter.start()
        try:
            results = make_results(w.id)
            backend.complete(claim, results)
        finally:
            starter.join()
        got = backend.get(w.id)
        assert got.status == WorkloadStatus.COMPLETED and got.results_id == results.id
        assert backend.get_results(results.id).workload_id == w.id
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 2  # one for each time the connection was lost
    assert all("lost the connection to the PostgreSQL queue" in line and "reconnecting" in line
               for line in lines)
    assert "Traceback" not in "\n".join(lines)


PINION = """
import json, sys
from caliber.pinion.api import run_pinion
from caliber.pinion.loop import PinionConfig
from caliber.queue.target import QueueTarget
target = QueueTarget(kind="postgres", location="test", settings=sys.argv[1])
summary = run_pinion(PinionConfig(name="p1", attempts=0, wait=600), target, quiet=True)
print(json.dumps(summary.to_dict()))
"""


def test_an_idle_pinion_starts_new_work_without_waiting_out_its_wait(
        postgres_url: str, tmp_path: Path) -> None:
    """A pinion that waits 10 minutes between empty looks runs a workload queued while it
    waits (told by NOTIFY): without, it would still be asleep when the bound runs out."""
    from tests.test_queue_api import make_workflow

    target = QueueTarget(kind="postgres", location="test", settings=postgres_url)
    pinion = python(PINION, postgres_url)
    try:
        def listening() -> bool:
            with psycopg.connect(postgres_url) as conn:
                return bool(conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (LISTENER,)).fetchone()[0])

        until("the pinion's LISTEN", listening)
        wid = make_workflow(tmp_path / "wf").queue(pinion="p1", target=target)
        with PostgresBackend(postgres_url) as backend:
            until("the workload's run",
                  lambda: backend.get(wid).status == WorkloadStatus.COMPLETED)
    finally:
        pinion.send_signal(signal.SIGINT)
        out, err = pinion.communicate(timeout=BOUND)
    assert pinion.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["completed"] == 1


def test_a_busy_pinion_with_a_free_slot_starts_new_work_without_waiting_out_its_wait(
        postgres_url: str, tmp_path: Path) -> None:
    """A pinion of two slots, one running a workload that waits for a file, the other free
    and waiting 10 minutes between empty looks: a workload queued meanwhile runs while the
    first still waits (told by NOTIFY, watched beside the child's pipe): without, the free
    slot would not look again before the bound runs out."""
    from tests.pinion_helpers import BLOCKING, make_folder, workflow

    target = QueueTarget(kind="postgres", location="test", settings=postgres_url)
    folder = make_folder(tmp_path / "wf", source=BLOCKING)
    release = tmp_path / "release"
    pinion = python(PINION.replace("wait=600", "wait=600, concurrency=2"), postgres_url)
    try:
        with PostgresBackend(postgres_url) as backend:
            held = workflow(folder, [("until", [str(release)])]).queue(pinion="p1",
                                                                       target=target)
            until("the first workload's run",
                  lambda: backend.get(held).status == WorkloadStatus.RUNNING)
            time.sleep(0.5)  # its free slot looked, found nothing, and waits (not measured)
            quick = workflow(folder, [("add", [1])]).queue(pinion="p1", target=target)
            until("the second workload's run",
                  lambda: backend.get(quick).status == WorkloadStatus.COMPLETED)
            assert backend.get(held).status == WorkloadStatus.RUNNING
            release.touch()
            until("the first workload's end",
                  lambda: backend.get(held).status == WorkloadStatus.COMPLETED)
    finally:
        release.touch()
        pinion.send_signal(signal.SIGINT)
        out, err = pinion.communicate(timeout=BOUND)
    assert pinion.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["completed"] == 2


def test_registry_opens_the_postgres_kind(postgres_url: str) -> None:
    from caliber.queue.registry import open_backend

    with open_backend(QueueTarget(kind="postgres", location="x",
                                  settings=postgres_url)) as backend:
        assert backend.location.startswith("postgresql://") and "@" in backend.location
    assert os.environ.get("CALIBER_HOME")  # the tests' own home, never $HOME


BIG = 200 << 20  # bytes of the big blob
BIG_BOUND = 100 << 20  # peak memory storing and fetching it stays under: well below BIG
WRAPPER = ("import resource, subprocess, sys\n"
           "code = subprocess.run(sys.argv[1:]).returncode\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(code)\n")
BLOB_ROUND_TRIP = """
import sys
from pathlib import Path
from caliber.queue.postgres.backend import PostgresBackend
with PostgresBackend(sys.argv[1]) as backend:
    ref = backend.put_blob(Path(sys.argv[2]))
    backend.fetch_blob(ref.sha256, Path(sys.argv[3]))
    print(ref.sha256, ref.size)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB: Linux")
def test_a_big_blob_streams_in_and_out_in_bounded_memory(postgres_url: str,
                                                         tmp_path: Path) -> None:
    import hashlib

    source, out = tmp_path / "big.bin", tmp_path / "out.bin"
    digest = hashlib.sha256()
    with open(source, "wb") as f:
        for i in range(BIG >> 20):
            chunk = i.to_bytes(4, "big") * (1 << 18)  # 1 MiB, each its own
            digest.update(chunk)
            f.write(chunk)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-c",
                           BLOB_ROUND_TRIP, postgres_url, str(source), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [digest.hexdigest(), str(BIG)]
    from caliber.queue.blobs import BlobRef, hash_file

    assert hash_file(out) == BlobRef(digest.hexdigest(), BIG)
    assert int(proc.stderr.split()[-1]) * 1024 < BIG_BOUND
