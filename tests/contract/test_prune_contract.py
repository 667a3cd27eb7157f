"""The contract of ``prune`` (``caliber results prune``), run against every backend (see
conftest): what goes, what stays, and that a dry run changes nothing.

Ages are set by the cut, never by waiting: a cut an hour ahead takes every finished
workload, a cut an hour back none of them (but old Results of no workload)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

from caliber.errors import NotFoundError
from caliber.queue.workload import WorkloadStatus
from tests.contract.test_backend_contract import KEY, LEASE, make_results, make_workload

if TYPE_CHECKING:
    from caliber.queue.registry import Backend
    from caliber.queue.workload import Workload

HOUR = dt.timedelta(hours=1)
LONG_AGO = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def finish(backend: Backend, w: Workload, *, ok: bool = True, old: bool = False) -> str:
    """Run ``w`` to its end (it must be the oldest queued of p1); its Results id."""
    backend.put(w)
    claim = backend.claim("p1", "pin", LEASE, KEY)
    assert claim is not None and claim.workload.id == w.id
    results = make_results(w.id, ok=ok)
    if old:  # Results that say they finished long ago; the workload's last change is now
        results = results.model_copy(update={"started_at": LONG_AGO, "finished_at": LONG_AGO})
    backend.complete(claim, results)
    return results.id


@pytest.fixture
def queue(backend: Backend) -> dict[str, str]:
    """Two finished workloads (one failed), a running one, a queued one, and Results of no
    workload: one old, one new. Returns name -> id."""
    ids = {"done": make_workload(seconds=1), "failed": make_workload(seconds=2),
           "running": make_workload(seconds=3), "queued": make_workload(seconds=4)}
    out = {name: w.id for name, w in ids.items()}
    out["done_results"] = finish(backend, ids["done"])
    out["failed_results"] = finish(backend, ids["failed"], ok=False, old=True)
    backend.put(ids["running"])
    assert backend.claim("p1", "pin", LEASE, KEY) is not None
    backend.put(ids["queued"])
    old, new = make_results(None), make_results(None)
    old = old.model_copy(update={"started_at": LONG_AGO, "finished_at": LONG_AGO})
    backend.save_results(old)
    backend.save_results(new)
    out["old_orphan"], out["new_orphan"] = old.id, new.id
    return out


def state(backend: Backend) -> tuple[list[tuple[str, str, int]], list[str]]:
    """Every workload (id, status, history length) and every Results id."""
    workloads = [(w.id, w.status.value, len(w.history)) for w in backend.list_workloads()]
    return workloads, sorted(r.id for r in backend.list_results())


def test_prune_takes_finished_work_and_its_results_never_live_work(
        backend: Backend, queue: dict[str, str]) -> None:
    pruned = backend.prune(now() + HOUR)
    assert set(pruned.workloads) == {queue["done"], queue["failed"]}
    assert set(pruned.results) == {queue["done_results"], queue["failed_results"],
                                   queue["old_orphan"], queue["new_orphan"]}
    assert not pruned.dry_run
    left = {w.id: w.status for w in backend.list_workloads()}
    assert left == {queue["running"]: WorkloadStatus.RUNNING,
                    queue["queued"]: WorkloadStatus.QUEUED}
    assert backend.list_results() == []
    with pytest.raises(NotFoundError):
        backend.get(queue["done"])
    with pytest.raises(NotFoundError):
        backend.get_results(queue["done_results"])
    assert backend.find_results(workload_id=queue["failed"]) is None
    # what stays still works: the running workload completes, the queued one is claimed
    assert backend.claim("p1", "pin", LEASE, KEY) is not None
    assert backend.prune(now() + HOUR).workloads == ()  # running work is never pruned


def test_results_of_a_workload_that_stays_are_kept_however_old(
        backend: Backend, queue: dict[str, str]) -> None:
    """A failed workload finished now keeps its Results, though they say they finished long
    ago: a later retry --resume needs them. Only Results of no workload go by their age."""
    pruned = backend.prune(now() - HOUR)
    assert pruned.workloads == ()
    assert pruned.results == (queue["old_orphan"],)
    assert backend.get_results(queue["failed_results"]).workload_id == queue["failed"]
    assert backend.find_results(workload_id=queue["failed"]) is not None
    assert len(backend.list_workloads()) == 4


def test_prune_filters_by_workflow_and_pinion(backend: Backend, queue: dict[str, str]) -> None:
    assert backend.prune(now() + HOUR, workflow="soup").workloads == ()
    assert backend.prune(now() + HOUR, pinion="p2").workloads == ()
    pruned = backend.prune(now() + HOUR, workflow="pasta", pinion="p1")
    assert set(pruned.workloads) == {queue["done"], queue["failed"]}


def test_dry_run_changes_nothing(backend: Backend, queue: dict[str, str]) -> None:
    before = state(backend)
    seen = backend.prune(now() + HOUR, dry_run=True)
    assert seen.dry_run
    assert set(seen.workloads) == {queue["done"], queue["failed"]}
    assert len(seen.results) == 4
    assert state(backend) == before
    done = backend.prune(now() + HOUR)
    assert (set(done.workloads), set(done.results)) == (set(seen.workloads), set(seen.results))
    assert done.versions == seen.versions


def test_prune_of_nothing(backend: Backend) -> None:
    pruned = backend.prune(now())
    assert (pruned.workloads, pruned.results, pruned.versions) == ((), (), 0)


def test_a_workload_whose_end_is_untold_stays_until_a_pinion_takes_it(
        backend: Backend) -> None:
    """Every end is told once: a workload that ended with no pinion there (cancelled while
    queued, down a chain) stays, with its Results, however old, until a pinion of its name has
    taken it (``take_ended``); then it goes as any other, and the dry run says the same."""
    retried = make_workload(seconds=1)
    results = finish(backend, retried, ok=False)  # Results of its first attempt
    backend.retry(retried.id, "ann@laptop")
    backend.cancel(retried.id, "ann@laptop")  # cancelled while queued: untold
    up, down = make_workload(seconds=2), make_workload(seconds=3)
    down.after = [up.id]
    backend.put(up)
    backend.put(down)
    backend.cancel(up.id, "ann@laptop")  # and `down` with it, down the chain: untold
    before = state(backend)
    for dry_run in (True, False):
        kept = backend.prune(now() + HOUR, dry_run=dry_run)
        assert (kept.workloads, kept.results) == ((), ())
    assert state(backend) == before
    assert backend.get_results(results).workload_id == retried.id

    assert [w.id for w in backend.take_ended("p1", limit=1)] == [retried.id]  # oldest end
    seen = backend.prune(now() + HOUR, dry_run=True)
    assert (seen.workloads, seen.results) == ((retried.id,), (results,))
    assert state(backend) == before
    pruned = backend.prune(now() + HOUR)
    assert (pruned.workloads, pruned.results) == ((retried.id,), (results,))
    with pytest.raises(NotFoundError):
        backend.get(retried.id)
    assert {w.id for w in backend.list_workloads()} == {up.id, down.id}

    assert {w.id for w in backend.take_ended("p1")} == {up.id, down.id}
    assert set(backend.prune(now() + HOUR).workloads) == {up.id, down.id}
    assert backend.list_workloads() == []
