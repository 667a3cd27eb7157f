"""Chains, start times and priorities on the remote queue's log: fold rules, applied at their
place in server order, the same for every reader (and from any checkpoint); and a log written
before them folds as it did."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import random
from typing import Any

import pytest

from caliber.queue.speckle.checkpoint import _state, _state_doc
from caliber.queue.speckle.events import (
    Body,
    Cancel,
    Claim,
    Delete,
    Done,
    Event,
    Expire,
    Fail,
    Prune,
    Put,
    Release,
    Retry,
    Tell,
    message,
    parse,
)
from caliber.queue.speckle.log import FINISHED, Folded, blocked, fold, pending
from caliber.queue.status import WorkloadStatus
from tests.test_remote_log import key_state, stored

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
W, Q, C = WorkloadStatus.WAITING, WorkloadStatus.QUEUED, WorkloadStatus.CANCELLED
_ids = itertools.count()


def at(seconds: float, body: Body) -> Event:
    return Event(body=body, version_id=f"v{next(_ids):05}", object_id=f"o-{next(_ids)}",
                 at=T0 + dt.timedelta(seconds=seconds))


def put(seconds: float, wid: str, *after: str, **fields: Any) -> Event:
    return at(seconds, Put(workload=wid, pinion="p", workflow="pasta",
                           created_at=(T0 + dt.timedelta(seconds=seconds)).isoformat(),
                           after=list(after) or None, **fields))


def run(seconds: float, wid: str, status: str = "completed") -> list[Event]:
    """A claim of ``wid`` and its ``done`` with ``status`` a second later."""
    token = f"t{next(_ids)}"
    return [at(seconds, Claim(workload=wid, token=token, owner="pinion", lease=60, key="k")),
            at(seconds + 1, Done(workload=wid, token=token, results=f"r-{token}",
                                 workflow="pasta", status=status))]


def statuses(folded: Folded) -> dict[str, str]:
    return {i: s.status.value for i, s in folded.workloads.items() if not s.deleted}


# --- a log from before: puts without the fields fold as they did -------------------------

OLD_PUT = ('queued k3v9q2mxa7 (pasta) for pinion lab by ann@laptop · caliber/2 '
           '{"b":"ann@laptop","c":"2030-01-01T00:00:00+00:00","e":"put","n":"pasta",'
           '"p":"lab","w":"k3v9q2mxa7"}')
"""A ``put`` version message as Caliber wrote it before chains (copied from a queue)."""


def test_a_put_from_before_chains_folds_as_it_did() -> None:
    event = parse("v1", "o1", OLD_PUT, T0)
    assert event is not None and isinstance(event.body, Put)
    state = fold([event]).workloads["k3v9q2mxa7"]
    assert state.status == Q and state.after == [] and state.not_before is None
    assert state.priority == 0 and state.notify is None
    assert [text for _, _, text in state.history] == ["queued by ann@laptop"]
    # and a put without the fields is written as it always was (byte for byte)
    assert message("queued k3v9q2mxa7 (pasta) for pinion lab by ann@laptop",
                   event.body) == OLD_PUT


def test_a_checkpoint_state_from_before_chains_reads_with_no_plan() -> None:
    old = ["w1", "p", "pasta", T0.isoformat(), "ann", "o1", [T0.isoformat(), "v1"], "queued",
           0, None, None, None, None, None, None, False, [], [None, None], [None, None],
           [True, {"task": 1}]]
    state = _state(json.loads(json.dumps(old)))
    assert state.after == [] and state.not_before is None and state.priority == 0
    assert _state_doc(state) == old  # written back as older readers read it
    chained = dataclasses.replace(state, after=["w0"], not_before=T0.isoformat(), priority=3,
                                  notify="http://127.0.0.1:9/h", status=W)
    doc = json.loads(json.dumps(_state_doc(chained)))
    assert len(doc) == 21 and _state(doc) == chained


def test_put_fields_round_trip_in_the_message() -> None:
    body = Put(workload="w2", pinion="p", after=["w1", "w0"], not_before=T0.isoformat(),
               priority=-2, notify="http://127.0.0.1:9/h")
    text = message("queued w2", body)
    assert '"af":["w1","w0"]' in text and '"pr":-2' in text and '"nb":"2030-01' in text
    got = parse("v", "o", text, T0)
    assert got is not None and got.body == body
    assert parse("v", "o", text.replace('"pr":-2', '"pr":"high"'), T0) is None


# --- the rules ---------------------------------------------------------------------------


def test_waiting_until_every_upstream_completed() -> None:
    log = [put(0, "a"), put(1, "b"), put(2, "c", "a", "b")]
    assert statuses(fold(log)) == {"a": "queued", "b": "queued", "c": "waiting"}
    log += run(3, "a")
    assert fold(log).workloads["c"].status == W
    log += run(5, "b", "failed")
    assert fold(log).workloads["c"].status == W  # a failed upstream keeps it waiting
    log += [at(7, Retry(workload="b", by="ann")), *run(8, "b")]
    c = fold(log).workloads["c"]
    assert c.status == Q
    assert c.history[-1][2] == "queued: workload b completed, the last it waited for"


def test_a_cancel_cascades_at_its_place_in_the_log_and_a_later_retry_revives_none() -> None:
    log = [put(0, "a"), put(1, "b", "a"), put(2, "c", "b"), put(3, "d", "a"),
           at(4, Cancel(workload="a", by="ann")), at(5, Retry(workload="a", by="ann")),
           *run(6, "a")]
    folded = fold(log)
    assert statuses(folded) == {"a": "completed", "b": "cancelled", "c": "cancelled",
                                "d": "cancelled"}
    assert folded.workloads["b"].last_error == "upstream a was cancelled"
    assert folded.workloads["c"].last_error == "upstream b was cancelled"
    # a put after the cancel, and before the retry: cancelled at once, with the reason
    late = fold([*log[:5], put(4.5, "e", "a")]).workloads["e"]
    assert late.status == C and late.last_error == "upstream a was cancelled"


def test_a_reset_cascades_and_a_put_racing_it_is_cancelled() -> None:
    log = [put(0, "a"), put(1, "b", "a"), at(2, Delete(workload="a")), put(3, "c", "a"),
           put(4, "d", "nowhere")]
    folded = fold(log)
    assert folded.workloads["b"].last_error == "upstream a was reset"
    assert folded.workloads["c"].last_error == "upstream a was reset"
    assert folded.workloads["d"].status == C
    assert folded.workloads["d"].last_error == "upstream nowhere is not in the queue"


def test_a_retry_racing_a_cancel_of_its_upstream_is_ignored() -> None:
    log = [put(0, "a"), put(1, "b", "a"), at(2, Cancel(workload="b", by="ann")),
           at(3, Cancel(workload="a", by="ann")), at(4, Retry(workload="b", by="bob"))]
    b = fold(log).workloads["b"]
    assert b.status == C and b.last_error == "cancelled by ann"
    # a retry of a chain member whose upstreams all completed is queued, else waiting
    log = [put(0, "a"), put(1, "b", "a"), at(2, Cancel(workload="b", by="ann")),
           at(3, Retry(workload="b", by="ann"))]
    assert fold(log).workloads["b"].status == W
    assert fold([*log, *run(4, "a")]).workloads["b"].status == Q


def test_a_claim_before_not_before_or_of_a_waiting_workload_does_not_apply() -> None:
    start = T0 + dt.timedelta(seconds=10)
    log = [put(0, "a", not_before=start.isoformat()), put(1, "b", "a"),
           at(2, Claim(workload="a", token="early", owner="x", lease=60, key="k")),
           at(3, Claim(workload="b", token="jump", owner="x", lease=60, key="k"))]
    folded = fold(log)
    assert statuses(folded) == {"a": "queued", "b": "waiting"}
    assert not folded.workloads["a"].due(T0 + dt.timedelta(seconds=9))
    log.append(at(10, Claim(workload="a", token="on-time", owner="x", lease=60, key="k")))
    assert fold(log).workloads["a"].status == WorkloadStatus.RUNNING


def test_a_prune_keeps_an_upstream_a_waiting_workload_runs_after() -> None:
    log = [put(0, "a"), *run(1, "a", "failed"), put(3, "b", "a"), put(4, "x"),
           *run(5, "x", "failed"), at(7, Prune(ids=["a", "x"]))]
    folded = fold(log)
    assert statuses(folded) == {"a": "failed", "b": "waiting"}
    assert folded.pruned == {"x"}


def test_a_prune_keeps_an_upstream_until_every_workload_after_it_ended() -> None:
    """Queued after a completed upstream (c for days ahead), running, then ended: a prune
    keeps the upstream while one has not ended (its pinion takes the upstream's Results for
    ``$results``), from any checkpoint too."""
    later = (T0 + dt.timedelta(days=3)).isoformat()
    claim = at(6, Claim(workload="b", token="tb", owner="pinion", lease=60, key="k"))
    steps = [
        ([put(0, "a"), *run(1, "a"), put(3, "b", "a"), put(4, "c", "a", not_before=later),
          at(5, Prune(ids=["a"]))], {"a": "completed", "b": "queued", "c": "queued"}),
        ([claim, at(7, Prune(ids=["a"]))], {"a": "completed", "b": "running", "c": "queued"}),
        ([at(8, Done(workload="b", token="tb", results="r-b", workflow="pasta",
                     status="completed")), at(9, Prune(ids=["a", "b"]))],
         {"a": "completed", "c": "queued"}),
        ([at(10, Cancel(workload="c", by="ann")), at(11, Prune(ids=["a"]))],
         {"c": "cancelled"}),
    ]
    log: list[Event] = []
    for events, expected in steps:
        log += events
        folded = fold(log)
        assert statuses(folded) == expected, expected
        assert ("a" in folded.pruned) == ("a" not in expected)
        assert any(r.workload_id == "a" for r in folded.results.values()) == (
            "a" in expected)
    whole = key_state(fold(log))
    for cut in sorted({e.order for e in log}):
        start = stored(fold([e for e in log if e.order <= cut]), cut)
        assert key_state(fold([e for e in log if e.order > cut], start=start)) == whole, cut


# --- every reader, from any checkpoint, folds the same ------------------------------------

IDS = ("a", "b", "c", "d")
AFTER = {"c": ("a",), "d": ("b", "c")}


def chain_log(rng: random.Random, tells: bool = False) -> list[Event]:
    """Puts of a, b, c after a, d after b and c; then claims, runs, cancels, retries, resets
    and prunes in any order, and a put of e after d and a among them. With ``tells``: the
    events marked ``te`` or not, and ``tell`` takes of two pinions of one name racing."""
    events = [put(n, wid, *AFTER.get(wid, ()), priority=rng.choice([None, 1]))
              for n, wid in enumerate(IDS)]
    for _ in range(rng.randrange(8, 30)):
        wid, token = rng.choice(IDS), rng.choice("xyz")
        te = rng.choice([None, True]) if tells else None
        body: Body = rng.choice([
            Claim(workload=wid, token=token, owner=token,
                  lease=rng.choice([60, 0.5]) if tells else 60, key="k"),
            Done(workload=wid, token=token, results=f"r{next(_ids)}", workflow="pasta",
                 status=rng.choice(["completed", "completed", "failed", "cancelled"]),
                 tell=te),
            Fail(workload=wid, token=token, reason="killed", retry=rng.random() < 0.5,
                 tell=te),
            Cancel(workload=wid, by="ann", tell=te),
            Retry(workload=wid, by="ann"),
            Delete(workload=wid, tell=te),
            Prune(ids=[rng.choice(IDS)]),
            *([Expire(workload=wid, token=token, max_attempts=1, tell=te),
               Release(workload=wid, token=token, reason="stop", tell=te),
               Tell(pinion="p", token=f"tell-{next(_ids)}",
                    ids=rng.sample([*IDS, "e"], rng.randrange(1, 6)))] if tells else []),
        ])
        events.append(at(rng.uniform(4, 40), body))
    events.append(put(rng.uniform(4, 40), "e", "d", "a"))  # whatever became of them by then
    return events + rng.sample(events, 2)  # versions listed twice


@pytest.mark.parametrize("tells", [False, True])
def test_chains_fold_the_same_from_any_checkpoint_and_keep_their_rules(tells: bool) -> None:
    pytest.importorskip("specklepy")
    for seed in range(60):
        rng = random.Random(seed)
        events = chain_log(rng, tells)
        whole = fold(events)
        for s in whole.workloads.values():  # waiting: only for what may still complete
            if s.status == W and not s.deleted:
                assert pending(whole, s) and blocked(whole, s) is None, (seed, s.id)
            # an untold end is an end; taken, it is told; a log without te has none
            assert s.untold is None or (s.status in FINISHED and not s.deleted), (seed, s.id)
            assert s.told is None or s.status in FINISHED, (seed, s.id)
            assert s.untold is None or s.told is None, (seed, s.id)
            assert tells or (s.untold is None and s.told is None), (seed, s.id)
        shuffled = list(events)
        rng.shuffle(shuffled)
        assert key_state(fold(shuffled)) == key_state(whole), seed
        for cut in sorted({e.order for e in events})[::3]:
            start = stored(fold([e for e in events if e.order <= cut]), cut)
            rest = [e for e in events if e.order > cut]
            assert key_state(fold(rest, start=start)) == key_state(whole), (seed, cut)
