"""The rules of a workload's life after it was queued, shared by every backend: which
workloads can be cancelled or retried, and the history lines that say so (no pydantic here:
the backends import it at the top).

``queue cancel``: a queued workload becomes cancelled at once; a running one is asked to stop,
and its pinion stops it after its current task when it next renews its lease. ``queue retry``:
a failed or cancelled one is queued again, its history kept; with ``--resume`` its run reuses
the completed tasks of its last Results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caliber.errors import QueueStateError
from caliber.queue.status import WorkloadStatus

if TYPE_CHECKING:
    from caliber.queue.workload import Workload

CANCELLABLE = (WorkloadStatus.QUEUED, WorkloadStatus.RUNNING)
RETRIABLE = (WorkloadStatus.FAILED, WorkloadStatus.CANCELLED)


def check_cancel(workload: Workload) -> None:
    """QueueStateError unless ``workload`` can be cancelled (it has not finished)."""
    if workload.status not in CANCELLABLE:
        raise QueueStateError(f"workload {workload.id} is {workload.status.value}: only a "
                              "queued or running workload can be cancelled")


def check_retry(workload: Workload, resume: bool) -> str | None:
    """QueueStateError unless ``workload`` can be retried; the Results to resume from."""
    if workload.status not in RETRIABLE:
        raise QueueStateError(f"workload {workload.id} is {workload.status.value}: only a "
                              "failed or cancelled workload can be retried")
    if workload.damaged:
        raise QueueStateError(f"workload {workload.id}: {workload.damaged}")
    if resume and workload.results_id is None:
        raise QueueStateError(f"workload {workload.id} has no results to resume from (no run "
                              "of it finished); retry it without --resume")
    return workload.results_id if resume else None


def cancelled(by: str) -> str:
    return f"cancelled by {by}"


def cancel_asked(by: str) -> str:
    return f"cancel asked by {by}: its pinion stops it after the current task"


def retried(by: str, resume_from: str | None) -> str:
    how = f", reusing the completed tasks of results {resume_from}" if resume_from else ""
    return f"queued again by {by} (a new attempt series{how})"
