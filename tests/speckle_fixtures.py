"""pytest fixtures around the Speckle test server (use with ``pytest_plugins`` or import them).

``speckle_server`` is a fresh server per test; ``speckle_token`` is a user's token on it;
``speckle_client`` an authenticated, unmodified ``SpeckleClient``; ``speckle_userdata`` points
``SPECKLE_USERDATA_PATH`` at a temporary folder holding that user's local account, as Speckle
Manager would have written it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from speckle_server import SpeckleTestServer
except ImportError:  # tests/ imported as a package
    from tests.speckle_server import SpeckleTestServer


def write_account(userdata: Path, server: SpeckleTestServer, token: str) -> Path:
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


@pytest.fixture
def speckle_client(speckle_server: SpeckleTestServer, speckle_token: str) -> Any:
    from specklepy.api.client import SpeckleClient

    client = SpeckleClient(host=speckle_server.host, use_ssl=False)
    client.authenticate_with_token(speckle_token)
    return client


@pytest.fixture
def speckle_userdata(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    speckle_server: SpeckleTestServer,
    speckle_token: str,
) -> Path:
    userdata = tmp_path / "speckle-userdata"
    write_account(userdata, speckle_server, speckle_token)
    monkeypatch.setenv("SPECKLE_USERDATA_PATH", str(userdata))
    return userdata
