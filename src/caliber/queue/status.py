"""Workload statuses, without pydantic (the fast ``caliber queue list`` path imports this)."""

from __future__ import annotations

from enum import StrEnum

from caliber.errors import UsageError


class WorkloadStatus(StrEnum):
    """Where a workload is in its life."""

    QUEUED = "queued"
    """Waiting for a pinion (also after a lost lease or a warm stop)."""
    WAITING = "waiting"
    """Queued after other workloads (``--after``) that have not all completed yet: never
    claimed while so; queued when the last of them completes, cancelled (with the reason)
    when one of them is cancelled or reset. A failed one keeps it waiting: retried and
    completed, it lets the chain go on."""
    RUNNING = "running"
    """Claimed by a pinion, which holds a lease on it."""
    COMPLETED = "completed"
    """Ran to the end; its results are stored."""
    FAILED = "failed"
    """A task failed, it timed out, or it ran out of attempts; the reason is kept."""
    CANCELLED = "cancelled"
    """Taken out of the queue on purpose."""


STATUSES = tuple(s.value for s in WorkloadStatus)
"""The status names, as the command line takes them."""


def parse_status(status: str | WorkloadStatus | None) -> WorkloadStatus | None:
    """A status from its name (any case); UsageError naming the known ones otherwise."""
    if status is None or isinstance(status, WorkloadStatus):
        return status
    try:
        return WorkloadStatus(status.lower())
    except ValueError as exc:
        raise UsageError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}") from exc
