"""The content store on the remote queue: blobs as chunked Speckle objects (stored once,
checked against their hash), Results whose values are stored once and may outgrow the
server's object size limit, and each workflow's results model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("specklepy")

from caliber.errors import BlobMismatchError, NotFoundError
from caliber.queue.speckle import adapter as sp
from caliber.queue.speckle import blobs as bl
from caliber.queue.speckle import events as ev
from caliber.results.model import Results, RunStatus, TaskResult, TaskStatus, utcnow
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_remote_queue import workload

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def uploads(remote: Remote) -> int:
    return sum(1 for e in remote.server.log if e.method == "POST" and e.path.startswith("/objects"))


# --- blobs ----------------------------------------------------------------------------------


def test_a_blob_sent_twice_is_stored_once_and_reads_back(remote: Remote, tmp_path: Path) -> None:
    source = random_file(tmp_path / "mesh.bin", 3 * bl.CHUNK_BYTES + 12345)
    with remote.backend() as backend:
        ref = backend.put_blob(source)
        assert ref.size == source.stat().st_size
        assert backend.has_blob(ref.sha256)
        with backend.open_blob(ref.sha256) as stream:
            assert stream.read() == source.read_bytes()
    stored = len(remote.objects())
    assert stored == 5  # four chunks and the root
    assert max(len(json.dumps(o)) for o in remote.objects().values()) < 1.5 * bl.CHUNK_BYTES
    before = uploads(remote)
    with remote.backend() as again:  # another process: it knows nothing of the first
        assert not again.has_blob(ref.sha256)
        assert again.put_blob(source) == ref
        again.fetch_blob(ref.sha256, tmp_path / "copy.bin", mode=0o640)
    assert len(remote.objects()) == stored
    assert uploads(remote) == before  # nothing sent again: the server had every chunk
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert (tmp_path / "copy.bin").stat().st_mode & 0o777 == 0o640


def test_an_empty_file_and_a_file_of_one_repeated_chunk(remote: Remote, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    zeros = tmp_path / "zeros"
    zeros.write_bytes(bytes(4 * bl.CHUNK_BYTES))
    with remote.backend() as backend:
        for source in (empty, zeros):
            ref = backend.put_blob(source)
            backend.fetch_blob(ref.sha256, tmp_path / f"{source.name}.copy")
            assert (tmp_path / f"{source.name}.copy").read_bytes() == source.read_bytes()
    assert len(remote.objects()) == 4  # each: one chunk object and the root


def test_specklepy_receives_a_blob(remote: Remote, tmp_path: Path) -> None:
    """The blob objects are Speckle objects: specklepy's own receive reads them."""
    from specklepy.api import operations
    from specklepy.transports.memory import MemoryTransport
    from specklepy.transports.server import ServerTransport

    source = random_file(tmp_path / "a.bin", bl.CHUNK_BYTES + 7)
    with remote.backend() as backend:
        ref = backend.put_blob(source)
        root_id = backend.blob_object(ref.sha256)
    with pytest.warns(DeprecationWarning):
        transport = ServerTransport(remote.project, client=remote.target.client())
        received = operations.receive(root_id, transport, MemoryTransport())
    assert received["sha256"] == ref.sha256
    assert len(received["@chunks"]) == 2


def test_a_blob_changed_on_the_server_is_never_written(remote: Remote, tmp_path: Path) -> None:
    source = random_file(tmp_path / "in.bin", 2 * bl.CHUNK_BYTES + 5)
    with remote.backend() as backend:
        ref = backend.put_blob(source)
        root_id = backend.blob_object(ref.sha256)
        objects = remote.objects()
        first = objects[root_id]["@chunks"][0]["referencedId"]
        forged = bytearray(source.read_bytes()[:bl.CHUNK_BYTES])
        forged[100] ^= 1
        with remote.server.store.lock:  # the server (or its database) changed a chunk
            remote.server.store.objects[remote.project][first] = {
                **objects[first], "data": bl.base64.b64encode(bytes(forged)).decode()}
        with pytest.raises(BlobMismatchError, match="does not match its id"):
            backend.fetch_blob(ref.sha256, tmp_path / "out.bin")
        assert not (tmp_path / "out.bin").exists()
        assert not list(tmp_path.glob(".out.bin*"))
        with pytest.raises(BlobMismatchError), backend.open_blob(ref.sha256) as stream:
            stream.read()

        # a whole blob made up to match its ids, claiming the recorded SHA-256
        fake = random_file(tmp_path / "fake.bin", ref.size)
        chunk_id, text = bl.chunk_object(fake.read_bytes())
        fake_root, root_text = bl.root_object(ref.sha256, ref.size, [chunk_id])
        backend.conn.upload({chunk_id: text, fake_root: root_text})
        backend._blob_ids[ref.sha256] = fake_root
        with pytest.raises(BlobMismatchError, match="do not have the SHA-256"):
            backend.fetch_blob(ref.sha256, tmp_path / "out.bin")
        assert not (tmp_path / "out.bin").exists()


