"""The remote queue's fold: the same events give the same state, in any arrival order."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import random
from typing import Any

import pytest

from caliber.queue.speckle.checkpoint import archived_texts, from_object, to_object
from caliber.queue.speckle.events import (
    KINDS,
    Cancel,
    Checkpoint,
    Claim,
    Delete,
    Done,
    Event,
    Expire,
    Fail,
    Put,
    Release,
    Renew,
    Resign,
    Retry,
    SavedResults,
    Tell,
    Unknown,
    decode,
    message,
    parse,
)
from caliber.queue.speckle.log import Folded, fold
from caliber.queue.workload import WorkloadStatus

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
_ids = itertools.count()


def ev(seconds: float, kind: str, **data: Any) -> Event:
    """An event as format 1 (the first remote queues) wrote it."""
    body = decode({"e": kind, "w": "w1", **data}, 1)
    assert body is not None
    return Event(body=body, version_id=f"v{next(_ids):04}", object_id="obj",
                 at=T0 + dt.timedelta(seconds=seconds))


def put(seconds: float = 0) -> Event:
    return ev(seconds, "put", p="p", n="pasta", c=T0.isoformat(), b="ann@laptop")


def claim(seconds: float, token: str, lease: float = 60) -> Event:
    return ev(seconds, "claim", t=token, o=f"pinion-{token}", l=lease, k="key")


def test_messages_round_trip() -> None:
    body = Claim(workload="w1", token="a", owner="x", lease=60, key=None)
    text = message("claimed w1 (pasta) by x caliber/2 {tricky}", body)
    assert text.startswith("claimed w1 (pasta) by x caliber/ 2 {tricky} · caliber/2 {")
    assert text.endswith('{"e":"claim","l":60,"o":"x","t":"a","w":"w1"}')
    got = parse("v1", "o1", text, T0)
    assert got is not None and got.body == body
    assert parse("v2", "o1", "a model from a design tool", T0) is None
    assert parse("v3", "o1", "broken · caliber/2 {not json", T0) is None
    assert parse("v4", "o1", 'bad · caliber/2 {"e":"claim","w":"w1","t":7}', T0) is None


def test_every_kind_round_trips_and_each_key_means_one_thing() -> None:
    meaning: dict[str, str] = {}
    for cls in KINDS.values():
        for name, key in cls.keys.items():
            assert meaning.setdefault(key, name) == name, (cls.kind, key)
    bodies = [Put(workload="w", pinion="p", workflow="pasta", created_at=T0.isoformat(),
                  queued_by="ann@laptop"),
              Release(workload="w", token="t", reason="no", mismatch="k1"),
              Done(workload="w", token="t", results="r", status="failed", error="boom"),
              Expire(workload="w", token="t", max_attempts=3),
              Delete(workload="w", force=True), Resign(workload="w", secret="s" * 64, key="k"),
              Checkpoint(cutoff_at=T0.isoformat(), cutoff_version="v9", workloads=4),
              Cancel(workload="w", by="ann", tell=True),
              Tell(pinion="p", token="t", ids=["w", "v"])]
    for body in bodies:
        got = parse("v", "o", message("x", body), T0)
        assert got is not None and got.body == body


def test_format_1_messages_are_still_read() -> None:
    # format 1 used "m" for both a mismatching key and the maximum attempts
    old = 'x · caliber/1 {"e":"expire","w":"w1","t":"a","m":3}'
    assert parse("v", "o", old, T0).body == Expire(  # type: ignore[union-attr]
        workload="w1", token="a", max_attempts=3)
    old = 'x · caliber/1 {"e":"resign","w":"w1","s":"secret","k":"key"}'
    assert parse("v", "o", old, T0).body == Resign(  # type: ignore[union-attr]
        workload="w1", secret="secret", key="key")


def test_a_newer_format_or_kind_is_kept_as_unknown_not_dropped() -> None:
    for text, version in (('x · caliber/3 {"e":"claim","w":"w1","t":"a"}', 3),
                          ('x · caliber/2 {"e":"pause","w":"w1"}', 2)):
        event = parse("v9", "o", text, T0 + dt.timedelta(seconds=5))
        assert event is not None and isinstance(event.body, Unknown)
        assert event.body.format == version
        assert "newer Caliber (format" in event.body.describe()
        assert event.body.describe().endswith("upgrade Caliber")
        folded = fold([put(), event])
        assert folded.unknown == [event.body] and len(folded.live()) == 1


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
    assert fold([put(), a]).workloads["w1"].lease.token == "a"  # type: ignore[union-attr]
    assert fold([put(), a, b]).workloads["w1"].lease.token == "b"  # type: ignore[union-attr]


@pytest.mark.parametrize("lease", [None, 1e13, float("inf")])
def test_a_claim_without_a_usable_lease_runs_out_at_once(lease: float | None) -> None:
    # a claim message edited by hand: no expiry, or one that cannot be a date (as a local row
    # set running with no lease): taken back as from a dead pinion, never held for ever
    first = ev(1, "claim", t="a", o="pinion-a", k="key",
               **({} if lease is None else {"l": lease}))
    state = fold([put(), first, claim(2, "b")]).workloads["w1"]
    assert state.lease is not None and state.lease.token == "b" and state.attempts == 2
    assert any("lease of pinion-a ran out (attempt 1 lost)" in text
               for _at, _status, text in state.history)


def test_expired_lease_is_taken_over_and_the_old_holder_is_ignored() -> None:
    events = [put(), claim(1, "a", lease=5), claim(3, "b"), claim(7, "b2"),
              ev(8, "renew", t="a", l=60), ev(9, "release", t="a", y="stop"),
              claim(10, "c")]
    state = fold(events).workloads["w1"]
    assert state.lease is not None and state.lease.token == "b2" and state.attempts == 2
    assert "lease of pinion-a ran out (attempt 1 lost)" in [text for _, _, text in state.history]


def test_renewal_keeps_the_lease() -> None:
    events = [put(), claim(1, "a", lease=5), ev(4, "renew", t="a", l=5), claim(8, "b")]
    assert fold(events).workloads["w1"].lease.token == "a"  # type: ignore[union-attr]


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
    assert state.secret == "x" * 64 and state.mismatch is None and state.lease is not None


def test_fail_retry_and_delete() -> None:
    events = [put(), claim(1, "a"), ev(2, "fail", t="a", y="timed out", q=True)]
    state = fold(events).workloads["w1"]
    assert (state.status, state.last_error, state.attempts) == (
        WorkloadStatus.QUEUED, "timed out", 1)
    gone = fold([*events, ev(3, "delete"), claim(4, "b")]).workloads["w1"]
    assert gone.deleted and gone.lease is None
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


# --- checkpoints: a reader starting from one folds exactly what a reader of the whole log does


def stored(folded: Folded, cutoff: tuple[dt.datetime, str]) -> Folded:
    """``folded`` written as a checkpoint object and read back, as another reader would."""
    pytest.importorskip("specklepy")
    from caliber.queue.speckle import adapter as sp

    root, objects = sp.serialise(to_object(folded, cutoff, archived_texts(folded)))
    found = {i: json.loads(text) for i, text in objects.items()}
    return from_object(found[root], lambda ids: {i: found[i] for i in ids if i in found})


def random_log(rng: random.Random) -> list[Event]:
    """Events about three workloads, with racing claims, stale writes, and expired leases;
    cancels, retries and ``tell`` takes racing each other, with and without ``te``."""
    events, tokens = [], ["a", "b", "c", "d"]
    for n, wid in enumerate(("w1", "w2", "w3")):
        events.append(Event(body=Put(workload=wid, pinion="p", workflow="pasta",
                                     created_at=(T0 + dt.timedelta(seconds=n)).isoformat()),
                            version_id=f"v{next(_ids):04}", object_id=f"o{wid}",
                            at=T0 + dt.timedelta(seconds=n)))
    for _ in range(rng.randrange(5, 30)):
        wid, token = rng.choice(["w1", "w2", "w3"]), rng.choice(tokens)
        te = rng.choice([None, True])
        body = rng.choice([
            Claim(workload=wid, token=token, owner=f"pinion-{token}",
                  lease=rng.choice([1, 3, 60]), key=rng.choice(["k", "k2"])),
            Claim(workload=wid, token=token, owner=f"pinion-{token}", lease=5, key="k"),
            Renew(workload=wid, token=token, lease=rng.choice([1, 60])),
            Release(workload=wid, token=token, reason="stop", mismatch=rng.choice([None, "k2"])),
            Done(workload=wid, token=token, results=f"r{token}{wid}", workflow="pasta",
                 status=rng.choice(["completed", "failed", "cancelled"])),
            Fail(workload=wid, token=token, reason="timed out", retry=rng.random() < 0.5,
                 tell=te),
            Expire(workload=wid, token=token, max_attempts=rng.choice([1, 2]), tell=te),
            Resign(workload=wid, secret="s" * 64, key="k2"),
            Delete(workload=wid, tell=te),
            SavedResults(results=f"s{next(_ids)}", workflow="pasta", status="completed"),
            Cancel(workload=wid, by="ann", tell=te),
            Retry(workload=wid, by="ann"),
            Tell(pinion=rng.choice(["p", "p", "other"]), token=f"tell-{token}",
                 ids=rng.sample(["w1", "w2", "w3"], rng.randrange(1, 4))),
        ])
        at = T0 + dt.timedelta(seconds=rng.uniform(3, 40))
        events.append(Event(body=body, version_id=f"v{next(_ids):04}", object_id="o", at=at))
    events += rng.sample(events, 3)  # versions listed twice
    return events


def key_state(folded: Folded) -> Any:
    return ({i: dataclasses.astuple(s) for i, s in folded.every_workload().items()},
            folded.every_result())


def test_a_checkpoint_at_any_cutoff_gives_the_state_of_the_whole_log() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        events = random_log(rng)
        whole = key_state(fold(events))
        for cut in sorted({e.order for e in events}):
            before = [e for e in events if e.order <= cut]
            after = [e for e in events if e.order > cut]
            start = stored(fold(before), cut)
            snapshot = key_state(start)
            rng.shuffle(after)  # the versions after the cutoff, in any listing order
            marker = Event(body=Checkpoint(cutoff_at=cut[0].isoformat(), cutoff_version=cut[1]),
                           version_id="vzzzz", object_id="ck", at=cut[0] + dt.timedelta(1))
            assert key_state(fold([*after, marker], start=start)) == whole, (seed, cut)
            assert key_state(start) == snapshot  # the checkpoint's state is left as it was
            # a second checkpoint written from the first (its archive reused), later on
            later = rng.choice(sorted({e.order for e in events}))
            if later > cut:
                second = stored(fold([e for e in after if e.order <= later], start=start),
                                later)
                rest = [e for e in events if e.order > later]
                assert key_state(fold(rest, start=second)) == whole, (seed, cut, later)


def test_claims_racing_a_checkpoint() -> None:
    # a claimed just before the cutoff, b raced it (after the cutoff, before the checkpoint
    # was written), c claimed after the checkpoint: every reader says a holds the workload
    a, b = claim(10, "a", lease=60), claim(11, "b")
    cut = a.order
    start = stored(fold([put(), a]), cut)
    c = claim(20, "c")
    got = fold([c, b], start=start).workloads["w1"]
    assert got.lease is not None and got.lease.token == "a" and got.attempts == 1
    # a's lease ran out: the first claim after that wins, on both sides of the cutoff
    short = claim(10, "a", lease=0.5)
    start = stored(fold([put(), short]), short.order)
    for order in ([b, c], [c, b]):
        got = fold(order, start=start).workloads["w1"]
        assert got.lease is not None and got.lease.token == "b" and got.attempts == 2
    # a completes after the cutoff; a stale completion of b cannot replace it
    done_a = ev(12, "done", t="a", r="ra", s="completed", n="pasta")
    done_b = ev(13, "done", t="b", r="rb", s="completed", n="pasta")
    start = stored(fold([put(), a]), cut)
    got = fold([done_b, b, done_a], start=start)
    assert got.workloads["w1"].results_id == "ra" and list(got.results) == ["ra"]


# --- every end told once: untold ends, and the first ``tell`` in the log takes them -------

OLD_ENDS = [
    'cancel w1 (pasta) asked by ann@laptop · caliber/2 {"e":"cancel","v":"ann@laptop",'
    '"w":"w1"}',
    'failed w2 (pasta): lease ran out 1 times (pinion died?) · caliber/2 {"a":1,'
    '"e":"expire","t":"tb","w":"w2"}',
    'deleted w3 (pasta) · caliber/2 {"e":"delete","g":false,"w":"w3"}',
    'cancelled w4 (pasta): cancelled by ann@laptop · caliber/2 {"e":"done","n":"pasta",'
    '"r":"r4","s":"cancelled","t":"td","w":"w4","x":"cancelled by ann@laptop"}',
]
"""Ending events as Caliber wrote them before the told mark (made by that version)."""


def on(seconds: float, body: Any) -> Event:
    return Event(body=body, version_id=f"v{next(_ids):04}", object_id="o",
                 at=T0 + dt.timedelta(seconds=seconds))


def queued(seconds: float, wid: str, *after: str, pinion: str = "p") -> Event:
    return on(seconds, Put(workload=wid, pinion=pinion, workflow="pasta",
                           created_at=T0.isoformat(), after=list(after) or None))


def ends_log(tell: bool | None) -> list[Event]:
    """w1 cancelled while queued, w2 failed by expire, w3 reset, w4's run cancelled: each
    with a workload waiting after it (x1..x4), with the told mark or as written before."""
    log = [queued(0, f"w{n}") for n in range(1, 5)]
    log += [queued(1, f"x{n}", f"w{n}") for n in range(1, 5)]
    log += [on(2, Claim(workload="w2", token="tb", owner="dead", lease=1, key="k")),
            on(2, Claim(workload="w4", token="td", owner="pin", lease=60, key="k"))]
    texts = [f"{t[:-1]},\"te\":true}}" if tell else t for t in OLD_ENDS]
    for n, text in enumerate(texts):
        event = parse(f"v{next(_ids):04}", "o", text, T0 + dt.timedelta(seconds=5 + n))
        assert event is not None
        log.append(event)
    return log


def untold(folded: Folded) -> list[str]:
    found = [s for s in folded.workloads.values() if s.untold is not None]
    return [s.id for s in sorted(found, key=lambda s: (s.untold, s.order))]  # type: ignore


def test_a_log_written_before_the_told_mark_has_nothing_untold() -> None:
    old = fold(ends_log(tell=None))
    assert {i: s.status.value for i, s in old.workloads.items() if not s.deleted} == {
        "w1": "cancelled", "w2": "failed", "w4": "cancelled", "x1": "cancelled",
        "x2": "waiting", "x3": "cancelled", "x4": "cancelled"}
    assert untold(old) == [] and all(s.told is None for s in old.workloads.values())
    # and those events are written as they were, byte for byte, without the mark
    for text in OLD_ENDS:
        event = parse("v", "o", text, T0)
        assert event is not None and message(text.split(" · ")[0], event.body) == text
    # the same events with the mark: every end no pinion was there for is untold, in log
    # order (the end of w4 its pinion tells; a reset one is gone: nothing to tell)
    new = fold(ends_log(tell=True))
    assert key_state(new)[0].keys() == key_state(old)[0].keys()
    assert untold(new) == ["w1", "x1", "w2", "x3", "x4"]
    assert [s.status for s in fold(ends_log(True)).workloads.values()] == [
        s.status for s in old.workloads.values()]


def test_the_first_tell_in_the_log_takes_an_end_in_any_arrival_order() -> None:
    log = ends_log(tell=True)
    first = on(20, Tell(pinion="p", token="A", ids=["w1", "x1", "w2"]))
    second = on(21, Tell(pinion="p", token="B", ids=["x1", "w2", "x3", "x4", "w4"]))
    other = on(19, Tell(pinion="q", token="Q", ids=["x4"]))  # not its pinion's: no effect
    events = [*log, first, second, other, first]  # (a version listed twice)
    expected = fold(events)
    told = {i: s.told for i, s in expected.workloads.items() if s.told}
    assert told == {"w1": "A", "x1": "A", "w2": "A", "x3": "B", "x4": "B"}
    assert untold(expected) == []
    before = fold(log)
    for wid in told:  # a tell changes nothing else: the history ends at the end it told
        assert expected.workloads[wid].history == before.workloads[wid].history
    for seed in range(20):
        shuffled = list(events)
        random.Random(seed).shuffle(shuffled)
        assert key_state(fold(shuffled)) == key_state(expected), seed


def test_retry_clears_the_mark_and_the_next_end_is_told_again() -> None:
    log = [queued(0, "w"), on(1, Cancel(workload="w", by="ann", tell=True)),
           on(2, Tell(pinion="p", token="A", ids=["w"]))]
    assert fold(log).workloads["w"].told == "A"
    log.append(on(3, Retry(workload="w", by="ann")))
    state = fold(log).workloads["w"]
    assert (state.status, state.untold, state.told) == (WorkloadStatus.QUEUED, None, None)
    stale = on(4, Tell(pinion="p", token="B", ids=["w"]))  # nothing untold: no effect
    log += [stale, on(5, Cancel(workload="w", by="bob", tell=True))]
    state = fold(log).workloads["w"]
    assert state.untold == log[-1].order and state.told is None
    log.append(on(6, Tell(pinion="p", token="C", ids=["w"])))
    assert fold(log).workloads["w"].told == "C"
    # reset after its end: gone, nothing to tell
    gone = fold([*log[:2], on(2, Delete(workload="w", tell=True))]).workloads["w"]
    assert gone.deleted and gone.untold is None


def test_what_a_pinion_ends_itself_is_told_and_its_chain_is_not() -> None:
    for end in (Done(workload="w", token="t", results="r", workflow="pasta",
                     status="cancelled", tell=True),
                Fail(workload="w", token="t", reason="killed", retry=True, tell=True),
                Release(workload="w", token="t", reason="cancelled before it ran",
                        tell=True)):
        log = [queued(0, "w"), queued(1, "x", "w"),
               on(2, Claim(workload="w", token="t", owner="pin", lease=60, key="k")),
               on(3, Cancel(workload="w", by="ann", tell=True)), on(4, end)]
        folded = fold(log)
        assert folded.workloads["w"].status == WorkloadStatus.CANCELLED, end
        assert untold(folded) == ["x"], end  # the cancel only asked; the pinion tells of w
    ran_out = [queued(0, "w"),
               on(1, Claim(workload="w", token="t", owner="dead", lease=1, key="k")),
               on(5, Cancel(workload="w", by="ann", tell=True))]  # its lease ran out
    assert untold(fold(ran_out)) == ["w"]


def test_an_untold_end_stays_with_the_unfinished_in_a_checkpoint() -> None:
    pytest.importorskip("specklepy")
    log = ends_log(tell=True)
    cut = max(e.order for e in log)
    start = stored(fold(log), cut)  # read back: the archive not loaded
    assert untold(start) == ["w1", "x1", "w2", "x3", "x4"]
    assert start.archive is not None and not start.archive.ids & set(untold(start))
    taken = on(30, Tell(pinion="p", token="A", ids=untold(start)))
    again = stored(fold([taken], start=start), taken.order)
    assert untold(again) == [] and again.archive is not None
    assert {"w1", "x1", "w2", "x3", "x4"} <= again.archive.ids  # told: archived now
    assert again.find("x4").told == "A"  # type: ignore[union-attr]
    assert key_state(again) == key_state(fold([*log, taken]))


def test_a_checkpoint_state_keeps_the_mark_and_one_from_before_has_none() -> None:
    from caliber.queue.speckle.checkpoint import _state, _state_doc

    before = ["w1", "p", "pasta", T0.isoformat(), "ann", "o1", [T0.isoformat(), "v1"],
              "cancelled", 0, None, None, None, None, "cancelled by ann", None, False, [],
              [None, None], [None, None], [None, None], [["w0"], None, 0, None]]
    state = _state(json.loads(json.dumps(before)))  # a checkpoint from before the mark
    assert state.untold is None and state.told is None
    assert _state_doc(state) == before  # written back as it was
    for marked in (dataclasses.replace(state, untold=(T0, "v7")),
                   dataclasses.replace(state, told="A")):
        doc = json.loads(json.dumps(_state_doc(marked)))
        assert len(doc) == 22 and _state(doc) == marked
