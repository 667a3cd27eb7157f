"""Every end told once on the remote queue: ``take_ended`` writes a ``tell`` only when the
fold has untold ends, and of pinions of one name racing to take them, the first ``tell`` in
the log wins each (the contract itself: tests/contract/test_announce_contract.py)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest

pytest.importorskip("specklepy")

from caliber.queue.speckle import events as ev
from caliber.queue.workload import WorkloadStatus
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_remote_checkpoints import often, whole_log
from tests.test_remote_queue import results_for, workload

pytestmark = pytest.mark.speckle
__all__ = ["often", "remote", "speckle_server", "speckle_token", "speckle_userdata"]
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def tells(remote: Remote) -> list[ev.Tell]:
    found = [ev.parse(v.id, v.object_id, v.message, T0) for v in remote.versions()]
    return [e.body for e in found if e is not None and isinstance(e.body, ev.Tell)]


def cancelled(backend: Any, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        backend.put(w := workload())
        backend.cancel(w.id, "ann@laptop")
        ids.append(w.id)
    return ids


def test_two_pinions_of_one_name_racing_each_tell_of_what_they_won(remote: Remote) -> None:
    with remote.backend() as cli, remote.backend() as one, remote.backend() as two:
        ids = cancelled(cli, 3)
        one.refresh()
        two.refresh()  # both looked: three untold ends in both views
        got = one.take_ended("p1", limit=2)
        assert [w.id for w in got] == ids[:2]  # oldest end first
        assert {w.status for w in got} == {WorkloadStatus.CANCELLED}
        # two's view is from before one's tell: its tell names all three, later in the log
        late = two.take_ended("p1")
        assert [w.id for w in late] == ids[2:]
        assert [t.ids for t in tells(remote)] == [ids[:2], ids]
        assert f"p1 tells of the end of 2 workloads: {ids[0]} {ids[1]} · caliber/2 " in [
            v.message for v in remote.versions()][-2]
        one.refresh()
        assert one.take_ended("p1") == [] and two.take_ended("p1") == []
        assert len(tells(remote)) == 2  # nothing untold: nothing written
        assert [w.id for w in got] == [w.id for w in cli.list_workloads()][:2]


def test_pinions_racing_in_threads_tell_of_each_end_once(remote: Remote) -> None:
    with remote.backend() as cli:
        ids = cancelled(cli, 8)
    taken: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def pinion() -> None:
        try:
            with remote.backend(settle=0.05) as mine:
                mine.refresh()
                start.wait()
                while got := mine.take_ended("p1", limit=3):
                    taken.extend(w.id for w in got)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pinion) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(taken) == sorted(ids)  # each once, none twice
    named = [i for t in tells(remote) for i in t.ids]
    assert set(named) == set(ids)  # (some perhaps named by two tells: the first won)


def test_nothing_untold_costs_no_request_and_writes_nothing(remote: Remote) -> None:
    with remote.backend() as pinion:
        assert pinion.take_ended("p1") == []  # its first look reads the log
        pinion.put(w := workload())
        claim = pinion.claim("p1", "me", 60, "k")
        assert claim is not None
        pinion.complete(claim, results_for(w.id, {"x": 1}))
        pinion.put(v := workload())
        claim = pinion.claim("p1", "me", 60, "k")
        assert claim is not None and claim.workload.id == v.id
        pinion.fail(claim, "killed", retry=False)  # ended by its pinion: told by it
        assert pinion.claim("p1", "me", 60, "k") is None  # a look
        count, requests = len(remote.versions()), len(remote.server.log)
        assert pinion.take_ended("p1") == []
        assert len(remote.server.log) == requests and len(remote.versions()) == count
    messages = [m.message for m in remote.versions()]
    assert not any('"te"' in m for m in messages)  # a run's end is written as before


def test_a_log_written_before_the_mark_has_nothing_to_tell(remote: Remote) -> None:
    with remote.backend() as cli:
        cli.put(a := workload())
        cli.put(b := workload(after=[a.id]))
        # the cancel, as Caliber wrote it before the told mark: a and b ended untold then
        cli._write(f"cancel {a.id} (pasta) asked by ann@laptop",
                   ev.Cancel(workload=a.id, by="ann@laptop"))
        assert cli.get(b.id).status == WorkloadStatus.CANCELLED
    assert not any('"te"' in v.message for v in remote.versions())
    with remote.backend() as pinion:
        count = len(remote.versions())
        assert pinion.take_ended("p1") == []
        assert len(remote.versions()) == count


def test_untold_ends_across_checkpoints(remote: Remote, often: None) -> None:
    """An untold end stays with the unfinished workloads of a checkpoint: a pinion starting
    there takes it without reading the archive, and its tell folds the same for everyone."""
    with remote.backend() as cli:
        ids = cancelled(cli, 4)
        for _ in range(4):  # finished ones, for the archive, and checkpoints after the ends
            cli.put(w := workload("p2"))
            claim = cli.claim("p2", "me", 60, "k")
            assert claim is not None
            cli.complete(claim, results_for(w.id, {"x": 1}))
    assert any(v.message.startswith("checkpoint: ") for v in remote.versions())
    with remote.backend() as pinion:
        pinion.refresh()  # from the newest checkpoint, which holds the untold ends
        assert pinion.view.cutoff is not None
        assert {s.id for s in pinion.view.base.workloads.values() if s.untold} == set(ids)
        got = pinion.take_ended("p1")
        assert [w.id for w in got] == ids
        archive = pinion.view.base.archive
        assert archive is not None and archive._loaded is None  # never read the archive
    whole = whole_log(remote)
    assert {whole.workloads[i].told for i in ids} == {tells(remote)[0].token}
    with remote.backend() as other:
        assert other.take_ended("p1") == []


def test_an_end_whose_workload_object_is_missing_is_taken_with_a_warning(
    remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    with remote.backend() as cli:
        lost, kept = workload(), workload()
        cli.put(lost)
        store = remote.server.store
        with store.lock:  # its object deleted on the server, for good
            objects = store.objects[remote.project]
            [object_id] = [i for i, o in objects.items() if "workload_json" in o]
            del objects[object_id]
        cli.put(kept)
        cli.cancel(kept.id, "ann@laptop")
        cli._write(f"cancel {lost.id}", ev.Cancel(workload=lost.id, by="ann", tell=True))
    with remote.backend() as pinion:
        got = pinion.take_ended("p1")
        assert [w.id for w in got] == [kept.id]  # the other is not told for ever, either
        assert f"workload {lost.id} ended (cancelled), but no event is sent" in caplog.text
        assert pinion.take_ended("p1") == []
