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
