"""The results store protocol: where Results are kept and found again.

``workflow run`` saves into it, ``caliber.get_results()`` and ``caliber results`` read from it.
Both queue backends (SQLite, Speckle) are results stores too: a queued workload's Results are
stored by the backend's ``complete`` in the same step that finishes the workload. A store of
another kind (S3, PostgreSQL) is one class with these verbs; the contract suite
(``tests/contract``) checks them. Errors: only :mod:`caliber.errors` exceptions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from caliber.results.model import Results


@runtime_checkable
class ResultsStore(Protocol):
    """What a results store must do. Ids may be given as unique prefixes."""

    location: str
    """Where the store is, for people."""

    def save_results(self, results: Results) -> None:
        """Store results of a run that did not come from the queue (``workflow run``).
        QueueError when Results with their id are stored already (those are kept)."""

    def get_results(self, id_or_prefix: str) -> Results:
        """Results by id or unique prefix (NotFoundError, AmbiguousIdError)."""

    def find_results(
        self,
        *,
        workload_id: str | None = None,
        workflow: str | None = None,
        pinion: str | None = None,
    ) -> Results | None:
        """The latest results matching every filter given, or None."""

    def list_results(
        self,
        *,
        workflow: str | None = None,
        pinion: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Results]:
        """Results, newest first."""

    def close(self) -> None:
        """Release connections."""
