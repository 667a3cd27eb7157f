"""Which queue a command works on: one :class:`QueueTarget`, resolved once.

:func:`resolve_target` reads the options (``--project``/``--model``/``--local``, or
``project=``/``model=``/``local=`` in Python), the environment and ``.caliber/.env`` (see
:mod:`caliber.settings`) and says which backend, where. Everything after that takes the target;
:mod:`caliber.queue.registry` opens it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QueueTarget:
    """A queue: which backend (``kind``, a name in :mod:`caliber.queue.registry`) and where.

    ``settings`` is what that backend opens with: the database file (a ``Path``) for
    ``sqlite``, :class:`caliber.settings.RemoteSettings` for ``speckle``.
    """

    kind: str
    location: str
    """Where the queue is, for people: a file path or ``host project/model``."""
    settings: Any


def local_target() -> QueueTarget:
    """The local queue and results store (``$CALIBER_HOME/caliber.db``)."""
    from caliber.paths import database_path

    path = database_path()
    return QueueTarget(kind="sqlite", location=str(path), settings=path)


def resolve_target(
    *, project: str | None = None, model: str | None = None, local: bool = False
) -> QueueTarget:
    """The queue the settings point at: the remote one when a Speckle project is set (by
    ``project``, ``CALIBER_SPECKLE_PROJECT`` or ``.caliber/.env``) unless ``local``;
    otherwise the local one. ConfigError when the settings are incomplete."""
    if not local:
        from caliber.settings import load_remote_settings

        remote = load_remote_settings(project=project, model=model)
        if remote is not None:
            return QueueTarget(kind="speckle", location=remote.location, settings=remote)
    return local_target()
