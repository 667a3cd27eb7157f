"""``restore`` (what ``caliber queue import`` adds workloads with), on every backend: a workload
comes back exactly as another queue held it, or the backend refuses it whole (ConfigError) and
holds nothing."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

from caliber.errors import ConfigError, QueueError
from caliber.queue.workload import HistoryEntry, Lease, Workload, WorkloadStatus
from tests.contract.test_backend_contract import make_workload

if TYPE_CHECKING:
    from caliber.queue.registry import Backend

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def finished_and_running() -> list[Workload]:
    done = make_workload(wid="done000000").model_copy(update={
        "status": WorkloadStatus.COMPLETED, "attempts": 2, "results_id": "res0000000",
        "secret_mismatch": "other-key",
        "history": [HistoryEntry(at=T0, status=WorkloadStatus.QUEUED, message="queued by ann"),
                    HistoryEntry(at=T0 + dt.timedelta(seconds=5), status=WorkloadStatus.RUNNING,
                                 message="claimed by p1@a (lease ran out)"),
                    HistoryEntry(at=T0 + dt.timedelta(seconds=9),
                                 status=WorkloadStatus.COMPLETED, message="results res0000000")],
    })
    running = make_workload(wid="runs000000", seconds=1).model_copy(update={
        "status": WorkloadStatus.RUNNING, "attempts": 1,
        "lease": Lease(owner="p1@b:42", token="t" * 32, expires_at=T0 + dt.timedelta(hours=1)),
        "history": [HistoryEntry(at=T0, status=WorkloadStatus.QUEUED, message="queued by ann"),
                    HistoryEntry(at=T0, status=WorkloadStatus.RUNNING, message="claimed")],
    })
    return [done, running]


def test_restore_keeps_a_workload_as_it_was_or_refuses_it_whole(backend: Backend) -> None:
    workloads = finished_and_running()
    try:
        for w in workloads:
            backend.restore(w)
    except ConfigError:
        assert backend.list_workloads() == []  # a queue that cannot take them holds nothing
        return
    for w in workloads:
        got = backend.get(w.id)
        assert got.model_dump(exclude={"progress"}) == w.model_dump(exclude={"progress"})
    with pytest.raises(QueueError):
        backend.restore(workloads[0])
    assert len(backend.list_workloads()) == 2


def ended_as(wid: str, status: WorkloadStatus, *, seconds: int = 0,
             after: list[str] | None = None) -> Workload:
    """A workload as an archive holds it: ``status``, with its history saying so."""
    return make_workload(wid=wid, seconds=seconds).model_copy(update={
        "status": status, "after": after or [],
        "history": [HistoryEntry(at=T0, status=status, message=f"as exported: {status}")]})


def test_a_restored_waiting_workload_goes_on_with_its_chain_as_this_queue_stands(
        backend: Backend) -> None:
    """Restored waiting, it is queued when every workload it runs after has completed here
    (else it would wait for ever: no completion is still to come), cancelled when one is
    cancelled, and waits on while one has not ended; whichever of them is restored first."""
    try:
        backend.restore(ended_as("upa0000000", WorkloadStatus.COMPLETED))
    except ConfigError:
        pytest.skip("this queue takes no imported workloads")
    backend.restore(ended_as("upb0000000", WorkloadStatus.COMPLETED, seconds=1))
    backend.restore(ended_as("upc0000000", WorkloadStatus.CANCELLED, seconds=2))
    backend.restore(ended_as("upd0000000", WorkloadStatus.QUEUED, seconds=3))
    ready = ended_as("wa10000000", WorkloadStatus.WAITING, seconds=4,
                     after=["upa0000000", "upb0000000"])
    doomed = ended_as("wa20000000", WorkloadStatus.WAITING, seconds=5,
                      after=["upa0000000", "upc0000000"])
    waits = ended_as("wa30000000", WorkloadStatus.WAITING, seconds=6,
                     after=["upa0000000", "upd0000000"])
    below = ended_as("wa40000000", WorkloadStatus.WAITING, seconds=7, after=["wa20000000"])
    for w in (below, ready, doomed, waits):  # the one after doomed first: cancelled with it
        backend.restore(w)
    got = {w.id: backend.get(w.id) for w in (ready, doomed, waits, below)}
    assert got[ready.id].status == WorkloadStatus.QUEUED
    assert got[ready.id].history[-1].status == WorkloadStatus.QUEUED
    assert "completed" in got[ready.id].history[-1].message
    assert got[doomed.id].status == WorkloadStatus.CANCELLED
    assert got[doomed.id].last_error == "upstream upc0000000 was cancelled"
    assert got[below.id].status == WorkloadStatus.CANCELLED
    assert got[below.id].last_error == "upstream wa20000000 was cancelled"
    assert got[waits.id].status == WorkloadStatus.WAITING
    # ended here with no pinion there: told by a pinion of their name (the imported upc0000000
    # had ended where it came from, and was told there)
    assert sorted(w.id for w in backend.take_ended("p1")) == sorted([doomed.id, below.id])
    claim = backend.claim("p1", "pin", 60, "k")
    assert claim is not None and claim.workload.id == "upd0000000"
    claim = backend.claim("p1", "pin", 60, "k")
    assert claim is not None and claim.workload.id == ready.id


def test_a_restored_upstream_goes_on_with_those_restored_waiting_before_it(
        backend: Backend) -> None:
    """An archive's order need not put an upstream first: a workload restored waiting for
    one not there yet is queued when it comes completed, cancelled when it comes cancelled."""
    first = ended_as("wa10000000", WorkloadStatus.WAITING, after=["upa0000000"])
    second = ended_as("wa20000000", WorkloadStatus.WAITING, seconds=1, after=["upb0000000"])
    try:
        backend.restore(first)
    except ConfigError:
        pytest.skip("this queue takes no imported workloads")
    backend.restore(second)
    assert backend.get(first.id).status == WorkloadStatus.WAITING
    backend.restore(ended_as("upa0000000", WorkloadStatus.COMPLETED, seconds=2))
    backend.restore(ended_as("upb0000000", WorkloadStatus.CANCELLED, seconds=3))
    assert backend.get(first.id).status == WorkloadStatus.QUEUED
    assert backend.get(second.id).status == WorkloadStatus.CANCELLED
    assert backend.get(second.id).last_error == "upstream upb0000000 was cancelled"
