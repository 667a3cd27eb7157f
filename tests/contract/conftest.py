"""The ``backend`` fixture: every contract test runs once per queue backend.

To add a backend, add one factory to ``FACTORIES``: a context manager that yields a fresh,
empty backend and cleans up after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

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
    """A fresh model on a project of a Speckle test server, with a short settle time."""
    pytest.importorskip("specklepy")
    from caliber.queue.speckle import SpeckleBackend
    from caliber.settings import RemoteSettings
    from tests.speckle_server import SpeckleTestServer

    with SpeckleTestServer() as server:
        token = server.add_user("Alice")
        with server.store.lock:
            user = server.store.user_for_token(token)
            assert user is not None
            project = server.store.create_project(user, "contract", None, None)
        settings = RemoteSettings(host=server.url, project=project.id, model="contract/queue",
                                  token=token, settle=0.02, min_lease=0, timeout=10)
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
