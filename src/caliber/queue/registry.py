"""The queue backends by kind: a name -> its package, whose modules are imported only when
used (so specklepy is imported only when the remote queue is opened).

Each backend is a package ``caliber.queue.<kind>`` with two modules:

- ``select`` (light: no pydantic, no driver): ``select(choice) -> QueueTarget | None`` says
  whether a :class:`~caliber.queue.target.Choice` (a queue URL, or ``--project``/``--local``
  and the settings) is its own, and builds the target; ``SCHEMES``, the URL schemes it
  takes; ``INSTALL``, what it needs installed, said when its driver is missing (or None);
- ``backend``: ``open_target(target) -> backend``, an object with the verbs of
  :class:`~caliber.queue.backend.QueueBackend`, :class:`~caliber.results.store.ResultsStore`
  and :class:`~caliber.queue.blobs.BlobStore`.

A new backend is that package and one line in :data:`BACKENDS`; see docs/architecture.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Protocol, Self

from caliber.errors import ConfigError

if TYPE_CHECKING:  # (the protocols stay out of the fast ``caliber queue list`` path)
    from caliber.queue.backend import QueueBackend
    from caliber.queue.blobs import BlobStore
    from caliber.queue.target import Choice, QueueTarget
    from caliber.results.store import ResultsStore

    class Backend(QueueBackend, ResultsStore, BlobStore, Protocol):
        """What a registered backend opens: a queue that is also its results store and its
        content store (:mod:`caliber.queue.blobs`); a context manager that closes it."""

        def __enter__(self) -> Self: ...

        def __exit__(self, *exc: object) -> None: ...


class Selector(Protocol):
    """A backend's light module (``caliber.queue.<kind>.select``)."""

    SCHEMES: tuple[str, ...]
    INSTALL: str | None

    def select(self, choice: Choice) -> QueueTarget | None: ...


BACKENDS: dict[str, str] = {
    "memory": "caliber.queue.memory",
    "postgres": "caliber.queue.postgres",
    "speckle": "caliber.queue.speckle",
    "sqlite": "caliber.queue.sqlite",
}
"""Backend kind -> its package. Asked in this order whether a choice is theirs: the local
SQLite file, which takes any choice without a URL, last."""


def selector(kind: str) -> Selector:
    """The light module of backend ``kind`` (ConfigError when there is no such kind)."""
    package = BACKENDS.get(kind)
    if package is None:
        raise ConfigError(f"unknown queue kind {kind!r}; known: {', '.join(BACKENDS)}")
    found: Selector = import_module(package + ".select")
    return found


def select(choice: Choice) -> QueueTarget:
    """The queue ``choice`` names: the first backend that says it is its own. ConfigError
    naming the URL when no backend takes its scheme."""
    from caliber.queue import url as urls

    for kind in BACKENDS:
        found = selector(kind).select(choice)
        if found is not None:
            return found
    assert choice.url is not None  # without a URL the local queue is chosen
    scheme = urls.scheme(choice.url)
    why = (f"no queue backend takes the scheme {scheme!r}" if scheme
           else "it has no scheme")
    raise urls.bad(choice.url, choice.url_from, f"{why}; use {urls.FORMS}")


def open_backend(target: QueueTarget) -> Backend:
    """Open the queue ``target`` names (close it when done). ConfigError when its backend,
    or the driver it needs, is not installed, saying what to install."""
    light = selector(target.kind)
    module_name = BACKENDS[target.kind] + ".backend"
    try:
        module = import_module(module_name)
    except ModuleNotFoundError as exc:
        ours = exc.name is not None and (module_name + ".").startswith(exc.name + ".")
        if not ours and light.INSTALL is None:  # not the backend's module, nor its driver
            raise
        hint = f"; it needs {light.INSTALL}" if light.INSTALL else ""
        raise ConfigError(f"the {target.kind} queue backend is not available in this "
                          f"installation (no module {exc.name}){hint}") from None
    opened: Backend = module.open_target(target)
    return opened


def open_results(target: QueueTarget) -> ResultsStore:
    """Open the results store of the queue ``target`` names (close it when done)."""
    return open_backend(target)
