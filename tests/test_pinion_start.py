"""A pinion and start times (``--not-before``), on an in-memory queue: an idle pinion, or one
with a free slot, looks again at the next start time of its workloads instead of its next
``-w`` look; one that stops after its empty looks says what starts later. The pinion runs in
a thread of this process (its workloads' children are real processes); the same on the local
queue with real pinion processes is in tests/test_pinion_start_processes.py.

Ordering only: a workload starts no earlier than its start time, and before the look that
``-w`` would have made (``wait`` is 60 s, so that look is far off).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from caliber.pinion.loop import Pinion, PinionConfig, Summary
from caliber.queue.api import make_workload
from caliber.queue.memory.backend import MemoryBackend, forget
from caliber.queue.secret import load_key, sign
from caliber.queue.workload import Workload, WorkloadStatus
from caliber.results.model import utcnow
from tests.pinion_helpers import BLOCKING, make_folder, wait_for, workflow

WAIT = 60.0  # seconds between looks: the look -w would make is far off

@pytest.fixture
def backend() -> Iterator[MemoryBackend]:
    with MemoryBackend("pinion-start") as made:
        yield made
    forget("pinion-start")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf", source=BLOCKING)


def put(backend: MemoryBackend, folder: Path, tasks: list[tuple[str, list[Any]]],
        **plan: Any) -> Workload:
    """A workload of ``tasks`` with its plan fields (``not_before``, ``after``...), signed
    with them, put in the queue."""
    workload = make_workload(workflow(folder, tasks), "p", backend)
    for name, value in plan.items():
        setattr(workload, name, value)
    workload.secret = sign(workload, load_key())
    backend.put(workload)
    return workload


def started_at(backend: MemoryBackend, workload_id: str) -> dt.datetime:
    """When a pinion claimed the workload (its first running history entry)."""
    return next(h.at for h in backend.get(workload_id).history
                if h.status == WorkloadStatus.RUNNING)


class Running:
    """A pinion run in a thread, stopped warm (as by one Ctrl-C) at the end."""

    def __init__(self, backend: MemoryBackend, **config: Any) -> None:
        self.pinion = Pinion(PinionConfig(name="p", **config), backend)
        self.summary: Summary | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.summary = self.pinion.run()

    def stop(self) -> Summary:
        self.pinion.flags.request("SIGINT")
        self.thread.join(30)
        assert not self.thread.is_alive() and self.summary is not None
        return self.summary


def completed(backend: MemoryBackend, workload_id: str) -> bool:
    return backend.get(workload_id).status == WorkloadStatus.COMPLETED


def test_an_idle_pinion_starts_a_workload_at_its_start_time(
        backend: MemoryBackend, folder: Path) -> None:
    start = utcnow() + dt.timedelta(seconds=1.5)
    w = put(backend, folder, [("add", [1])], not_before=start)
    before = utcnow()
    worker = Running(backend, attempts=0, wait=WAIT)
    try:
        wait_for(lambda: completed(backend, w.id), what="the workload to complete")
    finally:
        summary = worker.stop()
    assert summary.completed == 1
    assert start <= started_at(backend, w.id) < before + dt.timedelta(seconds=WAIT)


def test_a_pinion_with_a_free_slot_starts_a_workload_at_its_start_time(
        backend: MemoryBackend, folder: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    busy = put(backend, folder, [("until", [str(release)])])
    start = utcnow() + dt.timedelta(seconds=1.5)
    later = put(backend, folder, [("add", [1])], not_before=start)
    before = utcnow()
    worker = Running(backend, attempts=0, wait=WAIT, concurrency=2)
    try:
        wait_for(lambda: completed(backend, later.id), what="the later workload to complete")
        assert backend.get(busy.id).status == WorkloadStatus.RUNNING  # its slot still busy
        release.touch()
        wait_for(lambda: completed(backend, busy.id), what="the first workload to complete")
    finally:
        release.touch()
        summary = worker.stop()
    assert summary.completed == 2
    assert start <= started_at(backend, later.id) < before + dt.timedelta(seconds=WAIT)


def test_the_earliest_start_time_wakes_it(backend: MemoryBackend, folder: Path) -> None:
    first = utcnow() + dt.timedelta(seconds=1)
    w1 = put(backend, folder, [("add", [1])], not_before=first)
    w2 = put(backend, folder, [("add", [2])], not_before=first + dt.timedelta(seconds=1))
    before = utcnow()
    worker = Running(backend, attempts=0, wait=WAIT)
    try:
        wait_for(lambda: completed(backend, w2.id), what="the second workload to complete")
    finally:
        worker.stop()
    assert first <= started_at(backend, w1.id) < started_at(backend, w2.id)
    assert w2.not_before is not None and w2.not_before <= started_at(backend, w2.id)
    assert started_at(backend, w2.id) < before + dt.timedelta(seconds=WAIT)


def test_a_draining_pinion_stops_and_says_what_starts_later(
        backend: MemoryBackend, folder: Path) -> None:
    start = (utcnow() + dt.timedelta(hours=3)).replace(microsecond=0)
    now = put(backend, folder, [("add", [1])])
    put(backend, folder, [("add", [2])], after=[now.id])
    put(backend, folder, [("add", [3])], not_before=start + dt.timedelta(hours=1))
    at_start = put(backend, folder, [("add", [4])], not_before=start)
    put(backend, folder, [("add", [5])], after=[at_start.id])
    summary = Pinion(PinionConfig(name="p", attempts=2, wait=0), backend).run()
    assert (summary.ran, summary.completed) == (2, 2)  # 'now', then the one after it
    assert (summary.later, summary.next_start, summary.chained) == (2, start, 1)
    assert summary.to_dict()["next_start"] == start.isoformat()


def test_a_pinion_that_stops_with_nothing_later_says_nothing_of_it(
        backend: MemoryBackend, folder: Path) -> None:
    put(backend, folder, [("add", [1])])
    put(backend, folder, [("add", [2])], not_before=utcnow() - dt.timedelta(minutes=1))
    summary = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend).run()
    assert summary.completed == 2
    assert (summary.later, summary.next_start, summary.chained) == (0, None, 0)
