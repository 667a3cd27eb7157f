"""The queue backend contract, written once and run against every backend (see conftest).

Lease expiry is tested with a negative lease (already run out), never by waiting.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from caliber.errors import (
    AmbiguousIdError,
    LeaseLostError,
    NotFoundError,
    QueueError,
    QueueStateError,
)
from caliber.queue.api import check_summary
from caliber.queue.backend import QueueBackend
from caliber.queue.secret import sign, signed_time
from caliber.queue.summary import StoredSummary, WorkloadSummary
from caliber.queue.workload import Attachment, Workload, WorkloadStatus
from caliber.results.model import ErrorInfo, Results, RunStatus, utcnow
from caliber.results.store import ResultsStore

if TYPE_CHECKING:
    from caliber.queue.registry import Backend

KEY = "key-a"
OTHER_KEY = "key-b"
LEASE = 60.0
RAN_OUT = -60.0  # a lease that has already run out


def make_workload(pinion: str = "p1", *, seconds: int = 0, wid: str | None = None) -> Workload:
    extra = {"id": wid} if wid else {}
    return Workload(
        pinion=pinion,
        workflow={"caliber": 1, "name": "pasta", "process": {"type": "process", "tasks": []}},
        attachments=[Attachment.from_bytes("data.txt", b"hello"),
                     Attachment.from_bytes("blob.bin", b"\xff\x00\xfe")],
        created_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds),
        queued_by="ann@laptop",
        secret="s" * 64,
        **extra,
    )


def make_results(workload_id: str | None, *, ok: bool = True) -> Results:
    now = utcnow()
    return Results(
        workload_id=workload_id, workflow="pasta", pinion="p1",
        status=RunStatus.COMPLETED if ok else RunStatus.FAILED,
        started_at=now, finished_at=now,
        error=None if ok else ErrorInfo(type="ValueError", message="boom", task="Make dough"),
    )


def test_is_a_queue_backend_and_a_results_store(backend: Backend) -> None:
    assert isinstance(backend, QueueBackend)
    assert isinstance(backend, ResultsStore)
    assert backend.location


# --- put / get ------------------------------------------------------------------------------


def test_put_then_get_round_trips_everything(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    got = backend.get(w.id)
    assert got.model_dump(exclude={"history"}) == w.model_dump(exclude={"history"})
    assert got.status == WorkloadStatus.QUEUED
    assert [a.data() for a in got.attachments] == [b"hello", b"\xff\x00\xfe"]
    assert got.attachments[1].encoding == "base64"
    assert [h.status for h in got.history] == [WorkloadStatus.QUEUED]
    assert "ann@laptop" in got.history[0].message


def test_get_unknown_id(backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        backend.get("zzzzzzzzzz")


def test_get_by_unique_prefix_and_ambiguous_prefix(backend: Backend) -> None:
    a, b, c = (make_workload(wid=i) for i in ("abc1000000", "abc2000000", "xyz0000000"))
    for w in (a, b, c):
        backend.put(w)
    assert backend.get("xy").id == c.id
    assert backend.get("ABC1").id == a.id
    with pytest.raises(AmbiguousIdError) as info:
        backend.get("abc")
    assert set(info.value.candidates) == {a.id, b.id}


# --- claim ----------------------------------------------------------------------------------


def test_claim_takes_oldest_for_its_pinion(backend: Backend) -> None:
    newer, older, other = make_workload(seconds=5), make_workload(seconds=1), make_workload("p2")
    for w in (newer, older, other):
        backend.put(w)
    claim = backend.claim("p1", "pinion-a", LEASE, KEY)
    assert claim is not None
    assert claim.workload.id == older.id
    assert claim.workload.status == WorkloadStatus.RUNNING
    assert claim.workload.attempts == 1
    assert claim.workload.workflow == older.workflow
    assert claim.owner == "pinion-a" and claim.token
    assert claim.expires_at > utcnow()
    stored = backend.get(older.id)
    assert stored.lease is not None and stored.lease.owner == "pinion-a"
    assert "claimed by pinion-a" in stored.history[-1].message
    second = backend.claim("p1", "pinion-b", LEASE, KEY)
    assert second is not None and second.workload.id == newer.id
    assert second.token != claim.token
    assert backend.claim("p1", "pinion-c", LEASE, KEY) is None


def test_claim_on_empty_queue(backend: Backend) -> None:
    assert backend.claim("p1", "me", LEASE, KEY) is None


def test_running_with_live_lease_is_not_claimed_again(backend: Backend) -> None:
    backend.put(make_workload())
    assert backend.claim("p1", "a", LEASE, KEY) is not None
    assert backend.claim("p1", "b", LEASE, KEY) is None


def test_expired_lease_is_reclaimed_and_old_claim_is_lost(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    first = backend.claim("p1", "dead-pinion", RAN_OUT, KEY)
    assert first is not None
    second = backend.claim("p1", "live-pinion", LEASE, KEY)
    assert second is not None and second.workload.id == w.id
    assert second.workload.attempts == 2
    messages = [h.message for h in backend.get(w.id).history]
    ran_out = [i for i, m in enumerate(messages) if "dead-pinion" in m and "ran out" in m]
    assert ran_out, messages  # and before the claim that took it over, which is noted once:
    assert messages.count("claimed by live-pinion (attempt 2)") == 1, messages
    assert messages.index("claimed by live-pinion (attempt 2)") > ran_out[0], messages
    for lost in (
        lambda: backend.renew(first, LEASE),
        lambda: backend.complete(first, make_results(w.id)),
        lambda: backend.fail(first, "x", retry=False),
        lambda: backend.release(first, reason="stop"),
    ):
        with pytest.raises(LeaseLostError):
            lost()
    assert backend.get(w.id).lease.owner == "live-pinion"  # type: ignore[union-attr]
    assert backend.get(w.id).history[-1].message == messages[-1]  # nothing noted


def test_renew_extends_the_lease(backend: Backend) -> None:
    backend.put(make_workload())
    claim = backend.claim("p1", "a", RAN_OUT, KEY)
    assert claim is not None
    renewed = backend.renew(claim, LEASE)
    assert renewed.token == claim.token
    assert renewed.expires_at > utcnow()
    assert backend.claim("p1", "b", LEASE, KEY) is None


# --- release / complete / fail / expire -----------------------------------------------------


def test_release_puts_back_without_counting(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.release(claim, reason="warm stop")
    got = backend.get(w.id)
    assert got.status == WorkloadStatus.QUEUED
    assert got.attempts == 0 and got.lease is None and got.secret_mismatch is None
    assert "warm stop" in got.history[-1].message
    again = backend.claim("p1", "b", LEASE, KEY)
    assert again is not None and again.workload.attempts == 1


def test_release_with_mismatch_is_passed_over_by_that_key(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.release(claim, reason="run-secret does not match", mismatch_key_id=KEY)
    assert backend.get(w.id).secret_mismatch == KEY
    assert backend.claim("p1", "a", LEASE, KEY) is None
    other = backend.claim("p1", "b", LEASE, OTHER_KEY)
    assert other is not None and other.workload.id == w.id


def test_complete_stores_results_and_finishes(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    results = make_results(w.id)
    backend.complete(claim, results)
    got = backend.get(w.id)
    assert got.status == WorkloadStatus.COMPLETED and got.completed
    assert got.results_id == results.id and got.lease is None and got.last_error is None
    assert backend.get_results(results.id).workload_id == w.id
    found = backend.find_results(workload_id=w.id)
    assert found is not None and found.id == results.id
    assert backend.claim("p1", "b", LEASE, KEY) is None
    with pytest.raises(LeaseLostError):  # again (a commit that went through, tried again)
        backend.complete(claim, results)


def test_complete_with_failed_results(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.complete(claim, make_results(w.id, ok=False))
    got = backend.get(w.id)
    assert got.status == WorkloadStatus.FAILED and not got.completed
    assert got.last_error is not None and "boom" in got.last_error
    assert got.results_id is not None


def test_complete_with_lost_lease_stores_nothing(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    first = backend.claim("p1", "a", RAN_OUT, KEY)
    assert first is not None
    second = backend.claim("p1", "b", LEASE, KEY)
    assert second is not None
    results = make_results(w.id)
    with pytest.raises(LeaseLostError):
        backend.complete(first, results)
    with pytest.raises(NotFoundError):
        backend.get_results(results.id)
    assert backend.find_results(workload_id=w.id) is None
    assert backend.get(w.id).status == WorkloadStatus.RUNNING
    backend.complete(second, make_results(w.id))
    assert backend.get(w.id).status == WorkloadStatus.COMPLETED


def test_fail_with_retry_requeues(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.fail(claim, "timed out after 5 s", retry=True)
    got = backend.get(w.id)
    assert got.status == WorkloadStatus.QUEUED and got.attempts == 1
    assert got.last_error == "timed out after 5 s" and got.lease is None
    again = backend.claim("p1", "a", LEASE, KEY)
    assert again is not None and again.workload.attempts == 2


def test_fail_without_retry_is_final(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.fail(claim, "child killed by signal 9", retry=False)
    got = backend.get(w.id)
    assert got.status == WorkloadStatus.FAILED and got.last_error == "child killed by signal 9"
    assert backend.claim("p1", "a", LEASE, KEY) is None


def test_expire_fails_only_exhausted_expired_leases(backend: Backend) -> None:
    exhausted, young, live = make_workload(seconds=1), make_workload(seconds=2), make_workload(
        seconds=3)
    for w in (exhausted, young, live):
        backend.put(w)
    for _ in range(2):  # exhausted: two attempts, both leases ran out
        c = backend.claim("p1", "dead", RAN_OUT, KEY)
        assert c is not None and c.workload.id == exhausted.id
    # the next claim would retake 'exhausted' (expired), so expire it first
    assert backend.expire(max_attempts=2) == [exhausted.id]
    c2 = backend.claim("p1", "dead", RAN_OUT, KEY)
    assert c2 is not None and c2.workload.id == young.id
    c3 = backend.claim("p1", "alive", LEASE, KEY)
    assert c3 is not None and c3.workload.id == young.id  # reclaimed: attempts left
    c4 = backend.claim("p1", "alive2", LEASE, KEY)
    assert c4 is not None and c4.workload.id == live.id
    assert backend.expire(max_attempts=1) == []  # live leases are never expired
    got = backend.get(exhausted.id)
    assert got.status == WorkloadStatus.FAILED
    assert got.last_error == "lease ran out 2 times (pinion died?)"


# --- reset / resetsecret / list_workloads ---------------------------------------------------


def test_reset(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    removed = backend.reset(w.id[:6])
    assert removed.id == w.id
    with pytest.raises(NotFoundError):
        backend.get(w.id)
    with pytest.raises(NotFoundError):
        backend.reset(w.id)


def test_reset_running_needs_force(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    with pytest.raises(QueueStateError):
        backend.reset(w.id)
    assert backend.get(w.id).status == WorkloadStatus.RUNNING
    backend.reset(w.id, force=True)
    with pytest.raises(LeaseLostError):
        backend.complete(claim, make_results(w.id))


def test_resetsecret_replaces_secret_and_clears_mismatch(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.release(claim, reason="mismatch", mismatch_key_id=KEY)
    resigned = backend.resetsecret(w.id[:5], "t" * 64, KEY)
    assert resigned.secret == "t" * 64 and resigned.secret_mismatch is None
    assert backend.get(w.id).secret == "t" * 64
    assert backend.claim("p1", "a", LEASE, KEY) is not None


def test_list_workloads_filters_and_pages(backend: Backend) -> None:
    ws = [make_workload("p1" if i % 2 else "p2", seconds=i) for i in range(6)]
    for w in reversed(ws):
        backend.put(w)
    assert [w.id for w in backend.list_workloads()] == [w.id for w in ws]
    p1 = [w.id for w in ws if w.pinion == "p1"]
    assert [w.id for w in backend.list_workloads(pinion="p1")] == p1
    claim = backend.claim("p2", "a", LEASE, KEY)
    assert claim is not None
    assert [w.id for w in backend.list_workloads(status=WorkloadStatus.RUNNING)] == [ws[0].id]
    assert [w.id for w in backend.list_workloads(status=WorkloadStatus.QUEUED, pinion="p2")] == [
        ws[2].id, ws[4].id]
    assert [w.id for w in backend.list_workloads(limit=2, offset=1)] == [ws[1].id, ws[2].id]
    assert backend.list_workloads(pinion="nobody") == []


def test_listings_and_counts_filter_by_workflow(backend: Backend) -> None:
    ws = [make_workload("p1" if i % 2 else "p2", seconds=i) for i in range(5)]
    for i, w in enumerate(ws):
        w.workflow = {**w.workflow, "name": "beam" if i < 3 else "post"}
        backend.put(w)
    assert [w.id for w in backend.list_workloads(workflow="beam")] == [w.id for w in ws[:3]]
    assert [s.id for s in backend.list_summaries(workflow="post", pinion="p1")] == [ws[3].id]
    assert [w.id for w in backend.list_workloads(workflow="beam", limit=1, offset=1)] == [
        ws[1].id]
    assert backend.count_statuses(workflow="post") == {"queued": 2}
    assert backend.count_statuses(workflow="beam", pinion="p2") == {"queued": 2}
    assert backend.list_workloads(workflow="nothing") == []


def test_list_summaries_say_what_the_workloads_say(backend: Backend) -> None:
    """The backend lists what it stores; the queue API checks the run-secrets on that
    (:func:`caliber.queue.api.check_summary`), and says what the full workloads say."""
    key = b"k" * 32
    ws = [make_workload("p1" if i % 2 else "p2", seconds=i) for i in range(4)]
    ws[1].secret = sign(ws[1], key)
    for w in ws:
        backend.put(w)
    assert backend.claim("p2", "a", LEASE, KEY) is not None

    def listed(**filters: Any) -> list[WorkloadSummary]:
        return [check_summary(s, key) for s in backend.list_summaries(**filters)]

    summaries = listed()
    assert [s.secret_ok for s in summaries] == [False, True, False, False]
    assert [s.to_dict() for s in summaries] == [
        w.summary(i == 1) for i, w in enumerate(backend.list_workloads())]
    assert summaries[0].status == "running" and summaries[0].attempts == 1
    assert [s.id for s in listed(pinion="p1")] == [ws[1].id, ws[3].id]
    assert [s.id for s in listed(status=WorkloadStatus.QUEUED, pinion="p2")] == [ws[2].id]
    assert [s.id for s in listed(limit=2, offset=1)] == [ws[1].id, ws[2].id]
    assert listed(pinion="nobody") == []


def test_list_summaries_are_as_stored_and_checked_above_the_backend(backend: Backend) -> None:
    """A backend checks no run-secret (it has no key): it hands back the signed fields as it
    stored them, and the check above it finds a changed one."""
    key = b"k" * 32
    w = make_workload()
    w.secret = sign(w, key)
    backend.put(w)
    [stored] = backend.list_summaries()
    assert isinstance(stored, StoredSummary) and stored.damaged is None
    assert (stored.id, stored.pinion, stored.secret, stored.workflow) == (
        w.id, w.pinion, w.secret, w.workflow)
    assert stored.created_at == signed_time(w.created_at)
    assert [a["sha256"] for a in stored.attachments] == [a.sha256 for a in w.attachments]
    assert check_summary(stored, key).secret_ok is True
    assert check_summary(stored, b"other" * 8).secret_ok is False
    assert check_summary(replace(stored, pinion="p9"), key).secret_ok is False


# --- results --------------------------------------------------------------------------------


def test_results_verbs(backend: Backend) -> None:
    first, second = make_results(None), make_results(None, ok=False)
    second = second.model_copy(update={"finished_at": first.finished_at + dt.timedelta(1)})
    backend.save_results(first)
    backend.save_results(second)
    assert backend.get_results(first.id).id == first.id
    assert backend.get_results(first.id[:8]).id == first.id
    latest = backend.find_results(workflow="pasta")
    assert latest is not None and latest.id == second.id
    assert backend.find_results(workflow="other") is None
    assert [r.id for r in backend.list_results()] == [second.id, first.id]
    assert [r.id for r in backend.list_results(limit=1, offset=1)] == [first.id]
    with pytest.raises(NotFoundError):
        backend.get_results("zzzzzzzzzz")


def test_results_round_trip_their_upstream_record(backend: Backend) -> None:
    """Where a run's ``$results`` values came from (``Results.upstream``) comes back as it
    was stored, by ``complete`` and ``save_results``, and their signature still checks; so do
    Results without one."""
    from caliber.queue.resume import signed
    from caliber.queue.secret import results_signed
    from caliber.results.model import UpstreamSource

    key = b"the-owners-key-0123456789abcdef"
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    taken = [UpstreamSource(workload="k3v9q2mxa7", workflow="analysis", results="5mz0c1ht2w",
                            signature="ab" * 32, tasks=["Solve", "Field"]),
             UpstreamSource(workload=None, workflow="mesh \u00e9", results="7hq2kd0x1c",
                            signature=None, tasks=["Mesh"])]
    results = signed(make_results(w.id).model_copy(update={"upstream": taken}), key)
    plain = signed(make_results(None), key)
    backend.complete(claim, results)
    backend.save_results(plain)
    for stored in (results, plain):
        got = backend.get_results(stored.id)
        assert got.upstream == stored.upstream
        assert got.to_json_dict()["upstream"] == stored.to_json_dict()["upstream"]
        assert results_signed(got.to_json_dict(), key)


def test_results_with_an_id_stored_already_are_refused(backend: Backend) -> None:
    """A backend's own error (never its driver's), and the Results stored first kept."""
    first = make_results(None)
    backend.save_results(first)
    again = make_results(None, ok=False).model_copy(update={"id": first.id})
    with pytest.raises(QueueError, match=f"results {first.id}: they are stored already"):
        backend.save_results(again)
    assert backend.get_results(first.id).status == first.status
    assert [r.id for r in backend.list_results()] == [first.id]
