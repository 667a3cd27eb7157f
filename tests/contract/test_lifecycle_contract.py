"""The contract of a workload's life after it was queued: cancel, retry, retry with resume,
and the counts by status (run against every backend, see conftest)."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from caliber.errors import LeaseLostError, QueueStateError
from caliber.queue.lifecycle import ResumeGrant
from caliber.queue.workload import WorkloadStatus
from caliber.results.model import ErrorInfo, RunStatus
from tests.contract.test_backend_contract import (
    KEY,
    LEASE,
    RAN_OUT,
    make_results,
    make_workload,
)

if TYPE_CHECKING:
    from caliber.queue.registry import Backend


def test_cancel_a_queued_workload_and_it_never_runs(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    got = backend.cancel(w.id[:6], "ann@laptop")
    assert got.status == WorkloadStatus.CANCELLED and got.last_error == "cancelled by ann@laptop"
    assert got.history[-1].status == WorkloadStatus.CANCELLED
    assert backend.claim("p1", "a", LEASE, KEY) is None
    assert backend.count_statuses() == {"cancelled": 1}


def test_cancel_a_running_workload_is_learnt_at_renew(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None and claim.cancel_requested is None
    assert backend.renew(claim, LEASE).cancel_requested is None
    asked = backend.cancel(w.id, "ann@laptop")
    assert asked.status == WorkloadStatus.RUNNING  # the pinion finishes its current task
    assert "cancel asked by ann@laptop" in asked.history[-1].message
    renewed = backend.renew(claim, LEASE)
    assert renewed.cancel_requested == "ann@laptop"
    results = make_results(w.id).model_copy(update={
        "status": RunStatus.CANCELLED,
        "error": ErrorInfo(type="Cancelled", message="cancelled by ann@laptop")})
    backend.complete(renewed, results)
    got = backend.get(w.id)
    assert got.status == WorkloadStatus.CANCELLED and got.results_id == results.id
    assert backend.get_results(results.id).status == RunStatus.CANCELLED


def test_cancel_now_of_a_running_workload_is_learnt_at_renew(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None and not claim.cancel_now
    asked = backend.cancel(w.id[:6], "ann@laptop", now=True)
    assert asked.status == WorkloadStatus.RUNNING  # its pinion stops the running task
    assert "cancel asked by ann@laptop: its pinion stops the running task now" in (
        asked.history[-1].message)
    renewed = backend.renew(claim, LEASE)
    assert renewed.cancel_requested == "ann@laptop" and renewed.cancel_now
    backend.complete(renewed, make_results(w.id).model_copy(update={
        "status": RunStatus.CANCELLED,
        "error": ErrorInfo(type="Cancelled", message="cancelled by ann@laptop")}))
    assert backend.get(w.id).status == WorkloadStatus.CANCELLED


def test_a_look_for_a_cancel_writes_nothing_and_extends_nothing(backend: Backend) -> None:
    """``peek_cancel``, a pinion's look between renewals: a read only. The local queue gives
    the cancel at once; a backend whose look would cost a request (Speckle) gives the claim
    back unchanged, and its pinion learns the cancel at the next renewal."""
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    assert backend.peek_cancel(claim) == claim  # nothing asked
    backend.cancel(w.id, "ann@laptop", now=True)
    before = backend.get(w.id)
    peeked = backend.peek_cancel(claim)
    assert peeked == claim or peeked == replace(claim, cancel_requested="ann@laptop",
                                                cancel_now=True)
    assert peeked.expires_at == claim.expires_at  # the lease is not extended
    after = backend.get(w.id)
    assert after.history == before.history and after.lease == before.lease  # nothing written
    assert backend.peek_cancel(replace(claim, cancel_requested="ann@laptop",
                                       cancel_now=True)).cancel_now  # never forgets
    renewed = backend.renew(claim, LEASE)
    assert renewed.cancel_requested == "ann@laptop" and renewed.cancel_now
    backend.reset(w.id, force=True)
    with contextlib.suppress(LeaseLostError):  # a look that found it gone, or
        assert backend.peek_cancel(renewed) == renewed  # no look made


def test_a_cancel_is_made_now_by_a_second_cancel_now(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.cancel(w.id, "ann@laptop")
    first = backend.renew(claim, LEASE)
    assert first.cancel_requested == "ann@laptop" and not first.cancel_now
    backend.cancel(w.id, "bob@desk", now=True)
    again = backend.renew(first, LEASE)
    assert again.cancel_requested == "bob@desk" and again.cancel_now
    backend.cancel(w.id, "ann@laptop")  # a later plain cancel does not undo --now
    assert backend.renew(again, LEASE).cancel_now


def test_cancel_now_of_a_queued_workload_is_a_cancel(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    got = backend.cancel(w.id, "ann@laptop", now=True)
    assert got.status == WorkloadStatus.CANCELLED and got.last_error == "cancelled by ann@laptop"
    assert backend.claim("p1", "a", LEASE, KEY) is None


def test_a_retried_workload_forgets_its_cancel_now(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.cancel(w.id, "ann@laptop", now=True)
    backend.release(claim, reason="pinion stopped")  # cancelled: it ended without Results
    assert backend.get(w.id).status == WorkloadStatus.CANCELLED
    backend.retry(w.id, "ann@laptop")
    again = backend.claim("p1", "a", LEASE, KEY)
    assert again is not None
    renewed = backend.renew(again, LEASE)
    assert renewed.cancel_requested is None and not renewed.cancel_now


def test_cancel_a_workload_whose_pinion_died_is_at_once(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    assert backend.claim("p1", "dead", RAN_OUT, KEY) is not None
    assert backend.cancel(w.id, "ann@laptop").status == WorkloadStatus.CANCELLED
    assert backend.claim("p1", "a", LEASE, KEY) is None


def test_cancel_a_finished_workload_is_refused(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.complete(claim, make_results(w.id))
    with pytest.raises(QueueStateError, match="only a queued, waiting or running workload"):
        backend.cancel(w.id, "ann@laptop")
    assert backend.get(w.id).status == WorkloadStatus.COMPLETED


def test_retry_a_failed_workload_keeps_its_history_and_secret(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    first = make_results(w.id, ok=False)
    backend.complete(claim, first)
    before = backend.get(w.id)
    got = backend.retry(w.id, "ann@laptop")
    assert got.status == WorkloadStatus.QUEUED and got.attempts == 0
    assert got.last_error is None and got.resume_from is None
    assert got.secret == before.secret  # nothing re-signed
    assert [h.message for h in got.history[:len(before.history)]] == [
        h.message for h in before.history]
    assert "queued again by ann@laptop" in got.history[-1].message
    again = backend.claim("p1", "a", LEASE, KEY)
    assert again is not None and again.workload.attempts == 1
    second = make_results(w.id)
    backend.complete(again, second)  # a second Results of the same workload
    assert backend.get(w.id).status == WorkloadStatus.COMPLETED
    assert backend.get_results(first.id).workload_id == w.id
    found = backend.find_results(workload_id=w.id)
    assert found is not None and found.id == second.id


def test_retry_with_resume_names_the_last_results(backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    with pytest.raises(QueueStateError, match="only a failed or cancelled workload"):
        backend.retry(w.id, "ann@laptop")
    backend.cancel(w.id, "ann@laptop")
    with pytest.raises(QueueStateError, match="no results to resume from"):
        backend.retry(w.id, "ann@laptop", resume=ResumeGrant("r0", "s" * 64, "g" * 64))
    assert backend.get(w.id).status == WorkloadStatus.CANCELLED  # left as it was
    backend.retry(w.id, "ann@laptop")
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    failed = make_results(w.id, ok=False)
    backend.complete(claim, failed)
    with pytest.raises(QueueStateError, match="has other results now"):
        backend.retry(w.id, "ann@laptop", resume=ResumeGrant("r0", "s" * 64, "g" * 64))
    grant = ResumeGrant(failed.id, "s" * 64, "g" * 64)
    got = backend.retry(w.id, "ann@laptop", resume=grant)
    assert got.status == WorkloadStatus.QUEUED and got.resume_from == failed.id
    assert got.grant == grant  # stored with the workload, as given
    again = backend.claim("p1", "a", LEASE, KEY)
    assert again is not None and again.workload.grant == grant


def test_a_retry_without_resume_drops_the_grant_and_resetsecret_makes_it_again(
        backend: Backend) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    failed = make_results(w.id, ok=False)
    backend.complete(claim, failed)
    backend.retry(w.id, "ann@laptop", resume=ResumeGrant(failed.id, "s" * 64, "g" * 64))
    regrant = ResumeGrant(failed.id, "t" * 64, "h" * 64)
    got = backend.resetsecret(w.id, "z" * 64, KEY, resume=regrant)
    assert got.secret == "z" * 64 and got.grant == regrant
    stale = ResumeGrant("other", "u" * 64, "i" * 64)  # not the Results it resumes: ignored
    assert backend.resetsecret(w.id, "z" * 64, KEY, resume=stale).grant == regrant
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.release(claim, reason="its resume does not check", mismatch_key_id=KEY)
    backend.cancel(w.id, "ann@laptop")
    got = backend.retry(w.id, "ann@laptop")
    assert got.secret_mismatch is None  # a new attempt series: every key looks afresh
    assert got.resume_from is None and got.grant is None
    assert got.resume_signature is None and got.resume_grant is None


def test_count_statuses_by_pinion(backend: Backend) -> None:
    for i, pinion in enumerate(("p1", "p1", "p2")):
        backend.put(make_workload(pinion, seconds=i))
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.fail(claim, "boom", retry=False)
    assert backend.count_statuses() == {"failed": 1, "queued": 2}
    assert backend.count_statuses(pinion="p2") == {"queued": 1}
    assert backend.count_statuses(pinion="nobody") == {}


@pytest.mark.parametrize("end", ["release", "fail"])
def test_a_cancelled_run_that_ends_without_results_is_not_queued_again(
        backend: Backend, end: str) -> None:
    w = make_workload()
    backend.put(w)
    claim = backend.claim("p1", "a", LEASE, KEY)
    assert claim is not None
    backend.cancel(w.id, "ann@laptop")
    if end == "release":  # the pinion was stopped cold before the run ended
        backend.release(claim, reason="pinion stopped")
    else:  # the child died, with attempts left
        backend.fail(claim, "the workload's process was killed", retry=True)
    got = backend.get(w.id)
    assert got.status == WorkloadStatus.CANCELLED and got.last_error == "cancelled by ann@laptop"
    assert backend.claim("p1", "a", LEASE, KEY) is None
