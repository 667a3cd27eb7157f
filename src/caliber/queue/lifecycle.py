"""The rules of a workload's life after it was queued, shared by every backend: which
workloads can be cancelled or retried, and the history lines that say so (no pydantic here:
the backends import it at the top).

``queue cancel``: a queued or waiting workload becomes cancelled at once; a running one is
asked to stop, and its pinion stops it after its current task when it next renews its lease
(with ``--now``: it stops the running task then, SIGTERM, then SIGKILL after a grace).
``queue retry``: a failed or cancelled one is queued again, its history kept; with
``--resume`` its run reuses the completed tasks of its last Results, as the
:class:`ResumeGrant` made with the user's key allows (:mod:`caliber.queue.resume`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from caliber.errors import NotFoundError, QueueStateError
from caliber.queue.status import WorkloadStatus

if TYPE_CHECKING:
    from caliber.queue.backend import Claim
    from caliber.queue.workload import Workload
    from caliber.results.model import Results

CANCELLABLE = (WorkloadStatus.QUEUED, WorkloadStatus.WAITING, WorkloadStatus.RUNNING)
RETRIABLE = (WorkloadStatus.FAILED, WorkloadStatus.CANCELLED)


def check_cancel(workload: Workload) -> None:
    """QueueStateError unless ``workload`` can be cancelled (it has not finished)."""
    if workload.status not in CANCELLABLE:
        raise QueueStateError(f"workload {workload.id} is {workload.status.value}: only a "
                              "queued, waiting or running workload can be cancelled")


@dataclass(frozen=True)
class ResumeGrant:
    """A key holder's leave for one workload to reuse one stored Results (``queue retry
    --resume``; ``queue resetsecret`` makes it again): the Results id, the Results' own
    signature as it was when the grant was made, and the grant, an HMAC over the workload
    id, both of those (:func:`caliber.queue.secret.sign_grant`). Stored with the workload."""

    results_id: str
    results_signature: str
    grant: str


def check_retry(workload: Workload, resume: ResumeGrant | None) -> ResumeGrant | None:
    """QueueStateError unless ``workload`` can be retried (with ``resume``: reusing the
    Results the grant names, which must still be its last); the grant to store."""
    if workload.status not in RETRIABLE:
        raise QueueStateError(f"workload {workload.id} is {workload.status.value}: only a "
                              "failed or cancelled workload can be retried")
    if workload.damaged:
        raise QueueStateError(f"workload {workload.id}: {workload.damaged}")
    if resume is not None and workload.results_id is None:
        raise QueueStateError(no_results(workload.id))
    if resume is not None and resume.results_id != workload.results_id:
        raise QueueStateError(f"workload {workload.id} has other results now "
                              f"({workload.results_id}, not {resume.results_id}); try again")
    return resume


def no_results(workload_id: str) -> str:
    return (f"workload {workload_id} has no results to resume from (no run of it finished); "
            "retry it without --resume")


def cancelled(by: str) -> str:
    return f"cancelled by {by}"


def cancel_asked(by: str, now: bool = False) -> str:
    when = "stops the running task now" if now else "stops it after the current task"
    return f"cancel asked by {by}: its pinion {when}"


def retried(by: str, resume_from: str | None) -> str:
    how = f", reusing the completed tasks of results {resume_from}" if resume_from else ""
    return f"queued again by {by} (a new attempt series{how})"


def start_status(workload: Workload, upstream: Mapping[str, WorkloadStatus], *,
                 retry: bool = False) -> WorkloadStatus:
    """Chains (``workflow queue --after``): the status ``workload`` is put (or retried)
    with: queued when every workload it runs after (``workload.after``) has completed,
    waiting while one has not. ``upstream``: the statuses of those of them in the queue. One
    not in the queue: NotFoundError on a put (nothing is stored), QueueStateError on a retry
    (it went since); a cancelled one: QueueStateError (it never would run)."""
    doing = "retry" if retry else "put"
    for up in dict.fromkeys(workload.after):
        found = upstream.get(up)
        if found is None:
            error = QueueStateError if retry else NotFoundError
            raise error(f"cannot {doing} workload {workload.id}: it runs after workload {up}, "
                        "which is not in the queue")
        if found == WorkloadStatus.CANCELLED:
            raise QueueStateError(f"cannot {doing} workload {workload.id}: it runs after "
                                  f"workload {up}, which is cancelled (retry that one first)")
    if all(upstream.get(up) == WorkloadStatus.COMPLETED for up in workload.after):
        return WorkloadStatus.QUEUED
    return WorkloadStatus.WAITING


def waits_for(workload: Workload, upstream: Mapping[str, WorkloadStatus]) -> str:
    """The history line of a workload put or retried as waiting: what it waits for."""
    pending = [up for up in dict.fromkeys(workload.after)
               if upstream.get(up) != WorkloadStatus.COMPLETED]
    return "waits for " + ", ".join(pending)


def upstream_completed(upstream_id: str) -> str:
    """The history line of a waiting workload queued as its last upstream completed."""
    return f"queued: workload {upstream_id} completed, the last it waited for"


def restored_waiting(workload: Workload, upstream: Mapping[str, WorkloadStatus]
                     ) -> tuple[WorkloadStatus, str] | None:
    """``queue import`` (``restore``): what becomes of a restored waiting ``workload`` as this
    queue stands (``upstream``: the statuses of those it runs after that are in it): one of
    them cancelled, it is cancelled ("upstream X was cancelled"), as it would have been here;
    all of them completed, it is queued; otherwise None (it waits on). The status and the
    history line (and ``last_error`` when cancelled)."""
    for up in dict.fromkeys(workload.after):
        if upstream.get(up) == WorkloadStatus.CANCELLED:
            return WorkloadStatus.CANCELLED, upstream_ended(up, "cancelled")
    if all(upstream.get(up) == WorkloadStatus.COMPLETED for up in workload.after):
        return WorkloadStatus.QUEUED, ("queued as it was imported: every workload it runs after "
                                       "had completed here")
    return None


def upstream_ended(upstream_id: str, how: str) -> str:
    """Why a waiting workload was cancelled (its last error and history line): a workload
    it runs after was ``how`` ("cancelled" or "reset")."""
    return f"upstream {upstream_id} was {how}"


@dataclass(frozen=True)
class Ending:
    """How a run's Results end its workload: its status, its ``last_error`` and the line
    its history gets."""

    status: WorkloadStatus
    error: str | None
    message: str


def ending(claim: Claim, results: Results) -> tuple[Results, Ending]:
    """The Results as a backend's ``complete`` stores them (the claimed workload's id) and
    the :class:`Ending` they give it: one rule for every backend."""
    from caliber.results.model import RunStatus
    if results.workload_id != claim.workload.id:
        results = results.model_copy(update={"workload_id": claim.workload.id})
    status = {RunStatus.COMPLETED: WorkloadStatus.COMPLETED,
              RunStatus.CANCELLED: WorkloadStatus.CANCELLED}.get(results.status,
                                                                 WorkloadStatus.FAILED)
    error = results.error.summary() if results.error is not None else None
    if status == WorkloadStatus.FAILED and error is None:
        error = "the workflow failed"
    return results, Ending(status, error, f"results {results.id}" + (f": {error}" if error else ""))
