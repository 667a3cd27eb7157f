"""PostgreSQL: verbs that lock several workloads (a cascade down a chain, a promotion, a put
after several) meet in one workload without deadlocking, as every one takes its rows in one
order, by id (:mod:`caliber.queue.sql.chains`). Each test runs two verbs at once on two
connections against a real server (tests/postgres_server.py), the first held half-way by a
trigger that waits for an advisory lock the test holds, until the second is blocked on a row
the first holds: then the first goes on. Taking rows in the order they are met, the two
deadlocked there each time (PostgreSQL aborts one: "deadlock detected")."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from caliber.errors import QueueStateError
from caliber.queue.workload import Workload, WorkloadStatus
from caliber.results.model import RunStatus
from tests.contract.test_backend_contract import KEY, LEASE, make_results, make_workload

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")

from caliber.queue.postgres.backend import PostgresBackend  # noqa: E402

BOUND = 60.0  # seconds a test waits for what must happen long before (never a measurement)
HOLD = 4242  # the advisory lock the trigger waits for


def until(what: str, check: Callable[[], object]) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.02)


def chained(wid: str, seconds: int, *after: str) -> Workload:
    w = make_workload(wid=wid, seconds=seconds)
    w.after = list(after)
    return w


def hold_at(conn: psycopg.Connection[object], table: str, event: str, when: str) -> None:
    """Every row ``event`` (UPDATE, INSERT) on ``table`` matching ``when`` waits, inside its
    transaction, for the advisory lock HOLD (which ``conn`` takes now)."""
    conn.execute(f"CREATE FUNCTION caliber.held() RETURNS trigger LANGUAGE plpgsql AS "
                 f"$$ BEGIN PERFORM pg_advisory_xact_lock({HOLD}); RETURN NEW; END $$")
    conn.execute(f"CREATE TRIGGER held BEFORE {event} ON caliber.{table} FOR EACH ROW "
                 f"WHEN ({when}) EXECUTE FUNCTION caliber.held()")
    conn.execute("SELECT pg_advisory_lock(%s)", (HOLD,))


def waiting_on(conn: psycopg.Connection[object], event: str) -> bool:
    """Whether a backend waits on a lock of this kind (advisory; transactionid, tuple: a row)."""
    return conn.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                        "wait_event = ANY(%s)", (event.split(),)).fetchone() is not None


def at_once(url: str, holder: psycopg.Connection[object],
            first: Callable[[PostgresBackend], object],
            second: Callable[[PostgresBackend], object]) -> list[BaseException | None]:
    """``first`` (held by the trigger) and ``second`` on two connections; once ``second`` is
    blocked on a row (or done), ``holder`` lets the hold go. What each raised (None:
    nothing)."""
    errors: list[BaseException | None] = [None, None]

    def run(n: int, verb: Callable[[PostgresBackend], object]) -> None:
        try:
            with PostgresBackend(url) as mine:
                verb(mine)
        except BaseException as exc:  # reported below
            errors[n] = exc

    with psycopg.connect(url, autocommit=True) as watch:
        one = threading.Thread(target=run, args=(0, first))
        one.start()
        until("the first verb is held", lambda: waiting_on(watch, "advisory"))
        two = threading.Thread(target=run, args=(1, second))
        two.start()
        until("the second verb meets a row the first holds",
              lambda: waiting_on(watch, "transactionid tuple") or not two.is_alive())
        holder.execute("SELECT pg_advisory_unlock(%s)", (HOLD,))
        one.join(BOUND)
        two.join(BOUND)
    return errors


def test_a_cancel_and_a_reset_cascading_into_one_workload_both_go_through(
        postgres_url: str) -> None:
    """B; C after B; A after C; D after A and B. ``cancel A`` (its cascade: D) and ``reset
    B`` (its cascade: C and D, then A) at once: the first holds A, the second C and D, and
    each would then wait for the other's."""
    with PostgresBackend(postgres_url) as backend:
        for w in (chained("b000000000", 1), chained("c000000000", 2, "b000000000"),
                  chained("a000000000", 3, "c000000000"),
                  chained("d000000000", 4, "a000000000", "b000000000")):
            backend.put(w)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        hold_at(conn, "workloads", "UPDATE",
                "OLD.id = 'a000000000' AND NEW.status = 'cancelled'")
        errors = at_once(postgres_url, conn, lambda b: b.cancel("a000000000", "ann"),
                         lambda b: b.reset("b000000000"))
    assert errors == [None, None]
    with PostgresBackend(postgres_url) as backend:
        got = {w.id: (w.status, w.last_error) for w in backend.list_workloads()}
    assert got == {
        "c000000000": (WorkloadStatus.CANCELLED, "upstream b000000000 was reset"),
        "a000000000": (WorkloadStatus.CANCELLED, "cancelled by ann"),
        "d000000000": (WorkloadStatus.CANCELLED, "upstream a000000000 was cancelled")}


