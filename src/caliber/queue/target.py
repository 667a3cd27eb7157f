"""Which queue a command works on: one :class:`QueueTarget`, resolved once.

:func:`resolve_target` reads the options (``--queue URL``, ``--project``/``--model``/
``--local``, or ``queue=``, ``project=``/``model=``/``local=`` in Python), the environment
and ``.caliber/.env`` (see :mod:`caliber.settings`) into a :class:`Choice`, and the registry
asks each backend in turn whether that choice is its own
(:func:`caliber.queue.registry.select`). Which comes first:

1. a queue URL given (``--queue``, ``queue=``), or ``--project``/``--local`` given (one or
   the other: both is a usage error);
2. ``CALIBER_QUEUE_URL``;
3. the Speckle settings (``CALIBER_SPECKLE_PROJECT`` set: the remote queue);
4. the local SQLite file (``$CALIBER_HOME/caliber.db``).

Everything after that takes the target; :mod:`caliber.queue.registry` opens it. Nothing here
imports pydantic (``caliber queue list`` on the local queue stays fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from caliber.errors import UsageError

QUEUE_URL = "CALIBER_QUEUE_URL"


@dataclass(frozen=True)
class QueueTarget:
    """A queue: which backend (``kind``, a name in :mod:`caliber.queue.registry`) and where.

    ``settings`` is what that backend opens with: the database file (a ``Path``) for
    ``sqlite``, :class:`caliber.settings.RemoteSettings` for ``speckle``, the URL as given
    (its password too) for ``postgres``, the name for ``memory``. It may hold a secret, so it
    is not in the repr; ``location`` is what people see (never a password).
    """

    kind: str
    location: str
    """Where the queue is, for people: a file path, ``host project/model``, a URL without
    its password."""
    settings: Any = field(repr=False)


@dataclass(frozen=True)
class Choice:
    """What a command was told about its queue, for each backend to say whether it is its
    own (``select(choice)`` in the backend's light module)."""

    url: str | None = None
    """The queue URL: given (``--queue``, ``queue=``) or ``CALIBER_QUEUE_URL``; None when
    neither, or when ``--project``/``--local`` was given."""
    url_from: str = "queue="
    """Where ``url`` came from, for messages: ``--queue``, ``queue=`` or ``CALIBER_QUEUE_URL``."""
    project: str | None = None
    model: str | None = None
    local: bool = False


def local_target() -> QueueTarget:
    """The local queue and results store (``$CALIBER_HOME/caliber.db``)."""
    from caliber.paths import database_path

    path = database_path()
    return QueueTarget(kind="sqlite", location=str(path), settings=path)


def resolve_target(
    *, queue: str | None = None, project: str | None = None, model: str | None = None,
    local: bool = False, queue_from: str = "queue=",
) -> QueueTarget:
    """The queue the options and settings point at (see the module for the order).
    ``queue_from`` names the option ``queue`` came from, for messages. UsageError when a
    queue URL is given with ``project``/``model``/``local``; ConfigError when the URL or the
    settings are not usable."""
    url = (queue or "").strip() or None
    if url is not None and ((project or "").strip() or (model or "").strip() or local):
        options = ("--project, --model or --local" if queue_from.startswith("--")
                   else "project=, model= or local=")
        raise UsageError(f"{queue_from} names the queue: give it without {options}")
    if url is None and not local and not (project or "").strip():
        from caliber.settings import lookup

        url, queue_from = lookup(QUEUE_URL), QUEUE_URL
    from caliber.queue.registry import select

    return select(Choice(url=url, url_from=queue_from, project=project, model=model,
                         local=local))


def target_of(target: QueueTarget | None = None, *, queue: str | None = None,
              project: str | None = None, model: str | None = None,
              local: bool = False) -> QueueTarget:
    """``target`` when given, else the one ``queue``/``project``/``model``/``local`` and the
    settings select: what the Python functions taking these arguments work on
    (``Workflow.queue``, ``caliber.get_results``, ``caliber.results.prune.prune``)."""
    if target is None:
        return resolve_target(queue=queue, project=project, model=model, local=local)
    if queue or project or model or local:
        raise UsageError("target= names the queue: give it without queue=, project=, model= "
                         "or local=")
    return target