def test_an_unknown_blob_is_not_found(remote: Remote, tmp_path: Path) -> None:
    with remote.backend() as backend:
        assert not backend.has_blob("0" * 64)
        with pytest.raises(NotFoundError):
            backend.fetch_blob("0" * 64, tmp_path / "x")
        backend._blob_ids["1" * 64] = "2" * 32  # named by a record, but not on the server
        assert not backend.has_blob("1" * 64)
        with pytest.raises(NotFoundError, match="not on the server"):
            backend.open_blob("1" * 64)


# --- Results --------------------------------------------------------------------------------


def big_results(workload_id: str) -> Results:
    from specklepy.objects.geometry import Mesh

    from caliber.results.convert import to_json

    side = 174  # a grid of 174 x 174 = 30,276 vertices
    vertices = [float(v) for i in range(side) for j in range(side) for v in (i, j, (i * j) % 7)]
    faces = [v for i in range(side - 1) for j in range(side - 1)
             for v in (4, i * side + j, i * side + j + 1, (i + 1) * side + j + 1,
                       (i + 1) * side + j)]
    mesh, _ = to_json(Mesh(vertices=vertices, faces=faces, units="m"))
    numbers = [i / 7 for i in range(150_000)]
    now = utcnow()
    return Results(
        workload_id=workload_id, workflow="Pasta, night/shift", pinion="p1",
        status=RunStatus.COMPLETED, started_at=now, finished_at=now,
        g={"note": "x" * 10},
        tasks=[TaskResult(name="mesh", status=TaskStatus.COMPLETED,
                          return_={"surface": mesh, "label": "grid"}),
               TaskResult(name="numbers", status=TaskStatus.COMPLETED, return_=numbers),
               TaskResult(name="small", status=TaskStatus.COMPLETED, return_={"id": 1})],
    )


def test_results_values_are_stored_once_and_may_outgrow_an_object(remote: Remote) -> None:
    """No duplicate JSON string, and no object over the server's limit however big the
    Results (the limit lowered to 1.5 MB here: the values are 4.6 MB)."""
    remote.server.max_object_mb = 1.5
    w = workload()
    with remote.backend() as backend:
        backend.put(w)
        claim = backend.claim("p1", "me", 60, "k")
        assert claim is not None
        results = big_results(w.id)
        backend.complete(claim, results)
        assert backend.get_results(results.id) == results
    with remote.backend() as fresh:  # read back from the server alone
        assert fresh.get_results(results.id) == results
    done = remote.versions()[-1]
    objects = remote.objects()
    root = objects[done.object_id]
    mine = [root, *(objects[i] for i in root["__closure"])]
    assert all("results_json" not in o for o in mine)
    values = sum(len(json.dumps(t.return_)) for t in results.tasks)
    stored = sum(len(json.dumps(o)) for o in mine)
    assert values > 4_000_000
    assert stored < 1.25 * values  # every value once (the mesh's ids and chunks add a little)
    assert max(len(json.dumps(o)) for o in mine) < 1_100_000


def test_results_are_read_with_their_geometry_by_specklepy(remote: Remote) -> None:
    from specklepy.api import operations
    from specklepy.transports.memory import MemoryTransport
    from specklepy.transports.server import ServerTransport

    w = workload()
    with remote.backend() as backend:
        backend.put(w)
        claim = backend.claim("p1", "me", 60, "k")
        assert claim is not None
        backend.complete(claim, big_results(w.id))
    with pytest.warns(DeprecationWarning):
        transport = ServerTransport(remote.project, client=remote.target.client())
        received = operations.receive(remote.versions()[-1].object_id, transport,
                                      MemoryTransport())
    [mesh] = received["@tasks"][0]["@objects"]
    assert mesh.speckle_type == "Objects.Geometry.Mesh"
    assert len(mesh.vertices) == 174 * 174 * 3


def test_results_of_the_old_layout_are_still_read(remote: Remote) -> None:
    """Results stored by an earlier Caliber: everything again in one ``results_json``."""
    results = big_results("w1").model_copy(update={"tasks": [
        TaskResult(name="t", status=TaskStatus.COMPLETED, return_={"a.b": [1, 2]})]})
    with remote.backend() as backend:
        root = backend._upload(sp.new_object({
            "caliber": "results", "results_id": results.id,
            "results_json": results.model_dump_json(by_alias=True),
            "@tasks": [sp.new_object({"name": "t", "value": sp.to_speckle({"a.b": [1, 2]})})],
        }))
        backend._write("results saved", ev.SavedResults(
            results=results.id, workload=None, workflow=results.workflow, pinion=None,
            status="completed", finished_at=results.finished_at.isoformat()), root)
    with remote.backend() as backend:
        assert backend.get_results(results.id) == results


