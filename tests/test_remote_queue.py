"""The remote queue against the Speckle test server: models, errors, attachments, the log."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("specklepy")

from caliber.errors import ConfigError, QueueError
from caliber.queue.speckle import adapter as speckle_adapter
from caliber.queue.workload import Attachment, Workload, WorkloadStatus
from caliber.results.model import Results, RunStatus, TaskResult, TaskStatus, utcnow
from tests.remote_helpers import Remote, caliber, new_project, pasta_folder, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.speckle_server import Limit, RateLimit

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def workload(pinion: str = "p1", **extra: Any) -> Workload:
    return Workload(
        pinion=pinion, queued_by="ann@laptop", secret="s" * 64,
        workflow={"caliber": 1, "name": "pasta", "process": {"type": "process", "tasks": []}},
        **extra,
    )


def results_for(workload_id: str, returns: dict[str, Any]) -> Results:
    now = utcnow()
    return Results(
        workload_id=workload_id, workflow="pasta", pinion="p1", status=RunStatus.COMPLETED,
        started_at=now, finished_at=now,
        tasks=[TaskResult(name=name, status=TaskStatus.COMPLETED, return_=value)
               for name, value in returns.items()],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- models ---------------------------------------------------------------------------------


def test_http_host_and_a_missing_model_is_created(remote: Remote) -> None:
    with remote.backend(model="Caliber/Night Runs") as backend:
        assert backend.location.startswith("http://127.0.0.1:")
        backend.put(workload())
    with remote.backend(model="caliber/night runs") as again:  # found, not made twice
        assert len(again.list_workloads()) == 1
    with remote.server.store.lock:
        names = [m.name for m in remote.server.store.project_models(remote.project)]
    assert sorted(names) == ["caliber/night runs", "main"]
    [version] = remote.versions("caliber/night runs")
    assert version.message.startswith("queued ")
    assert version.source_application == "caliber"


def test_main_is_the_default_model(remote: Remote) -> None:
    with remote.backend() as backend:
        assert backend.location.endswith("model main")
        backend.put(workload())
    assert len(remote.versions("main")) == 1


@pytest.mark.parametrize("name", ["#hashtag", "a,b", "back\\slash"])
def test_a_model_name_the_server_refuses(remote: Remote, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        remote.backend(model=name)
    assert name in str(info.value) and "\n" not in str(info.value)
    with remote.server.store.lock:
        assert [m.name for m in remote.server.store.project_models(remote.project)] == ["main"]


# --- errors: one clear line, nothing written --------------------------------------------------


def test_bad_token(remote: Remote) -> None:
    with pytest.raises(ConfigError, match="refused the token"):
        remote.backend(token="not-a-token")


def test_missing_project(remote: Remote) -> None:
    with pytest.raises(ConfigError, match="project 0000000000 not found"):
        remote.backend(project="0000000000")


def test_another_users_project(remote: Remote) -> None:
    bob = remote.server.add_user("Bob")
    with pytest.raises(ConfigError, match="no access"):
        remote.backend(project=new_project(remote.server, bob))


def test_unreachable_server(remote: Remote) -> None:
    with pytest.raises(QueueError, match=r"cannot reach the Speckle server http://127\.0\.0\.1"):
        remote.backend(host=f"http://127.0.0.1:{free_port()}", timeout=2)


@pytest.mark.parametrize(("env", "args", "code", "expected"), [
    ({"CALIBER_SPECKLE_TOKEN": "bad"}, ["queue", "list"], 2, "refused the token"),
    ({"CALIBER_SPECKLE_HOST": "http://127.0.0.1:{port}"},
     ["workflow", "queue", "pasta.json", "-p", "me"], 1, "cannot reach"),
    ({"CALIBER_SPECKLE_PROJECT": "0000000000"}, ["pinion", "init", "me", "-a", "1"], 2,
     "project 0000000000 not found"),
])
def test_cli_errors_are_one_line_and_write_nothing(
    remote: Remote, caliber_home: Path, tmp_path: Path, env: dict[str, str], args: list[str],
    code: int, expected: str,
) -> None:
    env = {"CALIBER_SPECKLE_PROJECT": remote.project, **env}
    env = {k: v.format(port=free_port()) for k, v in env.items()}
    done = caliber(*args, cwd=pasta_folder(tmp_path / "wf"), env=env)
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert done.stderr.startswith("caliber: error: ")
    assert not (caliber_home / "caliber.db").exists()
    assert remote.versions() == []


def test_server_gone_and_back(remote: Remote) -> None:
    with remote.backend() as backend:
        backend.put(first := workload())
        remote.server.stop()
        with pytest.raises(QueueError, match="cannot reach"):
            backend.list_workloads()
        remote.server.start()  # the same port, the same data
        backend.put(second := workload())
        assert [w.id for w in backend.list_workloads()] == [first.id, second.id]


def test_no_token_uses_the_speckle_manager_account(
    remote: Remote, speckle_userdata: Path
) -> None:
    with remote.backend(token=None) as backend:
        backend.put(workload())
        assert len(backend.list_workloads()) == 1


# --- content ------------------------------------------------------------------------------


def test_text_and_binary_attachments(remote: Remote) -> None:
    blob = bytes(range(256)) * 3
    w = workload(attachments=[Attachment.from_bytes("funcs.py", b"def f():\n    return 1\n"),
                              Attachment.from_bytes("data/mesh.bin", blob)])
    with remote.backend() as backend:
        backend.put(w)
    with remote.backend() as other:  # another process reading it
        got = other.get(w.id[:4])
    assert [a.data() for a in got.attachments] == [b"def f():\n    return 1\n", blob]
    assert [a.encoding for a in got.attachments] == ["text", "base64"]
    assert all(a.content_matches() for a in got.attachments)
    stored = [o for o in remote.objects().values() if "encoding" in o]
    assert {o["path"]: o["content"] for o in stored if o["encoding"] == "text"} == {
        "funcs.py": "def f():\n    return 1\n"}


def test_speckle_objects_arrive_as_themselves(remote: Remote) -> None:
    from specklepy.api.client import SpeckleClient
    from specklepy.objects.geometry import Line, Point
    from specklepy.transports.memory import MemoryTransport
    from specklepy.transports.server import ServerTransport

    from caliber.results.convert import to_json

    point = Point(x=1, y=2, z=3, units="m")
    line = Line(start=Point(x=0, y=0, z=0, units="m"), end=point, units="m")
    returns = {name: to_json(value)[0] for name, value in (
        ("point", point), ("line", line), ("table", {"a.b": [1, {"id": 2}]}), ("n", 3))}
    w = workload()
    with remote.backend() as backend:
        backend.put(w)
        claim = backend.claim("p1", "me", 60, "k")
        assert claim is not None
        backend.complete(claim, results := results_for(w.id, returns))
        assert backend.get_results(results.id) == results  # exactly what was stored
    done = remote.versions()[-1]
    assert done.message.startswith(f"completed {w.id} (pasta)")
    client = SpeckleClient(host=remote.server.host, use_ssl=False)
    client.authenticate_with_token(remote.token)
    with pytest.warns(DeprecationWarning):
        transport = ServerTransport(remote.project, client=client)
        received = speckle_operations().receive(done.object_id, transport, MemoryTransport())
    tasks = {t["name"]: t for t in received["@tasks"]}
    assert tasks["point"]["@objects"][0].speckle_type == "Objects.Geometry.Point"
    assert tasks["point"]["@objects"][0].z == 3
    assert tasks["line"]["@objects"][0].speckle_type == "Objects.Geometry.Line"
    assert json.loads(tasks["table"]["value_json"]) == {"a.b": [1, {"id": 2}]}
    assert tasks["n"]["value_json"] == "3"


def speckle_operations() -> Any:
    from specklepy.api import operations

    return operations


def test_version_messages_tell_the_story(remote: Remote) -> None:
    with remote.backend() as backend:
        backend.put(a := workload())
        backend.put(b := workload())
        claim = backend.claim("p1", "pin@box", 60, "k")
        assert claim is not None and claim.workload.id == a.id
        backend.fail(claim, "timed out after 5 s", retry=False)
        backend.resetsecret(b.id, "t" * 64, "key1")
        backend.reset(b.id)
    messages = [v.message.split(" · ")[0] for v in remote.versions()]
    assert messages == [
        f"queued {a.id} (pasta) for pinion p1 by ann@laptop",
        f"queued {b.id} (pasta) for pinion p1 by ann@laptop",
        f"claimed {a.id} (pasta) by pin@box",
        f"failed {a.id} (pasta): timed out after 5 s",
        f"re-signed {b.id} (pasta) with key key1",
        f"deleted {b.id} (pasta)",
    ]


# --- the log ------------------------------------------------------------------------------


def test_paging_and_versions_deleted_in_the_web_app(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speckle_adapter, "VERSIONS_PAGE", 3)
    with remote.backend() as writer, remote.backend() as reader:
        ids = []
        for _ in range(4):
            writer.put(w := workload())
            ids.append(w.id)
        assert [w.id for w in reader.list_workloads()] == ids
        for _ in range(4):
            writer.put(w := workload())
            ids.append(w.id)
        assert [w.id for w in reader.list_workloads()] == ids  # only the new pages were read
        first_put = remote.versions()[0]
        with remote.server.store.lock:
            user = remote.server.store.user_for_token(remote.token)
            assert user is not None
            remote.server.store.delete_versions(user, remote.project, [first_put.id])
        assert [w.id for w in reader.list_workloads()] == ids[1:]


def test_other_versions_on_the_model_are_left_alone(remote: Remote) -> None:
    with remote.backend() as backend:
        backend.put(w := workload())
        marker = next(iter(remote.objects()))
        backend.conn.create_version(marker, "a model sent from a design tool")
        assert [x.id for x in backend.list_workloads()] == [w.id]


def test_a_lost_answer_to_a_write_is_checked(remote: Remote,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("caliber.queue.speckle.backend.RECHECK_WAIT", 0)
    with remote.backend() as backend:
        real = backend.conn.create_version
        calls = []

        def lost_answer(object_id: str, message: str) -> Any:
            calls.append(message)
            real(object_id, message)
            raise speckle_adapter.AmbiguousWriteError("the answer was lost")

        monkeypatch.setattr(backend.conn, "create_version", lost_answer)
        backend.put(w := workload())  # it did happen: found in the log
        assert backend.get(w.id).status == WorkloadStatus.QUEUED
        assert len(calls) == 1 and len(remote.versions()) == 1


@contextlib.contextmanager
def refusing(remote: Remote, limits: RateLimit) -> Iterator[None]:
    """The server refuses once a limit is used up; after every refusal it starts afresh (a
    window that never refills by itself: refusals happen whatever the machine's speed)."""
    remote.server.set_rate_limit(limits)
    stop = threading.Event()

    def refusals() -> int:
        return sum(1 for e in list(remote.server.log) if e.status == 429)

    seen = refusals()

    def new_window() -> None:
        nonlocal seen
        while not stop.wait(0.02):
            refused = refusals()
            if refused > seen:
                seen = refused
                remote.server.limiter.reset()

    helper = threading.Thread(target=new_window)
    helper.start()
    try:
        yield
    finally:
        stop.set()
        helper.join()
        remote.server.set_rate_limit(None)


HOUR = {"window": 3600.0, "burst_window": 3600.0}


def test_rate_limit_slows_down_but_loses_nothing(remote: Remote,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speckle_adapter, "RATE_LIMIT_FIRST_WAIT", 0.1)
    with remote.backend() as backend:
        with refusing(remote, RateLimit(version_create=Limit(points=4, burst=0, **HOUR))):
            for _ in range(6):
                backend.put(workload())
            while (claim := backend.claim("p1", "me", 60, "k")) is not None:
                backend.complete(claim, results_for(claim.workload.id, {"x": 1}))
        assert [w.status for w in backend.list_workloads()] == [WorkloadStatus.COMPLETED] * 6
    refused = [e for e in remote.server.log if e.status == 429]
    assert len(refused) >= 3 and {e.operation for e in refused} == {"Create"}
    kinds = collections.Counter(v.message.split(" ")[0] for v in remote.versions())
    assert kinds == {"queued": 6, "claimed": 6, "completed": 6}  # nothing lost or doubled


def test_rate_limit_on_every_request_honours_retry_after(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speckle_adapter, "RATE_LIMIT_MAX_WAIT", 0.2)  # not the 1 s it asks
    with remote.backend() as backend:
        backend.put(w := workload())
        for limits in (RateLimit(graphql=Limit(points=2, burst=0, **HOUR)),
                       RateLimit(rest=Limit(points=2, burst=0, **HOUR))):
            with refusing(remote, limits):
                for _ in range(3):
                    assert [x.id for x in backend.list_workloads()] == [w.id]
                    backend._objects.clear()
    refused = [e for e in remote.server.log if e.status == 429]
    assert {e.path.split("/")[1] for e in refused} == {"graphql", "api"}


def test_racing_claims_in_threads(remote: Remote) -> None:
    with remote.backend() as backend:
        ids = []
        for _ in range(12):
            backend.put(w := workload())
            ids.append(w.id)
    ran: list[str] = []
    errors: list[BaseException] = []

    def pinion(n: int) -> None:
        try:
            with remote.backend(settle=0.05) as mine:
                while (claim := mine.claim("p1", f"pinion-{n}", 60, "k")) is not None:
                    ran.append(claim.workload.id)
                    mine.complete(claim, results_for(claim.workload.id, {"n": n}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pinion, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(ran) == sorted(ids)  # each once, none twice
    with remote.backend() as backend:
        assert {w.status for w in backend.list_workloads()} == {WorkloadStatus.COMPLETED}
        assert all(w.attempts == 1 for w in backend.list_workloads())
