"""The summary of a workload that ``caliber queue list`` shows: a plain record, no pydantic
(the listing path imports only this, :mod:`caliber.queue.status` and the backend's module)."""

from __future__ import annotations

from dataclasses import dataclass
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
        }
