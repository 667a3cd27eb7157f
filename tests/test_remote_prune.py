"""``results prune`` on the remote queue: the versions of pruned workloads go, checkpoints
stop holding them, and every reader folds the live workloads exactly as before.

The fold tests prove it on the events themselves; the others on a Speckle server, with
checkpoints every few events (``often``) so that a short log shows what a long one would."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

pytest.importorskip("specklepy")

from caliber.cli import main
from caliber.queue.speckle import events as ev
from caliber.queue.speckle.checkpoint import from_object, to_object
from caliber.queue.speckle.log import Folded, fold
from caliber.queue.workload import WorkloadStatus
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_remote_checkpoints import finish, often, seen, whole_log
from tests.test_remote_queue import results_for, workload

pytestmark = pytest.mark.speckle
__all__ = ["often", "remote", "speckle_server", "speckle_token", "speckle_userdata"]

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LATER = dt.timedelta(hours=1)


# --- the fold ---------------------------------------------------------------------------------


class Log:
    """Events written one after the other, a second apart (server order)."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def add(self, body: ev.Body, object_id: str = "obj") -> None:
        n = len(self.events)
        self.events.append(ev.Event(body=body, version_id=f"v{n:04d}", object_id=object_id,
                                    at=T0 + dt.timedelta(seconds=n)))

    def run(self, wid: str, *, ok: bool = True, pinion: str = "p1") -> None:
        self.add(ev.Put(workload=wid, pinion=pinion, workflow="pasta"), f"w-{wid}")
        self.add(ev.Claim(workload=wid, token=f"t-{wid}", owner="me", lease=60))
        self.add(ev.Done(workload=wid, token=f"t-{wid}", results=f"r-{wid}",
                         workflow="pasta", pinion=pinion,
                         status="completed" if ok else "failed"), f"r-{wid}")

    def without(self, ids: set[str]) -> list[ev.Event]:
        """The log after the versions about ``ids`` were deleted (what prune deletes)."""
        return [e for e in self.events
                if getattr(e.body, "workload", None) not in ids
                and getattr(e.body, "results", None) not in ids]


def live(folded: Folded) -> dict[str, Any]:
    return {s.id: s for s in folded.live()}


def refs(folded: Folded) -> set[str]:
    return set(folded.every_result())


def test_prune_in_the_fold_removes_only_finished_workloads_and_live_ones_fold_the_same() -> None:
    log = Log()
    for wid in ("old1", "old2", "kept"):
        log.run(wid)
    log.run("again", ok=False)
    log.add(ev.Retry(workload="again", by="ann"))  # queued again before the prune
    log.add(ev.Put(workload="waits", pinion="p1", workflow="pasta"), "w-waits")
    log.add(ev.Put(workload="runs", pinion="p1", workflow="pasta"), "w-runs")
    log.add(ev.Claim(workload="runs", token="t-runs", owner="me", lease=3600))
    log.add(ev.SavedResults(results="r-free", workflow="pasta"), "r-free")
    before = fold(log.events)
    log.add(ev.Prune(ids=["old1", "old2", "again", "runs", "r-free"]))
    after = fold(log.events)
    assert set(live(before)) - set(live(after)) == {"old1", "old2"}  # not the retried one
    assert {k: v for k, v in live(before).items() if k not in ("old1", "old2")} == live(after)
    assert refs(before) - refs(after) == {"r-old1", "r-old2", "r-free"}
    # the versions about what went are deleted: a reader of the whole log folds the same
    deleted = fold(log.without({"old1", "old2", "r-free"}))
    assert live(deleted) == live(after) and refs(deleted) == refs(after)
    # events that come later about a pruned workload are ignored, never resurrect it
    log.add(ev.Resign(workload="old1", secret="x", key="k"))
    log.add(ev.Put(workload="old1", pinion="p1", workflow="pasta"))
    assert live(fold(log.events)) == live(after)


def test_a_checkpoint_from_before_a_prune_and_one_after_it_fold_the_same() -> None:
    """A reader starting at a checkpoint that still archives the pruned workloads folds the
    prune on top; the next checkpoint's archive no longer holds them."""
    from caliber.queue.speckle import adapter as sp

    store: dict[str, dict[str, Any]] = {}

    def save(folded: Folded, upto: ev.Event) -> Folded:
        root, objects = sp.serialise(to_object(folded, upto.order,
                                               folded.archive.raw() if folded.archive else
                                               ([], [])))
        store.update({k: json.loads(v) for k, v in objects.items()})
        return from_object(store[root], lambda ids: {i: store[i] for i in ids if i in store})

    log = Log()
    for n in range(6):
        log.run(f"w{n}")
    log.add(ev.Put(workload="waits", pinion="p1", workflow="pasta"), "w-waits")
    first = save(fold(log.events), log.events[-1])  # archives w0..w5
    cut = len(log.events)
    log.add(ev.Prune(ids=["w0", "w1", "w2"]))
    log.run("w6")
    whole = fold(log.events)
    on_top = fold(log.events[cut:], start=first)  # a reader from the older checkpoint
    assert live(on_top) == live(whole) and refs(on_top) == refs(whole)
    assert {"w0", "w1", "w2"}.isdisjoint(live(whole))
    second = save(on_top, log.events[-1])
    assert second.archive is not None
    assert {"w0", "w1", "w2"}.isdisjoint(second.archive.ids | set(second.archive.states()))
    assert {"r-w0", "r-w1", "r-w2"}.isdisjoint(second.archive.results())
    assert live(second) == live(whole) and refs(second) == refs(whole)


