"""Helpers and fixtures for the remote queue tests (Speckle test server on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.examples_fixtures import export_pasta
from tests.speckle_server import SpeckleTestServer

SETTLE = "0.05"  # seconds: a claim's settle time in tests (the test server shows writes at once)


def new_project(server: SpeckleTestServer, token: str, name: str = "queue") -> str:
    with server.store.lock:
        user = server.store.user_for_token(token)
        assert user is not None
        return server.store.create_project(user, name, None, None).id


@dataclass
class Remote:
    """A test server, a user's token and a project, with the environment pointing at them."""

    server: SpeckleTestServer
    token: str
    project: str

    def settings(self, **overrides: Any) -> Any:
        from caliber.settings import RemoteSettings

        values: dict[str, Any] = {"host": self.server.url, "project": self.project,
                                  "token": self.token, "settle": float(SETTLE), "min_lease": 0}
        return RemoteSettings(**{**values, **overrides})

    def backend(self, **overrides: Any) -> Any:
        from caliber.queue.speckle import SpeckleBackend

        return SpeckleBackend.open(self.settings(**overrides))

    def versions(self, model: str = "main") -> list[Any]:
        """The model's versions, oldest first, straight from the server's store."""
        with self.server.store.lock:
            store = self.server.store
            found = [m for m in store.models.values()
                     if m.project_id == self.project and m.name == model]
            assert found, f"no model {model!r}"
            return list(reversed(store.model_versions(found[0].id)))

    def objects(self) -> dict[str, dict[str, Any]]:
        with self.server.store.lock:
            return dict(self.server.store.objects[self.project])


@pytest.fixture
def remote(
    speckle_server: SpeckleTestServer, speckle_token: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Remote]:
    """Environment: host, token, a short settle time and no minimum lease."""
    pytest.importorskip("specklepy")
    monkeypatch.setenv("CALIBER_SPECKLE_HOST", speckle_server.url)
    monkeypatch.setenv("CALIBER_SPECKLE_TOKEN", speckle_token)
    monkeypatch.setenv("CALIBER_SPECKLE_SETTLE", SETTLE)
    monkeypatch.setenv("CALIBER_SPECKLE_MIN_LEASE", "0")
    yield Remote(speckle_server, speckle_token, new_project(speckle_server, speckle_token))


def caliber(*args: str, cwd: Path | None = None, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``caliber ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "caliber", *args], capture_output=True, text=True,
        cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})},
    )


def pasta_folder(folder: Path) -> Path:
    """The pasta example of the README (scripts and exported workflow files) in ``folder``."""
    return export_pasta(folder)
