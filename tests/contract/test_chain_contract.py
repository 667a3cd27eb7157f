"""Chains, start times and priorities: the part of the backend contract that issue 24 added
(``workflow queue --after/--not-before/--priority``), run against every backend."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

from caliber.errors import NotFoundError, QueueStateError
from caliber.queue.status import WorkloadStatus
from caliber.queue.workload import Workload
from caliber.results.model import RunStatus, utcnow
from tests.contract.test_backend_contract import KEY, LEASE, make_results, make_workload

if TYPE_CHECKING:
    from caliber.queue.registry import Backend

WAITING, QUEUED = WorkloadStatus.WAITING, WorkloadStatus.QUEUED


def after(*upstream: Workload, seconds: int = 10, **fields: object) -> Workload:
    w = make_workload(seconds=seconds)
    w.after = [u.id for u in upstream]
    for name, value in fields.items():
        setattr(w, name, value)
    return w


def run(backend: Backend, expected: Workload, status: RunStatus = RunStatus.COMPLETED) -> None:
    """Claim ``expected`` (it must be the one claimed) and complete it with ``status``."""
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None and claim.workload.id == expected.id
    results = make_results(expected.id, ok=status != RunStatus.FAILED)
    if status == RunStatus.CANCELLED:
        results = results.model_copy(update={"status": RunStatus.CANCELLED})
    backend.complete(claim, results)


def status(backend: Backend, w: Workload) -> WorkloadStatus:
    return backend.get(w.id).status


def test_fields_round_trip(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    start = dt.datetime(2031, 5, 6, 22, 0, tzinfo=dt.UTC)
    b = after(a, not_before=start, priority=-3, notify="http://127.0.0.1:9/hook")
    backend.put(b)
    got = backend.get(b.id)
    assert got.after == [a.id] and got.not_before == start and got.priority == -3
    assert got.notify == "http://127.0.0.1:9/hook"
    stored = {s.id: s for s in backend.list_summaries()}[b.id]
    assert stored.after == [a.id] and stored.priority == -3
    assert stored.notify == "http://127.0.0.1:9/hook"
    assert stored.not_before is not None
    assert dt.datetime.fromisoformat(stored.not_before) == start
    plain = {s.id: s for s in backend.list_summaries()}[a.id]
    assert plain.after == [] and plain.not_before is None and plain.priority == 0
    assert plain.notify is None


def test_waits_until_its_upstream_completed(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    assert status(backend, b) == WAITING
    assert [w.id for w in backend.list_workloads(status=WAITING)] == [b.id]
    assert [s.id for s in backend.list_summaries(status=WAITING)] == [b.id]
    assert backend.count_statuses().get("waiting") == 1
    run(backend, a)
    assert status(backend, b) == QUEUED
    assert backend.count_statuses().get("waiting", 0) == 0
    run(backend, b)
    assert status(backend, b) == WorkloadStatus.COMPLETED


def test_waits_for_every_upstream(backend: Backend) -> None:
    a, b = make_workload(seconds=1), make_workload(seconds=2)
    backend.put(a)
    backend.put(b)
    c = after(a, b)
    backend.put(c)
    run(backend, a)
    assert status(backend, c) == WAITING
    run(backend, b)
    assert status(backend, c) == QUEUED


def test_after_a_completed_workload_is_queued_at_once(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    run(backend, a)
    b = after(a)
    backend.put(b)
    assert status(backend, b) == QUEUED


def test_a_failed_upstream_keeps_it_waiting_until_retried_and_completed(
        backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    run(backend, a, RunStatus.FAILED)
    assert status(backend, a) == WorkloadStatus.FAILED
    assert status(backend, b) == WAITING
    assert backend.claim("p1", "a", LEASE, KEY) is None
    backend.retry(a.id, "ann")
    run(backend, a)
    assert status(backend, b) == QUEUED


def test_a_failed_run_without_results_keeps_it_waiting(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.fail(claim, "child killed by signal 9", retry=False)
    assert status(backend, b) == WAITING
    assert backend.claim("p1", "a", LEASE, KEY) is None


def test_cancelling_an_upstream_cancels_down_the_chain(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    c = after(b, seconds=20)
    backend.put(c)
    other = make_workload(seconds=30)
    backend.put(other)
    backend.cancel(a.id, "ann")
    for w in (b, c):
        got = backend.get(w.id)
        assert got.status == WorkloadStatus.CANCELLED
        assert got.last_error is not None and "cancelled" in got.last_error
    b_error = backend.get(b.id).last_error
    c_error = backend.get(c.id).last_error
    assert b_error is not None and a.id in b_error
    assert c_error is not None and b.id in c_error
    assert status(backend, other) == QUEUED


def test_a_running_upstream_cancelled_by_its_pinion_cancels_the_chain(
        backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.cancel(a.id, "ann")
    assert status(backend, b) == WAITING  # asked, not yet stopped
    results = make_results(a.id).model_copy(update={"status": RunStatus.CANCELLED})
    backend.complete(claim, results)
    assert status(backend, a) == WorkloadStatus.CANCELLED
    got = backend.get(b.id)
    assert got.status == WorkloadStatus.CANCELLED
    assert got.last_error is not None and a.id in got.last_error


def test_resetting_an_upstream_cancels_down_the_chain(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    backend.reset(a.id)
    got = backend.get(b.id)
    assert got.status == WorkloadStatus.CANCELLED
    assert got.last_error is not None and a.id in got.last_error and "reset" in got.last_error


def test_a_waiting_workload_can_be_cancelled_itself(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    backend.cancel(b.id, "ann")
    assert status(backend, b) == WorkloadStatus.CANCELLED
    run(backend, a)
    assert status(backend, b) == WorkloadStatus.CANCELLED  # completing a wakes no cancelled one


def test_retrying_a_cancelled_chain_member(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    backend.cancel(b.id, "ann")
    backend.retry(b.id, "ann")
    assert status(backend, b) == WAITING
    run(backend, a)
    assert status(backend, b) == QUEUED
    backend.cancel(b.id, "ann")
    backend.retry(b.id, "ann")
    assert status(backend, b) == QUEUED  # its upstream completed already


def test_retry_refused_when_an_upstream_is_gone_or_cancelled(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    backend.reset(a.id)
    with pytest.raises(QueueStateError):
        backend.retry(b.id, "ann")
    assert status(backend, b) == WorkloadStatus.CANCELLED
    c = make_workload(seconds=20)
    backend.put(c)
    d = after(c, seconds=30)
    backend.put(d)
    backend.cancel(c.id, "ann")
    with pytest.raises(QueueStateError):
        backend.retry(d.id, "ann")
    assert status(backend, d) == WorkloadStatus.CANCELLED


def test_put_after_an_unknown_or_cancelled_workload_is_refused(backend: Backend) -> None:
    ghost = make_workload()
    b = after(ghost)
    with pytest.raises(NotFoundError):
        backend.put(b)
    with pytest.raises(NotFoundError):
        backend.get(b.id)
    a = make_workload(seconds=1)
    backend.put(a)
    backend.cancel(a.id, "ann")
    c = after(a, seconds=20)
    with pytest.raises(QueueStateError):
        backend.put(c)
    with pytest.raises(NotFoundError):
        backend.get(c.id)


def test_priority_orders_the_claims(backend: Backend) -> None:
    low = make_workload(seconds=1)
    low.priority = -1
    plain = make_workload(seconds=2)
    high = make_workload(seconds=3)
    high.priority = 5
    high_later = make_workload(seconds=4)
    high_later.priority = 5
    for w in (low, plain, high, high_later):
        backend.put(w)
    order = []
    while (claim := backend.claim("p1", "a", LEASE, KEY)) is not None:
        order.append(claim.workload.id)
    assert order == [high.id, high_later.id, plain.id, low.id]


def test_not_before_holds_it_back_and_next_start_says_until_when(backend: Backend) -> None:
    later = utcnow().replace(microsecond=0) + dt.timedelta(hours=1)
    soon = make_workload(seconds=1)
    soon.not_before = later
    past = make_workload(seconds=2)
    past.not_before = utcnow() - dt.timedelta(seconds=5)
    backend.put(soon)
    assert backend.claim("p1", "a", LEASE, KEY) is None
    assert backend.next_start("p1") == later
    assert backend.next_start("p2") is None
    backend.put(past)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None and claim.workload.id == past.id
    assert backend.claim("p1", "a", LEASE, KEY) is None
    assert status(backend, soon) == QUEUED


def test_next_start_counts_no_waiting_workload(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a, not_before=utcnow() + dt.timedelta(hours=2))
    backend.put(b)
    assert backend.next_start("p1") is None
    run(backend, a)
    assert backend.next_start("p1") == b.not_before


def test_prune_keeps_an_upstream_that_is_waited_for(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    run(backend, a, RunStatus.FAILED)
    pruned = backend.prune(utcnow() + dt.timedelta(days=1))
    assert a.id not in pruned.workloads
    assert status(backend, a) == WorkloadStatus.FAILED
    assert status(backend, b) == WAITING


def test_a_workload_after_a_pruned_upstream_stays_as_it_was(backend: Backend) -> None:
    """A prune of the upstream only (``--workflow``) changes nothing of what stays: on Speckle
    the upstream's versions stay while a workload after it does (its ``put`` folds against
    them), and go with it."""
    a = make_workload()
    backend.put(a)
    b = after(a, workflow={"caliber": 1, "name": "soup",
                           "process": {"type": "process", "tasks": []}})
    c = after(a, seconds=20)
    backend.put(b)
    backend.put(c)
    run(backend, a)
    run(backend, b)
    backend.cancel(c.id, "ann")  # untold: c stays, for now
    was = backend.get(b.id)
    cut = utcnow() + dt.timedelta(days=1)
    assert backend.prune(cut, workflow="pasta").workloads == (a.id,)
    now = backend.get(b.id)
    assert (now.status, now.history, now.last_error) == (was.status, was.history, None)
    assert [w.id for w in backend.take_ended("p1")] == [c.id]  # c's end is still untold
    assert backend.prune(cut, workflow="pasta").workloads == (c.id,)
    assert backend.get(b.id).status == WorkloadStatus.COMPLETED
    assert backend.prune(cut).workloads == (b.id,)
    assert backend.list_workloads() == []


def prune_both(backend: Backend) -> tuple[set[str], set[str]]:
    """(workloads, Results) a prune of everything finished removes, after checking that its
    ``dry_run`` says the same."""
    cut = utcnow() + dt.timedelta(days=1)
    would = backend.prune(cut, dry_run=True)
    went = backend.prune(cut)
    assert (set(would.workloads), set(would.results)) == (set(went.workloads),
                                                          set(went.results))
    return set(went.workloads), set(went.results)


def test_prune_keeps_an_upstream_a_queued_workload_runs_after(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a, not_before=utcnow() + dt.timedelta(days=3))  # queued, for days
    backend.put(b)
    run(backend, a)
    assert status(backend, b) == QUEUED
    results = backend.get(a.id).results_id
    assert results is not None
    assert prune_both(backend) == (set(), set())  # its pinion resolves $results from them
    assert status(backend, a) == WorkloadStatus.COMPLETED
    assert backend.get_results(results).workload_id == a.id


def test_prune_keeps_an_upstream_a_running_workload_runs_after(backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    backend.put(b)
    run(backend, a)
    results = backend.get(a.id).results_id
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None and claim.workload.id == b.id
    assert prune_both(backend) == (set(), set())
    assert backend.get_results(str(results)).workload_id == a.id
    backend.complete(claim, make_results(b.id))  # every downstream ended: it goes
    went, gone = prune_both(backend)
    assert went == {a.id, b.id} and results in gone
    with pytest.raises(NotFoundError):
        backend.get(a.id)


def test_prune_keeps_an_upstream_until_every_workload_after_it_ended(
        backend: Backend) -> None:
    a = make_workload()
    backend.put(a)
    b = after(a)
    c = after(a, seconds=20, not_before=utcnow() + dt.timedelta(days=3))
    backend.put(b)
    backend.put(c)
    run(backend, a)
    run(backend, b)
    went, _ = prune_both(backend)
    assert went == {b.id}  # c is queued after a
    backend.cancel(c.id, "ann")
    went, _ = prune_both(backend)
    assert went == {a.id}  # c's end is untold: it stays until a pinion of its name told of it
    assert [w.id for w in backend.take_ended("p1")] == [c.id]
    went, _ = prune_both(backend)
    assert went == {c.id}
