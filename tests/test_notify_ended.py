"""Every end of a workload is told once, the ends no pinion was there for too (cancelled while
queued or waiting, down a chain, failed by ``expire``): a pinion of the workload's name takes
them (``QueueBackend.take_ended``) and tells of them as of its own, on an in-memory queue (the
pinion in this process, its children real; a real local HTTP server as the hook)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from caliber.errors import QueueError
from caliber.pinion import loop, notify
from caliber.pinion.loop import Pinion, PinionConfig, Summary
from caliber.pinion.notify import event
from caliber.queue.memory.backend import MemoryBackend, forget
from caliber.queue.secret import key_id, load_key
from caliber.queue.workload import Workload, WorkloadStatus
from tests.pinion_helpers import BLOCKING, make_folder, wait_for
from tests.test_notify import Hook

NAME = "announce-tests"
T0 = dt.datetime(2026, 12, 6, 22, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "BACKOFF", (0.01,))
    monkeypatch.setattr(notify, "TIMEOUT", 2.0)


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def memory() -> Iterator[MemoryBackend]:
    with MemoryBackend(NAME) as made:
        yield made
    forget(NAME)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf", source=BLOCKING)


def put(backend: MemoryBackend, folder: Path, tasks: list[tuple[str, list[Any]]], *,
        name: str = "analysis", after: list[str] | None = None, notify: str | None = None,
        signed: bool = True) -> str:
    """A workload for pinion 'night' (with its own address ``notify``: signed with it, or
    changed after it was signed, ``signed=False``)."""
    from caliber.queue.api import make_workload
    from caliber.queue.secret import sign
    from tests.pinion_helpers import workflow

    workload = make_workload(workflow(folder, tasks, name=name), "night", backend,
                             after=after or [])
    workload.notify = notify
    if signed:
        workload.secret = sign(workload, load_key())
    backend.put(workload)
    return workload.id


def drain(backend: MemoryBackend) -> Summary:
    return Pinion(PinionConfig(name="night", attempts=1, wait=0), backend).run()


def told(hook: Hook) -> list[tuple[str, str]]:
    return [(b["caliber"]["id"], b["caliber"]["status"]) for b in hook.bodies]


def test_a_workload_cancelled_while_queued_is_told_once_by_the_next_pinion(
        memory: MemoryBackend, folder: Path, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
    gone = put(memory, folder, [("add", [1])])
    memory.cancel(gone, "ann@laptop")
    assert drain(memory).ran == 0
    assert told(hook) == [(gone, "cancelled")]
    assert hook.bodies[0]["text"] == (f"Caliber: analysis ({gone}) cancelled before it ran "
                                      "(queued for pinion night): cancelled by ann@laptop")
    drain(memory)  # the next pinion of that name: told already
    assert told(hook) == [(gone, "cancelled")]


def test_a_chain_cancelled_behind_a_run_its_pinion_cancelled(
        memory: MemoryBackend, folder: Path, hook: Hook, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinion tells of the run it ended cancelled; the two waiting after it were cancelled
    by that end, with no pinion of theirs there: told once each all the same."""
    monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
    release = tmp_path / "release"
    up = put(memory, folder, [("until", [str(release)]), ("add", [1])])
    down = put(memory, folder, [("add", [2])], name="post", after=[up])
    last = put(memory, folder, [("add", [3])], name="report", after=[down])

    def cancel_while_it_runs() -> None:
        wait_for(lambda: memory.get(up).status == WorkloadStatus.RUNNING, what="the run")
        memory.cancel(up, "ann@laptop", now=True)  # its task is stopped: it never completes

    canceller = threading.Thread(target=cancel_while_it_runs, daemon=True)
    canceller.start()
    try:
        assert drain(memory).cancelled == 1
    finally:
        release.touch()
        canceller.join(30)
    assert sorted(told(hook)) == sorted([(up, "cancelled"), (down, "cancelled"),
                                         (last, "cancelled")])
    assert next(b for b in hook.bodies if b["caliber"]["id"] == down)["text"].endswith(
        f"cancelled before it ran (queued for pinion night): upstream {up} was cancelled")


