"""The queue backends by kind: a name -> the module that opens it, imported only when used
(so specklepy is imported only for the remote queue).

A backend module has ``open_target(target: QueueTarget)`` returning an object with the verbs
of :class:`~caliber.queue.backend.QueueBackend`, :class:`~caliber.results.store.ResultsStore`
and :class:`~caliber.queue.blobs.BlobStore`.
A new backend is that module and one line in :data:`BACKENDS` (and, to be chosen from the
settings, a rule in :func:`caliber.queue.target.resolve_target`); see docs/architecture.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Protocol, Self

from caliber.errors import ConfigError

if TYPE_CHECKING:  # (the protocols stay out of the fast ``caliber queue list`` path)
    from caliber.queue.backend import QueueBackend
    from caliber.queue.blobs import BlobStore
    from caliber.queue.target import QueueTarget
    from caliber.results.store import ResultsStore

    class Backend(QueueBackend, ResultsStore, BlobStore, Protocol):
        """What a registered backend opens: a queue that is also its results store and its
        content store (:mod:`caliber.queue.blobs`); a context manager that closes it."""

        def __enter__(self) -> Self: ...

        def __exit__(self, *exc: object) -> None: ...


BACKENDS: dict[str, str] = {
    "sqlite": "caliber.queue.sqlite.backend",
    "speckle": "caliber.queue.speckle.backend",
}
"""Backend kind -> module with ``open_target``."""


def open_backend(target: QueueTarget) -> Backend:
    """Open the queue ``target`` names (close it when done)."""
    module = BACKENDS.get(target.kind)
    if module is None:
        raise ConfigError(f"unknown queue kind {target.kind!r}; known: {', '.join(BACKENDS)}")
    opened: Backend = import_module(module).open_target(target)
    return opened


def open_results(target: QueueTarget) -> ResultsStore:
    """Open the results store of the queue ``target`` names (close it when done)."""
    return open_backend(target)
