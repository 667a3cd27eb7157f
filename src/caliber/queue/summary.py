"""The summary of a workload that ``caliber queue list`` shows: a plain record, no pydantic
(the listing path imports only this, :mod:`caliber.queue.status`, :mod:`caliber.queue.secret`
and the backend's module). A backend lists :class:`StoredSummary` records, as stored; the
queue API checks their run-secrets and shows :class:`WorkloadSummary` records."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class WorkloadSummary:
    """One line of ``caliber queue list``: what a listing shows, cheap to read (no workflow
    document, attachments or history)."""

    id: str
    workflow: str
    pinion: str
    status: str
    created_at: str
    """ISO 8601, with its offset."""
    attempts: int
    results_id: str | None
    secret_ok: bool | None
    """Whether the run-secret matches the key given to the listing (None: not checked)."""
    queued_by: str
    last_error: str | None
    secret_mismatch: str | None
    resume_from: str | None = None
    """The Results whose completed tasks its run reuses (``retry --resume``), or None."""
    resume_ok: bool | None = None
    """Whether that reuse is vouched for by the listing's key (None: it resumes nothing; see
    :func:`caliber.queue.secret.resume_ok`)."""
    after: tuple[str, ...] = ()
    """The workloads it runs after (``--after``): ids, in the order given."""
    not_before: str | None = None
    """ISO 8601 (UTC): no pinion claims it earlier (``--not-before``), or None."""
    priority: int = 0
    """Claim order among claimable workloads: higher first, then queue order."""

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        """The stable keys of ``caliber queue list --json``."""
        return {
            "id": self.id, "workflow": self.workflow, "pinion": self.pinion,
            "status": self.status, "created_at": self.created_at, "attempts": self.attempts,
            "results_id": self.results_id, "secret_ok": self.secret_ok,
            "completed": self.completed, "queued_by": self.queued_by,
            "last_error": self.last_error, "secret_mismatch": self.secret_mismatch,
            "resume_from": self.resume_from, "resume_ok": self.resume_ok,
            "after": list(self.after), "not_before": self.not_before,
            "priority": self.priority,
        }


@dataclass(frozen=True)
class StoredSummary:
    """A workload as a backend lists it for ``caliber queue list``: its plain fields as
    stored, the signed ones untouched. A backend stores and reads; the queue API checks the
    run-secret and the resume on these (:func:`caliber.queue.api.check_summary`) and shows
    the :class:`WorkloadSummary`. No pydantic: the local queue builds these from plain rows."""

    id: str
    name: str
    """The workflow's name as stored beside it (shown when the entry is damaged)."""
    pinion: str
    status: str
    created_at: str
    """As stored, in the form the run-secret signed (:func:`caliber.queue.secret.signed_time`)."""
    attempts: int
    results_id: str | None
    secret: str
    secret_mismatch: str | None
    last_error: str | None
    workflow: Any = None
    """The workflow document, as stored (signed)."""
    attachments: list[Any] = field(default_factory=list)
    """Every attachment's JSON form, as stored (signed)."""
    queued_by: str = ""
    resume_from: str | None = None
    resume_signature: str | None = None
    resume_grant: str | None = None
    damaged: str | None = None
    """Why the stored entry cannot be read (it never runs; shown, never checked), or None."""
    after: list[Any] = field(default_factory=list)
    """Ids of the workloads it runs after, as stored (signed)."""
    not_before: str | None = None
    """As stored, in its signed form (:func:`caliber.queue.secret.signed_time`), or None."""
    priority: Any = 0
    """As stored (signed)."""
    notify: str | None = None
    """Its own notification address, as stored (signed), or None."""

    def plan(self) -> dict[str, Any]:
        """Its signed scheduling fields (:func:`caliber.queue.secret.plan_fields`)."""
        from caliber.queue.secret import plan_fields

        return plan_fields(after=self.after, not_before=self.not_before,
                           priority=self.priority, notify=self.notify)

    def as_damaged(self, reason: str) -> StoredSummary:
        """This entry shown as one that cannot be read: ``reason`` its error, nothing else of
        it trusted (as a backend shows a damaged workload in full)."""
        return replace(self, attempts=0, results_id=None, queued_by="", last_error=reason,
                       secret_mismatch=None, resume_from=None, damaged=reason, after=[],
                       not_before=None, priority=0, notify=None)
