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
    ``project``, ``CALIBER_SPECKLE_PROJECT`` or ``.caliber/.env``, see
    :mod:`caliber.settings`) unless ``local``; otherwise the local one."""
    if not local:
        from caliber.settings import load_remote_settings

        settings = load_remote_settings(project=project, model=model)
        if settings is not None:
            from caliber.queue.speckle import SpeckleBackend

            return SpeckleBackend.open(settings)
    return open_local()