@pytest.mark.parametrize("ends", ["completed", "cancelled"])
def test_a_completion_and_a_put_after_what_it_queues_or_cancels_both_go_through(
        postgres_url: str, ends: str) -> None:
    """X runs; D waits after X (D's id sorts first). X's completion (which queues D, or
    cancels it with cancelled Results) and a put of W after X and D at once: the completion
    holds X, the put D (it locks what it runs after, in id order), and each would then wait
    for the other's. The put then sees what the completion did."""
    with PostgresBackend(postgres_url) as backend:
        backend.put(chained("x000000000", 1))
        backend.put(chained("d000000000", 2, "x000000000"))
        claim = backend.claim("p1", "pin", LEASE, KEY)
        assert claim is not None and claim.workload.id == "x000000000"
    results = make_results("x000000000")
    if ends == "cancelled":
        results = results.model_copy(update={"status": RunStatus.CANCELLED})
    w = chained("w000000000", 3, "x000000000", "d000000000")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        hold_at(conn, "results", "INSERT", "true")
        errors = at_once(postgres_url, conn, lambda b: b.complete(claim, results),
                         lambda b: b.put(w))
    assert errors[0] is None
    with PostgresBackend(postgres_url) as backend:
        if ends == "completed":
            assert errors[1] is None
            assert backend.get("d000000000").status == WorkloadStatus.QUEUED
            assert backend.get(w.id).status == WorkloadStatus.WAITING  # D has not run yet
        else:
            assert isinstance(errors[1], QueueStateError), errors[1]
            assert "x000000000, which is cancelled" in str(errors[1])
            assert backend.get("d000000000").status == WorkloadStatus.CANCELLED



def test_a_failed_attempt_whose_cancel_was_asked_and_a_put_after_what_it_cancels(
        postgres_url: str) -> None:
    """X runs and was asked to cancel (its pinion has not learnt it yet); D waits after X (D's
    id sorts first). X's attempt fails with attempts left (so X is cancelled, not queued
    again, and D with it) while W is put after X and D: the put sees X cancelled."""
    with PostgresBackend(postgres_url) as backend:
        backend.put(chained("x000000000", 1))
        backend.put(chained("d000000000", 2, "x000000000"))
        claim = backend.claim("p1", "pin", LEASE, KEY)
        assert claim is not None and claim.workload.id == "x000000000"
        backend.cancel("x000000000", "ann")
    w = chained("w000000000", 3, "x000000000", "d000000000")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        hold_at(conn, "workloads", "UPDATE", "OLD.id = 'x000000000' AND NEW.status = 'queued'")
        errors = at_once(postgres_url, conn,
                         lambda b: b.fail(claim, "timed out", retry=True), lambda b: b.put(w))
    assert errors[0] is None
    assert isinstance(errors[1], QueueStateError), errors[1]
    with PostgresBackend(postgres_url) as backend:
        assert backend.get("x000000000").status == WorkloadStatus.CANCELLED
        assert backend.get("d000000000").status == WorkloadStatus.CANCELLED
