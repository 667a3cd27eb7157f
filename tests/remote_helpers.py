"""Helpers and fixtures for the remote queue tests: the Speckle test server on 127.0.0.1, or a
real server when ``CALIBER_TEST_SPECKLE_URL`` and ``CALIBER_TEST_SPECKLE_TOKEN`` are set."""

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
from tests.speckle_fixtures import SpeckleTarget, delete_project, make_project, needs_test_server
from tests.speckle_server import SpeckleTestServer

SETTLE = "0.05"  # seconds: a claim's settle time in tests (the test server shows writes at once)


def new_project(server: SpeckleTestServer, token: str, name: str = "queue") -> str:
    with server.store.lock:
        user = server.store.user_for_token(token)
        assert user is not None
        return server.store.create_project(user, name, None, None).id


def iso_z(at: Any) -> str:
    """A version's ``createdAt`` (a datetime from specklepy) as the server writes it."""
    from datetime import UTC

    return str(at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))


@dataclass(frozen=True)
class RecordedVersion:
    """A version as a real server lists it (the fields the tests read)."""

    id: str
    object_id: str
    message: str
    created_at: str
    """ISO 8601 in UTC with milliseconds and ``Z``, as the server's GraphQL gives it."""


@dataclass
class Remote:
    """A Speckle server, a user's token and a project, with the environment pointing at them.

    The server is the test server, or the real one of ``CALIBER_TEST_SPECKLE_URL`` (see
    ``speckle_target``); ``server`` (the test server itself) skips the test on a real one.
    """

    target: SpeckleTarget
    project: str

    @property
    def server(self) -> SpeckleTestServer:
        """The test server, for tests that use its powers (its store, faults, restarts, the
        request log, rate limits); on a real server the test is skipped."""
        return needs_test_server(self.target)

    @property
    def url(self) -> str:
        return self.target.url

    @property
    def token(self) -> str:
        return self.target.token

    def settings(self, **overrides: Any) -> Any:
        from caliber.settings import RemoteSettings

        values: dict[str, Any] = {"host": self.url, "project": self.project,
                                  "token": self.token, "settle": float(SETTLE), "min_lease": 0}
        return RemoteSettings(**{**values, **overrides})

    def backend(self, **overrides: Any) -> Any:
        from caliber.queue.speckle.backend import SpeckleBackend

        return SpeckleBackend.open(self.settings(**overrides))

    def versions(self, model: str = "main") -> list[Any]:
        """The model's versions, oldest first (each with ``id``, ``object_id``, ``message``):
        from the test server's store, or listed through GraphQL on a real server (the model
        found by name, as ``main`` is not listed while it has no version)."""
        if self.target.test_server is None:
            return self._listed_versions(model)
        with self.server.store.lock:
            store = self.server.store
            found = [m for m in store.models.values()
                     if m.project_id == self.project and m.name == model]
            assert found, f"no model {model!r}"
            return list(reversed(store.model_versions(found[0].id)))

    def _listed_versions(self, model: str) -> list[RecordedVersion]:
        import requests  # a specklepy dependency

        query = ("query($p: String!, $n: String!) "
                 "{ project(id: $p) { modelByName(name: $n) { id } } }")
        answer = requests.post(
            f"{self.url}/graphql", timeout=30,
            json={"query": query, "variables": {"p": self.project, "n": model}},
            headers={"Authorization": f"Bearer {self.token}"},
        ).json()
        assert not answer.get("errors"), f"no model {model!r}: {answer['errors']}"
        model_id = answer["data"]["project"]["modelByName"]["id"]
        client = self.target.client()
        listed: list[RecordedVersion] = []
        cursor = None
        while True:
            page = client.version.get_versions(model_id, self.project, limit=100,
                                               cursor=cursor)
            listed += [RecordedVersion(v.id, v.referenced_object, v.message or "",
                                       iso_z(v.created_at))
                       for v in page.items]
            if not page.items or not page.cursor:
                return list(reversed(listed))
            cursor = page.cursor

    def objects(self) -> dict[str, dict[str, Any]]:
        """Every object of the project, straight from the test server's store."""
        with self.server.store.lock:
            return dict(self.server.store.objects[self.project])


@pytest.fixture
def remote(speckle_target: SpeckleTarget, monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    """Environment: host, token, a short settle time and no minimum lease; a project of the
    test's own, made through GraphQL (deleted afterwards on a real server; a test server is
    thrown away with everything on it)."""
    pytest.importorskip("specklepy")
    monkeypatch.setenv("CALIBER_SPECKLE_HOST", speckle_target.url)
    monkeypatch.setenv("CALIBER_SPECKLE_TOKEN", speckle_target.token)
    monkeypatch.setenv("CALIBER_SPECKLE_SETTLE", SETTLE)
    monkeypatch.setenv("CALIBER_SPECKLE_MIN_LEASE", "0")
    project = make_project(speckle_target, "caliber tests")
    yield Remote(speckle_target, project)
    if speckle_target.test_server is None:
        delete_project(speckle_target, project)


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