def test_a_prune_in_the_fold_leaves_an_untold_end_until_a_tell_takes_it() -> None:
    """Every end is told once: a ``prune`` naming a workload whose end is untold at that point
    of the log (cancelled while queued, and down its chain) leaves it, with its Results, for
    every reader, from any checkpoint; one after a ``tell`` took it removes it."""
    from tests.test_remote_log import key_state, stored

    log = Log()
    log.run("ran", ok=False)
    log.add(ev.Retry(workload="ran", by="ann"))
    log.add(ev.Cancel(workload="ran", by="ann", tell=True))  # its Results: r-ran
    log.add(ev.Put(workload="gone", pinion="p1", workflow="pasta"), "w-gone")
    log.add(ev.Cancel(workload="gone", by="ann"))  # no te: told (as an earlier Caliber's)
    log.add(ev.Put(workload="up", pinion="p1", workflow="pasta"), "w-up")
    log.add(ev.Put(workload="late", pinion="p1", workflow="pasta", after=["up"]), "w-late")
    log.add(ev.Cancel(workload="up", by="ann", tell=True))  # and late, down the chain
    cut = log.events[-1].order
    log.add(ev.Prune(ids=["ran", "gone", "up", "late"]))
    kept = fold(log.events)
    assert set(live(kept)) == {"ran", "up", "late"}
    assert "r-ran" in refs(kept) and kept.pruned == {"gone"}
    log.add(ev.Tell(pinion="p1", token="A", ids=["ran", "late"]))
    log.add(ev.Prune(ids=["ran", "up", "late"]))
    whole = fold(log.events)
    assert set(live(whole)) == {"up"} and "r-ran" not in refs(whole)
    for at in (cut, log.events[-3].order, log.events[-2].order):  # readers from checkpoints
        start = stored(fold([e for e in log.events if e.order <= at]), at)
        rest = [e for e in log.events if e.order > at]
        assert key_state(fold(rest, start=start)) == key_state(whole), at
    log.add(ev.Tell(pinion="p1", token="B", ids=["up"]))
    log.add(ev.Prune(ids=["up"]))
    assert live(fold(log.events)) == {}


# --- on a Speckle server ------------------------------------------------------------------------


def test_prune_deletes_the_versions_of_pruned_workloads_and_readers_agree(
        remote: Remote, often: None) -> None:
    with remote.backend() as writer, remote.backend() as stale:
        old = finish(writer, 8)
        writer.put(waits := workload("p2"))
        writer.put(runs := workload("p2"))
        claim = writer.claim("p2", "me", 60, "k")
        assert claim is not None and claim.workload.id == waits.id
        stale.list_workloads()  # a reader holding the state from before, in memory
        expected = seen(writer.list_workloads(pinion="p2"))
        dry = writer.prune(dt.datetime.now(dt.UTC) + LATER, pinion="p1", dry_run=True)
        count = len(remote.versions())
        assert set(dry.workloads) == set(old) and dry.versions >= 3 * len(old)
        pruned = writer.prune(dt.datetime.now(dt.UTC) + LATER, pinion="p1")
        assert (set(pruned.workloads), pruned.versions) == (set(old), dry.versions)
        left = remote.versions()
        assert len(left) < count
        about = [json.loads(v.message.split("caliber/2 ", 1)[1]) for v in left
                 if "caliber/2 " in v.message]
        assert not any(d.get("w") in old for d in about)  # every version about them is gone
        assert all(seen(r.list_workloads()) == expected for r in (writer, stale))
        assert stale.list_results() == [] and stale.find_results(workload_id=old[0]) is None
        writer.complete(claim, results_for(waits.id, {"x": 2}))  # live work goes on
        finish(writer, 3)  # more checkpoints, now without the pruned workloads
        newest = [v for v in remote.versions() if v.message.startswith("checkpoint")][-1]
        assert newest.created_at > left[-1].created_at
    with remote.backend() as reader:
        got = reader.list_workloads()
        assert reader.view.cutoff is not None  # it started from a checkpoint
        assert not set(old) & {w.id for w in got} and not set(old) & reader.view.base.archive.ids
        whole = whole_log(remote)
        assert seen(got) == [(s.id, s.status, s.attempts, s.results_id, s.history)
                             for s in whole.live()]
        assert reader.get(runs.id).status == WorkloadStatus.QUEUED


def test_prune_through_the_command_on_the_remote_queue(
        remote: Remote, capsys: pytest.CaptureFixture[str]) -> None:
    with remote.backend() as writer:
        done = finish(writer, 2)
    with pytest.raises(SystemExit) as info:
        main(["results", "prune", "--older-than", "0s", "--project", remote.project])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("removed 2 finished workloads and 2 results from before ")
    assert "of records" not in out and "versions of the remote queue" in out
    with remote.backend() as reader:
        assert not {w.id for w in reader.list_workloads()} & set(done)
