"""The remote queue's log length: checkpoints keep every command's requests the same however
many workloads finished; a newer Caliber's events stop claims; reading never makes a model."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("specklepy")

from caliber.errors import NotFoundError, QueueDamagedError
from caliber.queue.speckle import adapter as speckle_adapter
from caliber.queue.speckle import checkpoint as speckle_checkpoint
from caliber.queue.speckle.events import Checkpoint, parse
from caliber.queue.speckle.log import fold
from caliber.queue.workload import WorkloadStatus
from tests.remote_helpers import Remote, caliber, pasta_folder, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_remote_queue import results_for, workload

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


@pytest.fixture
def often(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint every 6 events, right up to the newest (the test server shows writes at
    once), and pages of 4 versions, so a short log shows what a long one would."""
    monkeypatch.setattr(speckle_checkpoint, "EVERY", 6)
    monkeypatch.setattr(speckle_checkpoint, "LAG", 0.0)
    monkeypatch.setattr(speckle_checkpoint, "CHUNK", 5)
    monkeypatch.setattr(speckle_adapter, "VERSIONS_PAGE", 4)


def finish(backend: Any, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        backend.put(w := workload())
        claim = backend.claim("p1", "me", 60, "k")
        assert claim is not None and claim.workload.id == w.id
        backend.complete(claim, results_for(w.id, {"x": 1}))
        ids.append(w.id)
    return ids


def seen(workloads: list[Any]) -> list[Any]:
    return [(w.id, w.status, w.attempts, w.results_id,
             [(h.at, h.status, h.message) for h in w.history]) for w in workloads]


def whole_log(remote: Remote) -> Any:
    """The fold of every version of the model, as a reader without checkpoints makes it."""
    events = [parse(v.id, v.object_id, v.message,
                    dt.datetime.fromisoformat(v.created_at.replace("Z", "+00:00")))
              for v in remote.versions()]
    return fold(e for e in events if e is not None)


def requests_to_list(remote: Remote) -> int:
    before = len(remote.server.log)
    with remote.backend() as reader:
        reader.list_workloads()
    return len(remote.server.log) - before


def test_a_new_reader_starts_at_the_newest_checkpoint(remote: Remote, often: None) -> None:
    with remote.backend() as backend:
        ids = finish(backend, 6)
        few = requests_to_list(remote)
        ids += finish(backend, 18)
        many = requests_to_list(remote)
        mine = seen(backend.list_workloads())
    messages = [v.message for v in remote.versions()]
    assert sum(m.startswith("checkpoint: the queue up to ") for m in messages) >= 6
    # four times the finished workloads (54 more versions, 14 more pages of 4 without
    # checkpoints), the same requests give or take a page: where the newest checkpoint falls
    assert many <= few + 1
    with remote.backend() as reader:
        got = reader.list_workloads()
        assert reader.view.cutoff is not None  # it did start from a checkpoint
    assert [w.id for w in got] == ids and seen(got) == mine
    assert {w.status for w in got} == {WorkloadStatus.COMPLETED}
    whole = whole_log(remote)
    assert [(s.id, s.status, s.attempts, s.results_id, s.history) for s in whole.live()] == mine
    assert set(whole.results) == {r.id for r in reader_results(remote)}


def reader_results(remote: Remote) -> list[Any]:
    with remote.backend() as reader:
        return list(reader.list_results())


def test_a_claim_after_a_checkpoint_still_wins_once(remote: Remote, often: None) -> None:
    with remote.backend() as one, remote.backend() as two:
        finish(one, 3)
        one.put(first := workload("p2"))
        one.put(second := workload("p2"))
        claim = one.claim("p2", "one", 60, "k")
        assert claim is not None and claim.workload.id == first.id
        finish(one, 2)  # more checkpoints after the claim
        other = two.claim("p2", "two", 60, "k")  # a new reader: the held one is not claimable
        assert other is not None and other.workload.id == second.id
        one.complete(claim, results_for(first.id, {"x": 1}))
        assert two.claim("p2", "two", 60, "k") is None
        one.put(third := workload("p2"))
    with remote.backend() as three:  # starts at a checkpoint; claiming never reads its archive
        got = three.claim("p2", "three", 60, "k")
        assert got is not None and got.workload.id == third.id
        archive = three.view.base.archive
        assert archive is not None and first.id in archive.ids and archive._loaded is None
    with remote.backend() as reader:
        done = reader.get(first.id)
    assert done.status == WorkloadStatus.COMPLETED and done.attempts == 1


def test_deleted_or_unreadable_checkpoints_fall_back_to_an_older_one(
    remote: Remote, often: None, caplog: pytest.LogCaptureFixture
) -> None:
    with remote.backend() as backend:
        ids = finish(backend, 8)
        expected = seen(backend.list_workloads())
        marker = backend._marker_id()
        # a checkpoint whose object is no checkpoint (damaged, or hand-made)
        newest = [v for v in remote.versions() if v.message.startswith("checkpoint")][-1]
        event = parse(newest.id, newest.object_id, newest.message, newest.created_at)
        assert event is not None and isinstance(event.body, Checkpoint)
        backend.conn.create_version(marker, newest.message)
    with caplog.at_level(logging.WARNING), remote.backend() as reader:
        assert seen(reader.list_workloads()) == expected
    assert "skipped the checkpoint" in caplog.text
    with remote.server.store.lock:  # every checkpoint deleted in the web app
        user = remote.server.store.user_for_token(remote.token)
        assert user is not None
        gone = [v.id for v in remote.versions() if v.message.startswith("checkpoint")]
        remote.server.store.delete_versions(user, remote.project, gone)
    with remote.backend() as reader:
        got = reader.list_workloads()
    assert [w.id for w in got] == ids and seen(got) == expected


def test_versions_deleted_before_a_checkpoint_are_still_known(
    remote: Remote, often: None
) -> None:
    with remote.backend() as backend:
        ids = finish(backend, 6)
        first_put = remote.versions()[0]
        with remote.server.store.lock:
            user = remote.server.store.user_for_token(remote.token)
            assert user is not None
            remote.server.store.delete_versions(user, remote.project, [first_put.id])
        assert [w.id for w in backend.list_workloads()] == ids  # the checkpoint holds it
    with remote.backend() as reader:
        assert [w.id for w in reader.list_workloads()] == ids


# --- a newer Caliber's events ---------------------------------------------------------------


NEWER = 'paused w · caliber/3 {"e":"pause","w":"%s"}'


def test_a_newer_format_stops_claims_and_listing_says_so(
    remote: Remote, caplog: pytest.LogCaptureFixture
) -> None:
    with remote.backend() as backend:
        backend.put(w := workload())
        backend.conn.create_version(backend._marker_id(), NEWER % w.id)
    with remote.backend() as pinion:
        with pytest.raises(QueueDamagedError) as info:
            pinion.claim("p1", "me", 60, "k")
        text = str(info.value)
        assert "written by a newer Caliber (format 3" in text and text.endswith("upgrade Caliber")
        with caplog.at_level(logging.WARNING):
            assert [x.id for x in pinion.list_workloads()] == [w.id]
    assert "shows only what this Caliber understands" in caplog.text
    assert [v.message.split(" ")[0] for v in remote.versions()] == ["queued", "paused"]


def test_a_pinion_refuses_a_newer_format_in_one_line(remote: Remote, tmp_path: Path) -> None:
    with remote.backend() as backend:
        backend.put(w := workload())
        backend.conn.create_version(backend._marker_id(), NEWER % w.id)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    done = caliber("pinion", "init", "p1", "-a", "1", "-w", "0", cwd=tmp_path, env=env)
    assert done.returncode != 0
    assert "newer Caliber (format 3" in done.stderr and "upgrade Caliber" in done.stderr
    assert len(remote.versions()) == 2  # nothing claimed


# --- reading never makes the model ------------------------------------------------------------


def models(remote: Remote) -> list[str]:
    with remote.server.store.lock:
        return sorted(m.name for m in remote.server.store.project_models(remote.project))


def test_reading_a_missing_model_is_an_empty_queue_with_a_hint(
    remote: Remote, tmp_path: Path
) -> None:
    env = {"CALIBER_SPECKLE_PROJECT": remote.project, "CALIBER_SPECKLE_MODEL": "nightly"}
    hint = (f"model nightly does not exist yet on {remote.url} project {remote.project}; it "
            "is made by the first `caliber workflow queue`")
    for args in (["queue", "list"], ["results", "list"]):
        done = caliber(*args, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert hint in done.stderr and done.stderr.count("\n") == 1
    done = caliber("queue", "view", "k3v9", cwd=tmp_path, env=env)
    assert done.returncode == 2 and "no workload with id 'k3v9'" in done.stderr
    assert models(remote) == ["main"]
    with remote.backend(model="nightly") as backend:
        assert backend.list_workloads() == [] and backend.list_results() == []
        with pytest.raises(NotFoundError):
            backend.get_results("abc")
        assert models(remote) == ["main"]
        backend.put(w := workload())  # the first write makes it
        assert models(remote) == ["main", "nightly"]
        assert [x.id for x in backend.list_workloads()] == [w.id]
    queued = caliber("workflow", "queue", "pasta.json", "-p", "me",
                     cwd=pasta_folder(tmp_path / "wf"), env={**env, "CALIBER_SPECKLE_MODEL":
                                                             "other"})
    assert queued.returncode == 0, queued.stderr
    assert models(remote) == ["main", "nightly", "other"]
