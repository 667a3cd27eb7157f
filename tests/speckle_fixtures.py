"""pytest fixtures around the Speckle test server (use with ``pytest_plugins`` or import them).

``speckle_server`` is a fresh server per test; ``speckle_token`` is a user's token on it;
``speckle_client`` an authenticated, unmodified ``SpeckleClient``; ``speckle_userdata`` points
``SPECKLE_USERDATA_PATH`` at a temporary folder holding that user's local account, as Speckle
Manager would have written it.

``speckle_target`` (defined in tests/conftest.py) is the server the remote-queue tests use: the
test server, or, when ``CALIBER_TEST_SPECKLE_URL`` and ``CALIBER_TEST_SPECKLE_TOKEN`` are both
set, that real server (no test server is started then). ``make_project`` and ``delete_project``
make and remove a project of the tests' own through specklepy (``projectMutations``), on
either server, so the default run goes through the same steps as a run on a real one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

try:
    from speckle_server import SpeckleTestServer
except ImportError:  # tests/ imported as a package
    from tests.speckle_server import SpeckleTestServer

REAL_URL = "CALIBER_TEST_SPECKLE_URL"
REAL_TOKEN = "CALIBER_TEST_SPECKLE_TOKEN"


@dataclass(frozen=True)
class SpeckleTarget:
    """Where the remote-queue tests run: ``test_server`` is ``None`` on a real server."""

    url: str
    token: str
    test_server: SpeckleTestServer | None

    @property
    def host(self) -> str:
        """``host:port``, what ``SpeckleClient(host=..., use_ssl=...)`` takes."""
        return urlsplit(self.url).netloc

    @property
    def use_ssl(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def client(self) -> Any:
        """An authenticated, unmodified ``SpeckleClient``."""
        from specklepy.api.client import SpeckleClient

        made = SpeckleClient(host=self.host, use_ssl=self.use_ssl)
        made.authenticate_with_token(self.token)
        return made


def real_server() -> tuple[str, str] | None:
    """``(url, token)`` of the real server the tests were asked to use, else ``None``."""
    url, token = os.environ.get(REAL_URL, "").strip(), os.environ.get(REAL_TOKEN, "").strip()
    if not (url and token):
        return None
    if "://" not in url:
        url = "https://" + url
    return url.rstrip("/"), token


def needs_test_server(target: SpeckleTarget) -> SpeckleTestServer:
    """The test server, or skip: the caller counts requests, injects faults or restarts it."""
    if target.test_server is None:
        pytest.skip(f"needs the test server (uses its powers); running against {target.url}")
    return target.test_server


def make_project(target: SpeckleTarget, name: str) -> str:
    """A private project of the tests' own on the target server (through specklepy)."""
    from specklepy.api.inputs.project_inputs import ProjectCreateInput

    client = target.client()
    made = client.project.create(
        ProjectCreateInput(name=name, description="Caliber test suite", visibility="PRIVATE")
    )
    return str(made.id)


def delete_project(target: SpeckleTarget, project_id: str) -> None:
    target.client().project.delete(project_id)


def write_account(userdata: Path, server: SpeckleTestServer | SpeckleTarget, token: str) -> Path:
    """Write the minimal local account JSON specklepy's ``get_local_accounts`` reads."""
    folder = userdata / "Speckle" / "Accounts"
    folder.mkdir(parents=True, exist_ok=True)
    account = {
        "isDefault": True,
        "token": token,
        "serverInfo": {"url": server.url},
        "userInfo": {},
    }
    path = folder / "acc.json"
    path.write_text(json.dumps(account))
    return path


@pytest.fixture
def speckle_server() -> Iterator[SpeckleTestServer]:
    with SpeckleTestServer() as server:
        yield server


@pytest.fixture
def speckle_token(speckle_server: SpeckleTestServer) -> str:
    return speckle_server.add_user("Alice", email="alice@example.org", company="Acme")


def target_for(request: pytest.FixtureRequest) -> SpeckleTarget:
    """The ``speckle_target`` fixture (defined in conftest.py, so every test module sees it):
    the real server of ``CALIBER_TEST_SPECKLE_URL``/``_TOKEN`` if set, else a test server."""
    real = real_server()
    if real:
        return SpeckleTarget(*real, None)
    server: SpeckleTestServer = request.getfixturevalue("speckle_server")
    return SpeckleTarget(server.url, request.getfixturevalue("speckle_token"), server)


@pytest.fixture
def speckle_client(speckle_server: SpeckleTestServer, speckle_token: str) -> Any:
    return SpeckleTarget(speckle_server.url, speckle_token, speckle_server).client()


@pytest.fixture
def speckle_userdata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speckle_target: SpeckleTarget
) -> Path:
    userdata = tmp_path / "speckle-userdata"
    write_account(userdata, speckle_target, speckle_target.token)
    monkeypatch.setenv("SPECKLE_USERDATA_PATH", str(userdata))
    return userdata
