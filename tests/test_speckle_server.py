"""The unmodified specklepy client against the Speckle test server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("specklepy")
import requests
from gql import gql
from specklepy.api import operations
from specklepy.api.client import SpeckleClient
from specklepy.api.credentials import Account, get_default_account
from specklepy.api.inputs.model_inputs import CreateModelInput, UpdateModelInput
from specklepy.api.inputs.project_inputs import (
    ProjectCreateInput,
    ProjectModelsFilter,
    ProjectUpdateInput,
)
from specklepy.api.inputs.version_inputs import (
    CreateVersionInput,
    DeleteVersionsInput,
    MoveVersionsInput,
    UpdateVersionInput,
)
from specklepy.logging.exceptions import GraphQLException, SpeckleException, SpeckleWarning
from specklepy.objects import Base
from specklepy.transports.memory import MemoryTransport
from specklepy.transports.server import ServerTransport

try:
    from speckle_fixtures import (
        speckle_client,
        speckle_server,
        speckle_token,
        speckle_userdata,
    )
    from speckle_server import Limit, RateLimit, SpeckleTestServer
except ImportError:  # tests/ imported as a package
    from tests.speckle_fixtures import (  # noqa: F401  (fixtures)
        speckle_client,
        speckle_server,
        speckle_token,
        speckle_userdata,
    )
    from tests.speckle_server import Limit, RateLimit, SpeckleTestServer

pytestmark = [
    pytest.mark.speckle,
    # specklepy 2026.9 marks the JSON send/receive path deprecated; the warning names the caller
    pytest.mark.filterwarnings("ignore:Call to deprecated:DeprecationWarning"),
]


def codes(excinfo: pytest.ExceptionInfo[GraphQLException]) -> list[str]:
    return [e["extensions"]["code"] for e in excinfo.value.errors]


def new_project(client: SpeckleClient, name: str = "queue") -> Any:
    return client.project.create(
        ProjectCreateInput(name=name, description=None, visibility="PRIVATE")
    )


class Job(Base, speckle_type="QueueTest.Job"):
    """A queue entry as a Speckle object."""


def job(n: int) -> Base:
    """A Base with a nested dict, a detached child and a chunked list."""
    obj = Job()
    obj["spec"] = {"kind": "mesh", "params": {"tol": 0.001, "nested": {"deep": [1, {"x": n}]}}}
    child = Base()
    child["payload"] = f"child-{n}"
    obj["@child"] = child
    obj["@(3)numbers"] = list(range(10))
    return obj


def send(client: SpeckleClient, project_id: str, obj: Base) -> str:
    transport = ServerTransport(project_id, client=client)
    return operations.send(obj, [transport], use_default_cache=False)


def version_input(project_id: str, model_id: str, object_id: str, message: str) -> Any:
    return CreateVersionInput(
        object_id=object_id, model_id=model_id, project_id=project_id, message=message
    )


def test_token_login_and_server_info(speckle_server: SpeckleTestServer, speckle_token: str):
    client = SpeckleClient(host=speckle_server.host, use_ssl=False)
    client.authenticate_with_token(speckle_token)
    assert client.account.userInfo.email == "alice@example.org"
    assert client.active_user.get().role == "server:admin"
    assert client.server.version() == ("dev",)
    assert client.server.get().canonical_url == speckle_server.url


def test_account_login_from_userdata(speckle_server: SpeckleTestServer, speckle_userdata: Path):
    account = get_default_account()
    assert account is not None and account.serverInfo.url == speckle_server.url
    client = SpeckleClient(host=speckle_server.host, use_ssl=False)
    client.authenticate_with_account(account)
    assert client.active_user.get().name == "Alice"


def test_project_create_and_get(speckle_client: SpeckleClient):
    project = new_project(speckle_client)
    got = speckle_client.project.get(project.id)
    assert (got.name, got.description, got.role, got.source_apps) == (
        "queue",
        "",
        "stream:owner",
        [],
    )
    assert got.visibility.value == "PRIVATE"
    update = ProjectUpdateInput(id=project.id, name="renamed", visibility="PUBLIC")
    assert speckle_client.project.update(update).visibility.value == "PUBLIC"
    assert speckle_client.project.delete(project.id)
    with pytest.raises(GraphQLException) as excinfo:
        speckle_client.project.get(project.id)
    assert codes(excinfo) == ["STREAM_NOT_FOUND"]


def test_model_names_listing_and_search(speckle_client: SpeckleClient):
    p = new_project(speckle_client).id

    def create(name: str) -> Any:
        return speckle_client.model.create(CreateModelInput(name=name, project_id=p))

    assert speckle_client.model.get_models(p).total_count == 0  # "main" is hidden while empty
    made = [create(n) for n in ("jobs", "Queue/Jobs-Upper", "/bad//name", " Spaced / Name ")]
    assert [(m.name, m.display_name) for m in made] == [
        ("jobs", "jobs"),
        ("queue/jobs-upper", "jobs-upper"),
        ("bad/name", "name"),
        ("spaced/name", "name"),
    ]
    for bad in ("#x", "$x", "a\\b", "bad,name", "/", "   "):
        with pytest.raises(GraphQLException) as excinfo:
            create(bad)
        assert codes(excinfo) == ["BRANCH_NAME_ERROR"], bad
    for duplicate in ("JOBS", " jobs ", "main", "j_bs"):  # case, trimming, hidden main, ILIKE
        with pytest.raises(GraphQLException) as excinfo:
            create(duplicate)
        assert codes(excinfo) == ["BRANCH_CREATE_ERROR"], duplicate

    listed = speckle_client.model.get_models(p)
    assert [m.name for m in listed.items] == ["spaced/name", "bad/name", "queue/jobs-upper", "jobs"]
    search = speckle_client.model.get_models(p, models_filter=ProjectModelsFilter(search="JOBS"))
    assert [m.name for m in search.items] == ["queue/jobs-upper", "jobs"]
    pages, cursor = [], None
    while True:
        page = speckle_client.model.get_models(p, models_limit=3, models_cursor=cursor)
        pages.append([m.name for m in page.items])
        if page.cursor is None:
            break
        cursor = page.cursor
    assert pages == [["spaced/name", "bad/name", "queue/jobs-upper"], ["jobs"], []]

    assert speckle_client.model.get(made[0].id, p).name == "jobs"
    renamed = speckle_client.model.update(
        UpdateModelInput(id=made[0].id, name="Jobs/V2", project_id=p)
    )
    assert (renamed.name, renamed.display_name) == ("jobs/v2", "v2")
    with pytest.raises(GraphQLException) as excinfo:
        speckle_client.model.get("0123456789", p)
    assert codes(excinfo) == ["BRANCH_NOT_FOUND"]

    by_name = gql(
        "query($p: String!, $n: String!) { project(id: $p) { modelByName(name: $n) { id } } }"
    )
    # gql 4 deprecates execute(..., variable_values=...): set them on the request instead
    by_name.variable_values = {"p": p, "n": "main"}
    assert speckle_client.httpclient.execute(by_name)["project"]["modelByName"]["id"]
    by_name.variable_values = {"p": p, "n": "nope"}
    with pytest.raises(Exception, match="BRANCH_NOT_FOUND"):
        speckle_client.httpclient.execute(by_name)


def test_versions_walk_get_update_delete_move(speckle_client: SpeckleClient):
    p = new_project(speckle_client).id
    model = speckle_client.model.create(CreateModelInput(name="jobs", project_id=p))
    object_id = send(speckle_client, p, job(0))
    made = [
        speckle_client.version.create(version_input(p, model.id, object_id, f"job #{i}"))
        for i in range(5)
    ]
    pages, cursor = [], None
    while True:
        page = speckle_client.version.get_versions(model.id, p, limit=2, cursor=cursor)
        assert page.total_count == 5
        pages.append([v.message for v in page.items])
        if page.cursor is None:
            break
        # the cursor is the ISO timestamp of the page's last item, even when all fit
        assert datetime.fromisoformat(page.cursor) == page.items[-1].created_at
        cursor = page.cursor
    assert pages == [["job #4", "job #3"], ["job #2", "job #1"], ["job #0"], []]
    with pytest.raises(GraphQLException) as excinfo:
        speckle_client.version.get_versions(model.id, p, limit=101)
    assert codes(excinfo) == ["BAD_REQUEST_ERROR"]

    first = made[0]
    assert speckle_client.version.get(first.id, p).referenced_object == object_id
    updated = speckle_client.version.update(
        UpdateVersionInput(version_id=first.id, project_id=p, message="claimed")
    )
    assert updated.message == "claimed" and updated.created_at == first.created_at
    assert speckle_client.version.delete(
        DeleteVersionsInput(version_ids=[made[1].id], project_id=p)
    )
    with pytest.raises(GraphQLException) as excinfo:
        speckle_client.version.get(made[1].id, p)
    assert codes(excinfo) == ["COMMIT_NOT_FOUND"]
    with pytest.raises(GraphQLException) as excinfo:
        speckle_client.version.delete(DeleteVersionsInput(version_ids=[made[1].id], project_id=p))
    assert codes(excinfo) == ["NOT_FOUND_ERROR"]

    moved = MoveVersionsInput(
        target_model_name="Queue/Done", version_ids=[made[2].id], project_id=p
    )
    done_id = speckle_client.version.move_to_model(moved)
    done = speckle_client.model.get(done_id, p)
    assert done.name == "queue/done" and done.preview_url.endswith(f"/commits/{made[2].id}")
    assert speckle_client.version.get_versions(model.id, p).total_count == 3
    assert speckle_client.version.get_versions(done_id, p).items[0].message == "job #2"
    assert speckle_client.project.get(p).source_apps == ["py"]


def test_send_and_receive_objects(speckle_client: SpeckleClient):
    p = new_project(speckle_client).id
    sent = job(7)
    object_id = send(speckle_client, p, sent)
    assert send(speckle_client, p, job(7)) == object_id  # the second time the diff says "have"
    received = operations.receive(
        object_id,
        remote_transport=ServerTransport(p, client=speckle_client),
        local_transport=MemoryTransport(),
    )
    assert received.id == object_id and received.speckle_type == "QueueTest.Job"
    assert received["spec"]["params"]["nested"]["deep"] == [1, {"x": 7}]
    assert received["@child"]["payload"] == "child-7"
    assert received["@(3)numbers"] == list(range(10))
    with pytest.raises(SpeckleException):
        operations.receive(
            "f" * 32,
            remote_transport=ServerTransport(p, client=speckle_client),
            local_transport=MemoryTransport(),
        )


def test_error_cases(speckle_server: SpeckleTestServer, speckle_client: SpeckleClient):
    p = new_project(speckle_client).id
    model = speckle_client.model.create(CreateModelInput(name="jobs", project_id=p))
    object_id = send(speckle_client, p, job(1))

    client = SpeckleClient(host=speckle_server.host, use_ssl=False)
    with pytest.raises(SpeckleException) as raised:
        client.authenticate_with_token("not-a-token")
    assert "403" in str(raised.value)
    bad = Account.from_token("not-a-token", speckle_server.url)
    with pytest.warns(SpeckleWarning, match="invalid token"):
        client.authenticate_with_account(bad)
    with pytest.raises(SpeckleException):
        client.active_user.get()

    with pytest.raises(GraphQLException) as excinfo:
        speckle_client.project.get("abcdef1234")
    assert codes(excinfo) == ["STREAM_NOT_FOUND"]
    for wrong_object, wrong_model, message in (
        ("0" * 32, model.id, "Couldn't find commit object"),
        (object_id, "0123456789", "Failed to find branch with id 0123456789."),
    ):
        with pytest.raises(GraphQLException) as excinfo:
            speckle_client.version.create(version_input(p, wrong_model, wrong_object, "nope"))
        assert codes(excinfo) == ["COMMIT_CREATE_ERROR"]
        assert excinfo.value.errors[0]["message"] == message
    with pytest.raises(requests.HTTPError):
        send(speckle_client, "abcdef1234", job(2))

    bob = SpeckleClient(host=speckle_server.host, use_ssl=False)
    bob.authenticate_with_token(speckle_server.add_user("Bob"))
    with pytest.raises(GraphQLException) as excinfo:
        bob.project.get(p)
    assert codes(excinfo) == ["FORBIDDEN"]
    with pytest.raises(GraphQLException) as excinfo:
        bob.version.create(version_input(p, model.id, object_id, "intrusion"))
    assert codes(excinfo) == ["FORBIDDEN"]
    with pytest.raises(requests.HTTPError):
        send(bob, p, job(3))
    with pytest.raises(SpeckleException):
        operations.receive(object_id, remote_transport=ServerTransport(p, client=bob))

    response = requests.post(
        speckle_server.url + "/graphql",
        json={"query": "{ serverInfo { version } }"},
        headers={"Authorization": "Bearer not-a-token"},
        timeout=5,
    )
    assert (response.status_code, response.json()) == (403, {"error": "Your token is not valid."})


def test_version_create_rate_limit():
    limit = RateLimit(version_create=Limit(points=1, burst=20))
    with SpeckleTestServer(rate_limit=limit, users={"tok": "Alice"}) as server:
        client = SpeckleClient(host=server.host, use_ssl=False)
        client.authenticate_with_token("tok")
        p = new_project(client).id
        model = client.model.create(CreateModelInput(name="burst", project_id=p))
        object_id = send(client, p, job(0))
        made: list[str] = []
        with pytest.raises(SpeckleException) as raised:
            while len(made) < 40:
                made.append(client.version.create(version_input(p, model.id, object_id, "b")).id)
        assert 21 <= len(made) <= 23  # 1 a second, plus the burst of 20
        assert "429" in str(raised.value)  # specklepy gives up after 4 tries
        assert [e.status for e in server.log[-4:]] == [429] * 4
        assert server.log[-1].operation == "Create"
        assert client.version.get_versions(model.id, p).total_count == len(made)

        server.set_rate_limit(RateLimit(rest=Limit(points=2, burst=0)))
        url = f"{server.url}/api/diff/{p}"
        answers = [
            requests.post(url, data={"objects": "[]"}, headers={"Authorization": "Bearer tok"})
            for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert 0 < float(answers[2].headers["Retry-After"]) <= 1  # ms / 1000, as JS prints it
        assert answers[2].json()["error"]["code"] == "RATE_LIMIT_ERROR"


def test_restart_keeps_data_on_the_same_port(
    speckle_server: SpeckleTestServer, speckle_client: SpeckleClient
):
    p = new_project(speckle_client).id
    port = speckle_server.port
    speckle_server.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/graphql", timeout=2)
    speckle_server.start()
    assert speckle_server.port == port
    assert speckle_client.project.get(p).name == "queue"  # the same client reconnects


def test_many_clients_at_once(
    speckle_server: SpeckleTestServer, speckle_token: str, speckle_client: SpeckleClient
):
    p = new_project(speckle_client).id
    model = speckle_client.model.create(CreateModelInput(name="jobs", project_id=p))
    object_id = send(speckle_client, p, job(0))
    errors: list[Exception] = []

    def worker(n: int) -> None:
        # specklepy's websocket transport needs an event loop and makes one per thread that
        # nobody closes (a ResourceWarning): give each thread a loop and close it
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            client = SpeckleClient(host=speckle_server.host, use_ssl=False)
            client.authenticate_with_token(speckle_token)
            send(client, p, job(n))
            for i in range(5):
                client.version.create(version_input(p, model.id, object_id, f"w{n}-{i}"))
                client.version.get_versions(model.id, p, limit=3)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    versions = speckle_client.version.get_versions(model.id, p, limit=100)
    assert versions.total_count == 40
    stamps = [v.created_at for v in versions.items]
    assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 40


def test_standalone_entry_point():
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.speckle_server", "--port", "0", "--token", "t0k"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().split()[1]  # type: ignore[union-attr]
        assert process.stdout.readline().split() == ["token", "t0k"]  # type: ignore[union-attr]
        response = requests.post(
            url + "/graphql",
            json={"query": "{ activeUser { name } }"},
            headers={"Authorization": "Bearer t0k"},
            timeout=5,
        )
        assert response.json() == {"data": {"activeUser": {"name": "alice"}}}
    finally:
        process.terminate()
        process.wait(timeout=5)
        process.stdout.close()  # type: ignore[union-attr]
