"""The ``backend`` fixture: every contract test runs once per queue backend.

To add a backend, add one factory to ``FACTORIES``: a context manager that yields a fresh,
empty backend and cleans up after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from caliber.queue.backend import QueueBackend


@contextmanager
def sqlite_backend(tmp_path: Path) -> Iterator[QueueBackend]:
    from caliber.queue.sqlite import SQLiteBackend

    backend = SQLiteBackend(tmp_path / "contract.db")
    try:
        yield backend
    finally:
        backend.close()


@contextmanager
def speckle_backend(tmp_path: Path) -> Iterator[QueueBackend]:
    """A fresh model on a project of its own with a short settle time: on a Speckle test server,
    or on the real server of ``CALIBER_TEST_SPECKLE_URL``/``_TOKEN`` when both are set (the
    project is made there through GraphQL and deleted afterwards)."""
    pytest.importorskip("specklepy")
    from tests.speckle_fixtures import (
        SpeckleTarget,
        delete_real_project,
        new_real_project,
        real_server,
    )
    from tests.speckle_server import SpeckleTestServer

    real = real_server()
    if real:
        target = SpeckleTarget(*real, None)
        project = new_real_project(target, "caliber contract")
        try:
            with _open_speckle(target, project) as backend:
                yield backend
        finally:
            delete_real_project(target, project)
        return
    with SpeckleTestServer() as server:
        token = server.add_user("Alice")
        with server.store.lock:
            user = server.store.user_for_token(token)
            assert user is not None
            project = server.store.create_project(user, "contract", None, None).id
        with _open_speckle(SpeckleTarget(server.url, token, server), project) as backend:
            yield backend


@contextmanager
def _open_speckle(target: Any, project: str) -> Iterator[QueueBackend]:
    from caliber.queue.speckle import SpeckleBackend
    from caliber.settings import RemoteSettings

    settings = RemoteSettings(host=target.url, project=project, model="contract/queue",
                              token=target.token, settle=0.02, min_lease=0, timeout=10)
    backend = SpeckleBackend.open(settings)
    try:
        yield backend
    finally:
        backend.close()


FACTORIES: dict[str, Callable[[Path], AbstractContextManager[QueueBackend]]] = {
    "sqlite": sqlite_backend,
    "speckle": speckle_backend,
}


MARKS = {"speckle": [pytest.mark.speckle]}


@pytest.fixture(params=[pytest.param(n, marks=MARKS.get(n, [])) for n in sorted(FACTORIES)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueBackend]:
    with FACTORIES[request.param](tmp_path) as made:
        yield made
