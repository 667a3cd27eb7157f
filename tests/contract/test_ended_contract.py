"""The workloads that ended last, latest end first (``QueueBackend.list_ended``: the
dashboard's ended list and its events), run against every backend: by when each ended,
never by when it was queued, with or without Results."""

from __future__ import annotations

from typing import TYPE_CHECKING

from caliber.results.model import RunStatus
from tests.contract.test_backend_contract import make_workload
from tests.contract.test_chain_contract import after, run

if TYPE_CHECKING:
    from caliber.queue.registry import Backend


def ended(backend: Backend, limit: int = 10) -> list[tuple[str, str]]:
    return [(w.id, w.status.value) for w in backend.list_ended(limit)]


def test_nothing_ended_nothing_listed(backend: Backend) -> None:
    assert backend.list_ended(10) == []
    backend.put(make_workload())
    assert backend.list_ended(10) == []


def test_the_workload_that_ended_last_comes_first_however_old(backend: Backend) -> None:
    old = make_workload("p2", seconds=0)  # queued first, for a pinion that never came
    a, b, c, d = (make_workload(seconds=s) for s in (1, 2, 3, 4))
    for w in (old, a, b, c, d):
        backend.put(w)
    run(backend, a)
    backend.cancel(c.id, "ann@laptop")
    run(backend, b, RunStatus.FAILED)
    backend.cancel(old.id, "ann@laptop")  # ended last, without Results: first
    assert ended(backend) == [(old.id, "cancelled"), (b.id, "failed"),
                              (c.id, "cancelled"), (a.id, "completed")]  # d is queued
    assert ended(backend, 2) == [(old.id, "cancelled"), (b.id, "failed")]
    assert backend.list_ended(0) == []
    first = backend.list_ended(1)[0]  # the whole workload, as get() gives it
    assert first.history[-1].status.value == "cancelled"
    assert first.last_error is not None and "ann@laptop" in first.last_error


def test_a_retried_workload_is_listed_by_its_last_end_only(backend: Backend) -> None:
    a, b = make_workload(seconds=1), make_workload(seconds=2)
    backend.put(a)
    backend.put(b)
    backend.cancel(a.id, "ann@laptop")
    backend.cancel(b.id, "ann@laptop")
    assert ended(backend) == [(b.id, "cancelled"), (a.id, "cancelled")]
    backend.retry(a.id, "ann@laptop")
    assert ended(backend) == [(b.id, "cancelled")]  # queued again: it has not ended
    run(backend, a, RunStatus.FAILED)
    assert ended(backend) == [(a.id, "failed"), (b.id, "cancelled")]  # once, its new end
    backend.reset(b.id)
    assert ended(backend) == [(a.id, "failed")]


def test_a_chain_cancelled_with_its_upstream_is_listed(backend: Backend) -> None:
    up = make_workload(seconds=1)
    backend.put(up)
    down = after(up, seconds=2)
    backend.put(down)
    backend.cancel(up.id, "ann@laptop")
    assert sorted(ended(backend)) == sorted([(up.id, "cancelled"), (down.id, "cancelled")])
