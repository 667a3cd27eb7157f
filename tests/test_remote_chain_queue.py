"""Chains and start times on a Speckle (test) server: across two pinions' views of the log and
checkpoints, signed as put; next_start costs no request of its own."""

from __future__ import annotations

import datetime as dt

import pytest

pytest.importorskip("specklepy")

from caliber.queue import secret
from caliber.queue.workload import WorkloadStatus
from caliber.results.model import utcnow
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_remote_checkpoints import often, whole_log
from tests.test_remote_queue import results_for, workload

pytestmark = pytest.mark.speckle
__all__ = ["often", "remote", "speckle_server", "speckle_token", "speckle_userdata"]
KEY = b"k" * 32


def test_a_chain_across_two_pinions_and_checkpoints(remote: Remote, often: None) -> None:
    later = utcnow().replace(microsecond=0) + dt.timedelta(hours=3)
    with remote.backend() as one, remote.backend() as two:
        one.put(a := workload())
        b = workload(after=[a.id], priority=2, notify="http://127.0.0.1:9/hook")
        b.secret = secret.sign(b, KEY)
        one.put(b)
        one.put(c := workload())
        one.put(d := workload(not_before=later, priority=9))
        got = two.claim("p1", "two", 60, "k")  # b waits, d is not due: a, the oldest
        assert got is not None and got.workload.id == a.id
        assert two.next_start("p1") == later
        two.complete(got, results_for(a.id, {"x": 1}))
        got = one.claim("p1", "one", 60, "k")  # b is queued now, and first by priority
        assert got is not None and got.workload.id == b.id
        assert secret.verify(got.workload, KEY)  # its signed fields read back as signed
        assert got.workload.notify == "http://127.0.0.1:9/hook"
        one.cancel(c.id, "ann")
    with remote.backend() as reader:  # from the newest checkpoint
        shown = {s.id: s for s in reader.list_summaries()}
        assert reader.view.cutoff is not None
    assert shown[b.id].after == [a.id] and shown[b.id].priority == 2
    assert shown[d.id].not_before == secret.signed_time(later)
    whole = {s.id: s for s in whole_log(remote).live()}
    assert {i: (s.status, s.after, s.not_before, s.priority) for i, s in whole.items()} == {
        i: (WorkloadStatus(s.status), s.after, s.not_before, s.priority)
        for i, s in shown.items()}


def test_put_after_a_missing_or_cancelled_workload_writes_nothing(remote: Remote) -> None:
    from caliber.errors import NotFoundError, QueueStateError

    with remote.backend() as backend:
        backend.put(a := workload())
        backend.cancel(a.id, "ann")
        count = len(remote.versions())
        with pytest.raises(NotFoundError):
            backend.put(workload(after=["nosuchid00"]))
        with pytest.raises(QueueStateError):
            backend.put(workload(after=[a.id]))
        assert len(remote.versions()) == count


def test_next_start_after_a_claim_makes_no_request(remote: Remote) -> None:
    later = utcnow() + dt.timedelta(hours=1)
    with remote.backend() as backend:
        backend.put(workload(not_before=later))
        assert backend.claim("p1", "me", 60, "k") is None
        before = len(remote.server.log)
        assert backend.next_start("p1") == later
        assert len(remote.server.log) == before