def test_a_busy_pinion_tells_while_its_workload_runs(
        memory: MemoryBackend, folder: Path, hook: Hook, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
    monkeypatch.setattr(loop, "ANNOUNCE_EVERY", 0.05)
    release = tmp_path / "release"
    running = put(memory, folder, [("until", [str(release)])])
    gone = put(memory, folder, [("add", [1])])
    seen: list[str] = []

    def cancel_while_busy() -> None:
        try:
            wait_for(lambda: memory.get(running).status == WorkloadStatus.RUNNING,
                     what="the run")
            memory.cancel(gone, "ann@laptop")
            wait_for(lambda: hook.bodies, what="the cancelled one's POST")
            seen.append(memory.get(running).status.value)  # told before the run ended
        finally:
            release.touch()

    teller = threading.Thread(target=cancel_while_busy, daemon=True)
    teller.start()
    try:
        assert drain(memory).completed == 1
    finally:
        release.touch()
        teller.join(30)
    assert seen == ["running"]
    assert told(hook) == [(gone, "cancelled"), (running, "completed")]


def test_with_no_channel_set_its_own_signed_address_is_told_and_nothing_later(
        memory: MemoryBackend, folder: Path, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pinion with no notify settings takes the ended workloads all the same: one with its
    own signed address is told there; one with none is told nowhere, and not later when the
    settings get a URL; an address changed in the queue without the key is never posted to."""
    own, theirs = Hook(), Hook()
    try:
        mine = put(memory, folder, [("add", [1])], notify=own.url)
        plain = put(memory, folder, [("add", [2])])
        forged = put(memory, folder, [("add", [3])], notify=theirs.url, signed=False)
        for wid in (mine, plain, forged):
            memory.cancel(wid, "ann@laptop")
        drain(memory)
        assert told(own) == [(mine, "cancelled")] and theirs.bodies == []
        monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
        drain(memory)
        assert hook.bodies == []  # taken already, by the pinion without a channel
    finally:
        own.close()
        theirs.close()


def test_a_workload_failed_by_expire_is_told_as_its_pinion_stopping(
        memory: MemoryBackend, folder: Path, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
    wid = put(memory, folder, [("add", [1])])
    assert memory.claim("night", "dead", -60.0, key_id(load_key())) is not None
    summary = Pinion(PinionConfig(name="night", attempts=1, wait=0, max_attempts=1),
                     memory).run()
    assert summary.ran == 0
    assert told(hook) == [(wid, "failed")]
    assert hook.bodies[0]["text"] == (
        f"Caliber: analysis ({wid}) failed on pinion night, which stopped answering while it "
        "ran: lease ran out 1 times (pinion died?)")


def test_many_ends_are_taken_in_batches_each_once(
        memory: MemoryBackend, folder: Path, hook: Hook,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
    monkeypatch.setattr(loop, "ANNOUNCE_BATCH", 2)
    ids = [put(memory, folder, [("add", [i])]) for i in range(5)]
    for wid in ids:
        memory.cancel(wid, "ann@laptop")
    drain(memory)
    assert told(hook) == [(wid, "cancelled") for wid in ids]  # oldest end first


class Unreachable(MemoryBackend):
    """A memory queue whose take_ended fails as a queue out of reach does."""

    def take_ended(self, pinion: str, limit: int = 100) -> list[Workload]:
        raise QueueError("cannot reach the queue: connection refused")


def test_a_queue_that_cannot_give_them_costs_a_line_not_the_pinion(
        folder: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
    try:
        backend = Unreachable(NAME)
        wid = put(backend, folder, [("add", [1])])
        assert drain(backend).completed == 1
    finally:
        forget(NAME)
    assert told(hook) == [(wid, "completed")]
    assert any("could not take the workloads that ended with no pinion there: cannot reach"
               in r.getMessage() for r in caplog.records)


def test_the_line_of_a_workload_failed_by_expire() -> None:
    """Its pinion stopped renewing the lease: the time to its end is no run's, and no pinion
    ended it; the line says so instead of a duration."""
    body = event(workload_id="k3v9q2mxa7", workflow="analysis", pinion="night",
                 status="failed", results_id=None,
                 error="lease ran out 3 times (pinion died?)", queued_at=T0,
                 started_at=T0 + dt.timedelta(minutes=1), ended_at=T0 + dt.timedelta(hours=1))
    assert body["text"] == ("Caliber: analysis (k3v9q2mxa7) failed on pinion night, which "
                            "stopped answering while it ran: lease ran out 3 times (pinion "
                            "died?)")
    assert body["caliber"]["started_at"] == "2026-12-06T22:01:00+00:00"
