"""The pinion's decisions, on an in-memory queue (``memory://``): the pinion runs in this
process, its workloads' children are real processes; only the queue has no file. (The
pinion's process tests, with real pinion processes on a real queue, are elsewhere.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import caliber
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue.api import cancel
from caliber.queue.memory.backend import MemoryBackend, forget
from caliber.queue.secret import key_id, load_key
from caliber.queue.target import resolve_target
from caliber.queue.workload import WorkloadStatus
from tests.pinion_helpers import make_folder, workflow

URL = "memory://pinion-tests"


@pytest.fixture
def backend() -> Iterator[MemoryBackend]:
    with MemoryBackend("pinion-tests") as made:
        yield made
    forget("pinion-tests")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf")


def pinion(backend: MemoryBackend, **config: object) -> Pinion:
    return Pinion(PinionConfig(name="p", attempts=1, wait=0, **config),  # type: ignore[arg-type]
                  backend)


def test_a_workload_runs_and_its_results_are_kept_in_the_queue(
        backend: MemoryBackend, folder: Path) -> None:
    wid = workflow(folder, [("add", [1]), ("add", [2, 5])]).queue("p", queue=URL)
    worker = pinion(backend)
    try:
        assert worker.run_once() is True
        assert worker.run_once() is False  # nothing left
    finally:
        worker.close()
    assert worker.summary.completed == 1
    assert backend.get(wid).status == WorkloadStatus.COMPLETED
    results = caliber.get_results(wid, queue=URL)
    assert (results["add-0"], results["add-1"], results.g) == (2, 7, {"last": 7})


def test_a_workload_signed_with_another_key_is_passed_over_by_this_one(
        backend: MemoryBackend, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", "somebody-else-entirely-0123456789")
    theirs = load_key()
    wid = workflow(folder, [("add", [1])]).queue("p", queue=URL)
    monkeypatch.delenv("CALIBER_SECRET_KEY")
    worker = pinion(backend)
    try:
        assert worker.run_once() is True  # claimed, found not signed with its key, released
        assert worker.run_once() is False  # passed over from now on
    finally:
        worker.close()
    assert [i for i, _ in worker.summary.skipped] == [wid]
    stored = backend.get(wid)
    assert stored.status == WorkloadStatus.QUEUED and stored.attempts == 0
    assert stored.secret_mismatch == key_id(load_key())
    other = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend, key=theirs)
    try:
        assert other.run_once() is True
    finally:
        other.close()
    assert backend.get(wid).status == WorkloadStatus.COMPLETED


def test_a_workload_whose_pinions_keep_dying_is_failed_not_run_again(
        backend: MemoryBackend, folder: Path) -> None:
    wid = workflow(folder, [("add", [1])]).queue("p", queue=URL)
    for _ in range(2):  # two pinions claimed it and died: their leases ran out
        assert backend.claim("p", "dead", -60.0, key_id(load_key())) is not None
    worker = pinion(backend, max_attempts=2)
    try:
        assert worker.run_once() is False  # failed by expire, never claimed a third time
    finally:
        worker.close()
    stored = backend.get(wid)
    assert stored.status == WorkloadStatus.FAILED
    assert stored.last_error == "lease ran out 2 times (pinion died?)"


def test_a_cancelled_workload_is_never_run(backend: MemoryBackend, folder: Path) -> None:
    wid = workflow(folder, [("add", [1])]).queue("p", queue=URL)
    cancel(wid, resolve_target(queue=URL))
    worker = pinion(backend)
    try:
        assert worker.run_once() is False
    finally:
        worker.close()
    assert backend.get(wid).status == WorkloadStatus.CANCELLED