def test_damaged_results_are_one_clear_error(remote: Remote) -> None:
    from caliber.errors import QueueError

    w = workload()
    with remote.backend() as backend:
        backend.put(w)
        claim = backend.claim("p1", "me", 60, "k")
        assert claim is not None
        results = big_results(w.id)
        backend.complete(claim, results)
    root_id = remote.versions()[-1].object_id
    with remote.server.store.lock:
        root = remote.server.store.objects[remote.project][root_id]
        root["results_frame"] = "{not json"
    with remote.backend() as backend, pytest.raises(QueueError, match="damaged"):
        backend.get_results(results.id)


# --- the results model of each workflow -----------------------------------------------------


def test_each_workflow_has_a_results_model_at_its_latest_results(remote: Remote) -> None:
    done: list[str] = []
    with remote.backend(model="Night Queue") as backend:
        for name in ("Pasta, night/shift", "Pasta, night/shift", "bread"):
            w = workload().model_copy(update={"workflow": {
                **workload().workflow, "name": name}})
            backend.put(w)
            claim = backend.claim("p1", "me", 60, "k")
            assert claim is not None
            results = Results(workload_id=w.id, workflow=name, pinion="p1",
                              status=RunStatus.COMPLETED, started_at=utcnow(),
                              finished_at=utcnow())
            backend.complete(claim, results)
            done.append(results.id)
    pasta = remote.versions("night queue/results/pasta-night-shift")
    assert [v.message.split(" ")[2] for v in pasta] == done[:2]  # newest last
    assert pasta[-1].message == f"completed: results {done[1]} of workload " + \
        pasta[-1].message.rsplit(" ", 1)[1]
    queue = [v for v in remote.versions("night queue") if v.message.startswith("completed ")]
    assert pasta[-1].object_id == queue[1].object_id  # the same objects: nothing sent again
    [bread] = remote.versions("night queue/results/bread")
    assert done[2] in bread.message


def test_a_results_model_that_cannot_be_written_keeps_the_results(
        remote: Remote, caplog: pytest.LogCaptureFixture) -> None:
    with remote.server.store.lock:  # the server's duplicate check reads '_' as a wildcard
        user = remote.server.store.user_for_token(remote.token)
        assert user is not None
        remote.server.store.create_model(user, remote.project, "main/results/axb", None)
    w = workload().model_copy(update={"workflow": {**workload().workflow, "name": "a_b"}})
    with remote.backend() as backend:
        backend.put(w)
        claim = backend.claim("p1", "me", 60, "k")
        assert claim is not None
        results = Results(workload_id=w.id, workflow="a_b", pinion="p1",
                          status=RunStatus.COMPLETED, started_at=utcnow(), finished_at=utcnow())
        backend.complete(claim, results)
        assert backend.get_results(results.id) == results
    assert "were kept, but not shown in model main/results/a_b" in caplog.text


# --- prune ----------------------------------------------------------------------------------


def test_prune_takes_pruned_results_off_the_results_models_and_frees_nothing(
        remote: Remote, tmp_path: Path) -> None:
    import datetime as dt

    source = random_file(tmp_path / "a.bin", 2 * bl.CHUNK_BYTES)
    with remote.backend() as backend:
        ref = backend.put_blob(source)
        for workflow in ("bake", "boil"):
            w = workload().model_copy(update={"workflow": {**workload().workflow,
                                                           "name": workflow}})
            backend.put(w)
            claim = backend.claim("p1", "me", 60, "k")
            assert claim is not None
            backend.complete(claim, Results(
                workload_id=w.id, workflow=workflow, pinion="p1", status=RunStatus.COMPLETED,
                started_at=utcnow(), finished_at=utcnow(),
                tasks=[TaskResult(name="t", status=TaskStatus.COMPLETED,
                                  return_={"file": {"sha256": ref.sha256, "size": ref.size}})]))
        objects = len(remote.objects())
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        dry = backend.prune(later, workflow="bake", dry_run=True)
        assert dry.versions == 3 + 1  # put, claim, done of bake, and its results model
        assert len(remote.versions("main/results/bake")) == 1
        pruned = backend.prune(later, workflow="bake")
        assert pruned.bytes is None and pruned.versions == dry.versions
    assert remote.versions("main/results/bake") == []
    assert len(remote.versions("main/results/boil")) == 1
    assert len(remote.objects()) == objects  # a Speckle server never deletes an object
    with remote.backend() as backend:  # boil's Results still name the blob, and it reads
        [kept] = backend.list_results()
        assert kept.workflow == "boil"
        backend.fetch_blob(ref.sha256, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
