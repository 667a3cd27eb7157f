"""The ``backend`` fixture: every contract test runs once per queue backend.

To add a backend, add one factory to ``FACTORIES``: a context manager that yields a fresh,
empty backend and cleans up after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import pytest

from caliber.queue.backend import QueueBackend


@contextmanager
def sqlite_backend(tmp_path: Path) -> Iterator[QueueBackend]:
    from caliber.queue.sqlite.backend import SQLiteBackend

    backend = SQLiteBackend(tmp_path / "contract.db")
    try:
        yield backend
    finally:
        backend.close()


@contextmanager
def memory_backend(tmp_path: Path) -> Iterator[QueueBackend]:
    """An in-memory queue of a name of its own, forgotten afterwards."""
    from caliber.queue.memory.backend import MemoryBackend, forget

    name = f"contract-{tmp_path.name}-{id(tmp_path)}"
    backend = MemoryBackend(name)
    try:
        yield backend
    finally:
        backend.close()
        forget(name)


@contextmanager
def speckle_backend(tmp_path: Path) -> Iterator[QueueBackend]:
    """A fresh model on a project of its own (made through GraphQL; deleted afterwards on a
    real server) with a short settle time: on a Speckle test server, or on the real server named by
    ``CALIBER_TEST_SPECKLE_URL`` and ``CALIBER_TEST_SPECKLE_TOKEN`` when both are set."""
    pytest.importorskip("specklepy")
    from caliber.queue.speckle.backend import SpeckleBackend
    from caliber.settings import RemoteSettings
    from tests.speckle_fixtures import SpeckleTarget, delete_project, make_project, real_server
    from tests.speckle_server import SpeckleTestServer

    with ExitStack() as stack:
        real = real_server()
        if real:
            target = SpeckleTarget(*real, None)
        else:
            server = stack.enter_context(SpeckleTestServer())
            target = SpeckleTarget(server.url, server.add_user("Alice"), server)
        project = make_project(target, "caliber contract")
        if real:
            stack.callback(delete_project, target, project)
        settings = RemoteSettings(host=target.url, project=project, model="contract/queue",
                                  token=target.token, settle=0.02, min_lease=0, timeout=10)
        backend = SpeckleBackend.open(settings)
        stack.callback(backend.close)
        yield backend


@contextmanager
def postgres_backend(tmp_path: Path, postgres_url: str) -> Iterator[QueueBackend]:
    """A fresh database on the session's PostgreSQL server (``postgres_url``,
    tests/postgres_server.py: skipped, with its reason, where PostgreSQL is not installed)."""
    from caliber.queue.postgres.backend import PostgresBackend

    backend = PostgresBackend(postgres_url)
    try:
        yield backend
    finally:
        backend.close()


FACTORIES: dict[str, Callable[..., AbstractContextManager[QueueBackend]]] = {
    "memory": memory_backend,
    "sqlite": sqlite_backend,
    "speckle": speckle_backend,
    "postgres": postgres_backend,
}


MARKS = {"speckle": [pytest.mark.speckle]}
FIXTURES = {"postgres": ["postgres_url"]}
"""The fixtures a factory takes after ``tmp_path``, by name (keyword arguments)."""


@pytest.fixture(params=[pytest.param(n, marks=MARKS.get(n, [])) for n in sorted(FACTORIES)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueBackend]:
    if request.param == "postgres":
        pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
    extra = {name: request.getfixturevalue(name) for name in FIXTURES.get(request.param, [])}
    with FACTORIES[request.param](tmp_path, **extra) as made:
        yield made
