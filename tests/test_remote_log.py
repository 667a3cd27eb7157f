"""The remote queue's fold: the same events give the same state, in any arrival order."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from typing import Any

from caliber.queue.speckle_log import Event, fold, message, parse
from caliber.queue.workload import WorkloadStatus

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
_ids = itertools.count()


def ev(seconds: float, kind: str, **data: Any) -> Event:
    return Event(kind=kind, data={"e": kind, "w": "w1", **data}, version_id=f"v{next(_ids):04}",
                 object_id="obj", at=T0 + dt.timedelta(seconds=seconds))


def put(seconds: float = 0) -> Event:
    return ev(seconds, "put", p="p", n="pasta", c=T0.isoformat(), b="ann@laptop")


def claim(seconds: float, token: str, lease: float = 60) -> Event:
    return ev(seconds, "claim", t=token, o=f"pinion-{token}", l=lease, k="key")


def test_messages_round_trip() -> None:
    text = message("claimed w1 (pasta) by x caliber/1 {tricky}", {"e": "claim", "w": "w1",
                                                                  "t": "a", "y": None})
    assert text.startswith("claimed w1 (pasta) by x caliber/ 1 {tricky} · caliber/1 {")
    got = parse("v1", "o1", text, T0)
    assert got is not None and got.data == {"e": "claim", "w": "w1", "t": "a"}
    assert parse("v2", "o1", "a model from a design tool", T0) is None
    assert parse("v3", "o1", "broken · caliber/1 {not json", T0) is None


def test_first_claim_wins_and_the_loser_cannot_complete() -> None:
    events = [put(), claim(1, "a"), claim(2, "b"),
              ev(3, "done", t="b", r="rb", s="completed", n="pasta"),
              ev(4, "done", t="a", r="ra", s="completed", n="pasta")]
    state = fold(events).workloads["w1"]
    assert state.status == WorkloadStatus.COMPLETED and state.results_id == "ra"
    assert state.attempts == 1
    assert list(fold(events).results) == ["ra"]


def test_a_claim_seen_late_still_takes_its_place_in_server_order() -> None:
    # b's claim was created first but listed late: every reader folds it first anyway
    a, b = claim(2, "a"), claim(1, "b")
    assert fold([put(), a]).workloads["w1"].holder.token == "a"  # type: ignore[union-attr]
    assert fold([put(), a, b]).workloads["w1"].holder.token == "b"  # type: ignore[union-attr]


def test_expired_lease_is_taken_over_and_the_old_holder_is_ignored() -> None:
    events = [put(), claim(1, "a", lease=5), claim(3, "b"), claim(7, "b2"),
              ev(8, "renew", t="a", l=60), ev(9, "release", t="a", y="stop"),
              claim(10, "c")]
    state = fold(events).workloads["w1"]
    assert state.holder is not None and state.holder.token == "b2" and state.attempts == 2
    assert "lease of pinion-a ran out (attempt 1 lost)" in [h.message for h in state.history]


def test_renewal_keeps_the_lease() -> None:
    events = [put(), claim(1, "a", lease=5), ev(4, "renew", t="a", l=5), claim(8, "b")]
    assert fold(events).workloads["w1"].holder.token == "a"  # type: ignore[union-attr]


def test_expire_names_the_holder_it_saw() -> None:
    base = [put(), claim(1, "a", lease=1), claim(5, "b", lease=1)]
    late = ev(4, "expire", t="a", m=1)  # written before b's claim, a's lease ran out
    assert fold([*base[:2], late]).workloads["w1"].status == WorkloadStatus.FAILED
    stale = ev(6, "expire", t="a", m=1)  # a no longer holds it: ignored
    assert fold([*base, stale]).workloads["w1"].status == WorkloadStatus.RUNNING


def test_release_with_mismatch_and_resign() -> None:
    events = [put(), claim(1, "a"), ev(2, "release", t="a", y="secret", m="key"),
              claim(3, "again")]
    state = fold(events).workloads["w1"]
    assert state.status == WorkloadStatus.QUEUED and state.mismatch == "key"
    state = fold([*events, ev(4, "resign", s="x" * 64, k="key"), claim(5, "b")]).workloads["w1"]
    assert state.secret == "x" * 64 and state.mismatch is None and state.holder is not None


def test_fail_retry_and_delete() -> None:
    events = [put(), claim(1, "a"), ev(2, "fail", t="a", y="timed out", q=True)]
    state = fold(events).workloads["w1"]
    assert (state.status, state.last_error, state.attempts) == (
        WorkloadStatus.QUEUED, "timed out", 1)
    gone = fold([*events, ev(3, "delete"), claim(4, "b")]).workloads["w1"]
    assert gone.deleted and gone.holder is None
    assert fold([*events, ev(3, "delete")]).live() == []


def test_any_arrival_order_and_duplicates_give_the_same_state() -> None:
    events = [put(), claim(1, "a", lease=2), claim(1.5, "x"), claim(4, "b"),
              ev(5, "renew", t="b", l=60), ev(6, "done", t="a", r="ra", s="completed"),
              ev(7, "done", t="b", r="rb", s="failed", x="boom")]
    expected = fold(events).workloads["w1"]
    assert (expected.status, expected.results_id, expected.attempts) == (
        WorkloadStatus.FAILED, "rb", 2)
    shuffled = list(events) + events[1:4]  # the same versions listed twice
    for seed in range(20):
        random.Random(seed).shuffle(shuffled)
        got = fold(shuffled).workloads["w1"]
        assert (got.status, got.results_id, got.attempts, got.history) == (
            expected.status, expected.results_id, expected.attempts, expected.history)
