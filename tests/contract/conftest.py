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


FACTORIES: dict[str, Callable[[Path], AbstractContextManager[QueueBackend]]] = {
    "sqlite": sqlite_backend,
}


@pytest.fixture(params=sorted(FACTORIES))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueBackend]:
    with FACTORIES[request.param](tmp_path) as made:
        yield made
