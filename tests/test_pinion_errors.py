"""A pinion survives any error of one workload and never leaves a claim standing.

Between the claim and the verdict anything may go wrong: the backend, the runs folder, a child
that cannot start. The workload is given back (the queue's or the machine's fault: attempt
uncounted, and the pinion backs off) or failed with the reason (queued again while it has
attempts left); the summary counts it either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from caliber.errors import ClaimReturnedError, QueueError
from caliber.paths import database_path
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue.backend import Claim
from caliber.queue.sqlite.backend import SQLiteBackend
from caliber.results.model import Results
from tests.pinion_helpers import make_folder, queue
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token

__all__ = ["remote", "speckle_server", "speckle_token"]  # fixtures


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf")


class FailingBackend(SQLiteBackend):
    """The real local queue, with one verb raising ``errors`` times."""

    def __init__(self, path: Path, verb: str, error: Exception, times: int = 1,
                 give_back_fails: bool = False) -> None:
        super().__init__(path)
        self.verb, self.error, self.times = verb, error, times
        self.give_back_fails = give_back_fails

    def _maybe(self, verb: str) -> None:
        if verb == self.verb and self.times > 0:
            self.times -= 1
            raise self.error

    def complete(self, claim: Claim, results: Results) -> None:
        self._maybe("complete")
        super().complete(claim, results)

    def fail(self, claim: Claim, reason: str, *, retry: bool) -> None:
        if self.give_back_fails:
            raise QueueError("the queue is out of reach")
        super().fail(claim, reason, retry=retry)


def run(backend: SQLiteBackend, **overrides: Any) -> Pinion:
    config = PinionConfig(name="p", attempts=1, wait=0, **overrides)
    pinion = Pinion(config, backend)
    pinion.run()
    return pinion


def test_an_unexpected_error_is_recorded_and_the_workload_runs_again(folder: Path) -> None:
    wid = queue(folder, [("add", [1])])
    with FailingBackend(database_path(), "complete", RuntimeError("store broke")) as backend:
        pinion = run(backend)
        workload = backend.get(wid)
    assert pinion.summary.errors == [(wid, "RuntimeError: store broke", "queued again")]
    assert pinion.summary.stranded == 0
    # given back with the reason, then claimed again by the same pinion and completed
    assert workload.status == "completed" and workload.attempts == 2
    messages = [h.message for h in workload.history]
    assert "attempt failed: RuntimeError: store broke; queued again" in messages


def test_without_attempts_left_the_workload_fails_with_the_reason(folder: Path) -> None:
    wid = queue(folder, [("add", [1])])
    other = queue(folder, [("add", [2])])
    with FailingBackend(database_path(), "complete", KeyError("results")) as backend:
        pinion = run(backend, max_attempts=1)
        failed, completed = backend.get(wid), backend.get(other)
    assert failed.status == "failed" and failed.last_error == "KeyError: 'results'"
    assert completed.status == "completed"  # the pinion went on to the next workload
    assert pinion.summary.errors == [(wid, "KeyError: 'results'", "failed")]
    assert pinion.summary.completed == 1


def test_a_queue_that_cannot_take_the_claim_back_is_counted(folder: Path) -> None:
    wid = queue(folder, [("add", [1])])
    with FailingBackend(database_path(), "complete", RuntimeError("store broke"),
                        give_back_fails=True) as backend:
        pinion = run(backend)
        workload = backend.get(wid)
    assert workload.status == "running"  # left to its lease, as after a dead pinion
    assert pinion.summary.stranded == 1
    [(found, reason, then)] = pinion.summary.errors
    assert (found, reason) == (wid, "RuntimeError: store broke")
    assert then.startswith("left to its lease (could not give it back: the queue is out")


def test_base_exceptions_are_not_swallowed(folder: Path) -> None:
    queue(folder, [("add", [1])])
    with (FailingBackend(database_path(), "complete", KeyboardInterrupt()) as backend,
          pytest.raises(KeyboardInterrupt)):
        run(backend)


def test_a_run_folder_that_cannot_be_made_fails_the_workload(
    folder: Path, tmp_path: Path
) -> None:
    wid = queue(folder, [("add", [1])])
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    with SQLiteBackend(database_path()) as backend:
        pinion = run(backend, runs_dir=blocker)
        workload = backend.get(wid)
    assert workload.status == "failed"
    assert workload.last_error is not None
    assert workload.last_error.startswith("cannot prepare the working folder")
    assert pinion.summary.failed == 1


# A real pinion process whose file descriptors run out once its queue is open: it cannot make
# the pipes of a child. The claim goes back (attempt uncounted), the pinion says so with the
# workload's id, backs off, stops on SIGINT and counts the error in its summary.
NO_CHILD = """
import json, resource, signal, sys, threading
from caliber.paths import database_path
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.pinion.progress import Reporter
from caliber.queue.sqlite.backend import SQLiteBackend

