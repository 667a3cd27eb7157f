"""Every end of a workload is told once: the part of the backend contract behind
notifications of workloads that ended with no pinion there (``QueueBackend.take_ended``),
run against every backend."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

from caliber.errors import ConfigError
from caliber.queue.status import WorkloadStatus
from caliber.queue.workload import HistoryEntry
from caliber.results.model import RunStatus
from tests.contract.test_backend_contract import (
    KEY,
    LEASE,
    RAN_OUT,
    make_results,
    make_workload,
)
from tests.contract.test_chain_contract import after, run

if TYPE_CHECKING:
    from caliber.queue.registry import Backend
    from caliber.queue.workload import Workload

CANCELLED, FAILED = WorkloadStatus.CANCELLED, WorkloadStatus.FAILED
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def taken(backend: Backend, pinion: str = "p1", limit: int = 100) -> list[tuple[str, str]]:
    return [(w.id, w.status.value) for w in backend.take_ended(pinion, limit)]


def put(backend: Backend, *workloads: Workload) -> None:
    for w in workloads:
        backend.put(w)


def test_nothing_to_tell_in_a_queue_where_nothing_ended(backend: Backend) -> None:
    assert backend.take_ended("p1") == []
    put(backend, make_workload())
    assert backend.take_ended("p1") == []


def test_a_workload_cancelled_while_queued_is_told_once(backend: Backend) -> None:
    a, b = make_workload(seconds=1), make_workload(seconds=2)
    put(backend, a, b)
    backend.cancel(a.id, "ann@laptop")
    got = backend.take_ended("p1")
    assert [(w.id, w.status) for w in got] == [(a.id, CANCELLED)]
    assert got[0].last_error is not None and "ann@laptop" in got[0].last_error
    assert got[0].history[-1].status == CANCELLED  # the whole workload, as get() gives it
    assert backend.take_ended("p1") == []  # told: never again
    assert backend.get(a.id).status == CANCELLED and backend.get(b.id).status.value == "queued"


def test_what_a_pinion_ended_itself_is_never_taken(backend: Backend) -> None:
    ok, bad, gone = make_workload(seconds=1), make_workload(seconds=2), make_workload(seconds=3)
    put(backend, ok, bad, gone)
    run(backend, ok)
    run(backend, bad, RunStatus.FAILED)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None and claim.workload.id == gone.id
    backend.fail(claim, "the child was killed", retry=False)
    assert backend.get(gone.id).status == FAILED
    assert backend.take_ended("p1") == []


def test_a_running_workload_cancelled_is_told_by_its_pinion(backend: Backend) -> None:
    w = make_workload()
    put(backend, w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.cancel(w.id, "ann@laptop")
    assert backend.take_ended("p1") == []  # asked only: it runs on
    results = make_results(w.id).model_copy(update={"status": RunStatus.CANCELLED})
    backend.complete(claim, results)
    assert backend.get(w.id).status == CANCELLED
    assert backend.take_ended("p1") == []  # its pinion ended it, and tells


def test_a_chain_cancelled_behind_a_cancel_or_a_cancelled_run(backend: Backend) -> None:
    a = make_workload(seconds=1)
    put(backend, a)
    b = after(a, seconds=2)
    put(backend, b)
    c = after(b, seconds=3)
    put(backend, c)
    backend.cancel(a.id, "ann@laptop")
    assert sorted(taken(backend)) == sorted(
        [(a.id, "cancelled"), (b.id, "cancelled"), (c.id, "cancelled")])
    assert backend.get(c.id).last_error == f"upstream {b.id} was cancelled"

    x = make_workload(seconds=4)
    put(backend, x)
    y = after(x, seconds=5)
    put(backend, y)
    run(backend, x, RunStatus.CANCELLED)  # its pinion tells of x; y ended with no pinion
    assert taken(backend) == [(y.id, "cancelled")]


def test_a_chain_cancelled_behind_a_reset(backend: Backend) -> None:
    a = make_workload(seconds=1)
    put(backend, a)
    b = after(a, seconds=2)
    put(backend, b)
    backend.reset(a.id)
    assert taken(backend) == [(b.id, "cancelled")]  # a is gone: nothing to tell of it


def test_only_the_pinion_it_was_queued_for_takes_it(backend: Backend) -> None:
    a = make_workload(seconds=1)
    put(backend, a)
    other = after(a, seconds=2)
    other.pinion = "p2"
    put(backend, other)
    backend.cancel(a.id, "ann@laptop")
    assert taken(backend, "p2") == [(other.id, "cancelled")]
    assert taken(backend, "p1") == [(a.id, "cancelled")]
    assert taken(backend, "p2") == [] and taken(backend, "p1") == []


def test_a_workload_failed_by_expire_is_taken(backend: Backend) -> None:
    w = make_workload()
    put(backend, w)
    claim = backend.claim("p1", "dead", RAN_OUT, KEY)
    assert claim is not None
    assert backend.take_ended("p1") == []  # running, its lease ran out: not ended yet
    assert backend.expire(max_attempts=1) == [w.id]
    got = backend.take_ended("p1")
    assert [(x.id, x.status) for x in got] == [(w.id, FAILED)]
    assert backend.take_ended("p1") == []


def test_a_retried_workload_is_told_again_when_it_ends_again(backend: Backend) -> None:
    w = make_workload()
    put(backend, w)
    backend.cancel(w.id, "ann@laptop")
    assert taken(backend) == [(w.id, "cancelled")]
    backend.retry(w.id, "ann@laptop")
    assert backend.take_ended("p1") == []  # queued again: not ended
    backend.cancel(w.id, "bob@desk")
    got = backend.take_ended("p1")
    assert [(x.id, x.status) for x in got] == [(w.id, CANCELLED)]
    assert got[0].last_error is not None and "bob@desk" in got[0].last_error

    run_once = make_workload(seconds=9)  # ended by its pinion, retried, cancelled while queued
    put(backend, run_once)
    run(backend, run_once, RunStatus.FAILED)
    backend.retry(run_once.id, "ann@laptop")
    backend.cancel(run_once.id, "ann@laptop")
    assert taken(backend) == [(run_once.id, "cancelled")]


def test_limit_takes_the_oldest_ends_first_and_leaves_the_rest(backend: Backend) -> None:
    ws = [make_workload(seconds=i) for i in range(5)]
    put(backend, *ws)
    for w in reversed(ws):  # ended newest-created first: the order is by end, not creation
        backend.cancel(w.id, "ann@laptop")
    first = taken(backend, limit=2)
    assert first == [(ws[4].id, "cancelled"), (ws[3].id, "cancelled")]
    rest = taken(backend)
    assert rest == [(ws[2].id, "cancelled"), (ws[1].id, "cancelled"), (ws[0].id, "cancelled")]
    assert taken(backend) == []


def test_a_restored_workload_that_had_ended_counts_as_told(backend: Backend) -> None:
    ended = make_workload(wid="gone000000").model_copy(update={
        "status": CANCELLED, "last_error": "cancelled by ann@laptop",
        "history": [HistoryEntry(at=T0, status=WorkloadStatus.QUEUED, message="queued by ann"),
                    HistoryEntry(at=T0, status=CANCELLED, message="cancelled by ann@laptop")]})
    try:
        backend.restore(ended)
    except ConfigError:
        pytest.skip("this queue takes no imported workloads")
    assert backend.get(ended.id).status == CANCELLED
    assert backend.take_ended("p1") == []  # told by the queue it was exported from