backend = SQLiteBackend(database_path())
backend.list_workloads()  # the database and its WAL files are open now
pinion = Pinion(PinionConfig(name="p", attempts=0, wait=0), backend,
                reporter=Reporter("p", stream=sys.stderr))
import os
highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
# Room for the two files of copying an attachment into the run folder, not for the pipes too.
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 2, resource.getrlimit(
    resource.RLIMIT_NOFILE)[1]))
summary = pinion.run()
print(json.dumps(summary.to_dict()))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_child_that_cannot_start_gives_the_claim_back(folder: Path) -> None:
    wid = queue(folder, [("add", [1])])
    proc = subprocess.Popen([sys.executable, "-c", NO_CHILD], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    try:  # a pinion that never says so is not left running (it looks for work for ever)
        for line in proc.stderr:
            seen.append(line)
            if "trying again" in line:
                break
        proc.send_signal(2)  # SIGINT: a warm stop, during the back-off
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(seen) + err
    assert proc.returncode == 0, stderr
    assert f"workload {wid} put back in the queue: cannot start the workload's process" in stderr
    summary = json.loads(out)
    assert summary["ran"] == 0 and summary["stranded"] == 0
    assert [e["id"] for e in summary["errors"]] == [wid]
    with SQLiteBackend(database_path()) as backend:
        workload = backend.get(wid)
    assert workload.status == "queued" and workload.attempts == 0


@pytest.mark.speckle
def test_a_remote_claim_whose_workload_cannot_be_read_is_given_back(remote: Remote) -> None:
    from caliber.queue.workload import Workload

    workload = Workload(
        pinion="p", queued_by="ann@laptop", secret="s" * 64,
        workflow={"caliber": 1, "name": "pasta", "process": {"type": "process", "tasks": []}},
    )
    with remote.backend() as backend:
        backend.put(workload)
        store = remote.server.store
        with store.lock:  # the workload's object goes missing on the server
            objects = store.objects[remote.project]
            [object_id] = [i for i, o in objects.items() if "workload_json" in o]
            kept = objects.pop(object_id)
        with pytest.raises(ClaimReturnedError, match="missing on the server") as raised:
            backend.claim("p", "p@here", 60, "key")
        assert raised.value.workload_id == workload.id
        pinion = Pinion(PinionConfig(name="p"), backend)  # a pinion counts it, then backs off
        with pytest.raises(ClaimReturnedError):
            pinion.run_once()
        pinion.close()
        assert [e[0] for e in pinion.summary.errors] == [workload.id]
        with store.lock:
            objects[object_id] = kept
        again = backend.get(workload.id)
        assert again.status == "queued" and again.attempts == 0
        assert "cannot read the workload" in again.history[-1].message
        claim = backend.claim("p", "p@here", 60, "key")  # claimable at once, not after a lease
        assert claim is not None and claim.workload.id == workload.id


def test_run_once_is_one_look(folder: Path) -> None:
    with SQLiteBackend(database_path()) as backend:
        pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
        assert pinion.run_once() is False  # nothing queued
        wid = queue(folder, [("add", [1])])
        assert pinion.run_once() is True
        assert pinion.run_once() is False
        pinion.close()
        assert backend.get(wid).status == "completed"
    assert (pinion.summary.ran, pinion.summary.completed) == (1, 1)
